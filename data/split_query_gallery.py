"""Splits a test list into queries and a gallery, as In-Shop comes: for eval.py and search.py's re-ranking.

    python data/split_query_gallery.py --data_dir=data/toy_sop

Reads Ebay_test.txt in the data directory and writes, beside it,
- Ebay_query.txt: the first image (smallest image_id) of every class with at least two images;
- Ebay_gallery.txt: every other image, so each query has all the other images of its class in the gallery.
Then `eval.py --query_list=Ebay_query.txt --gallery_list=Ebay_gallery.txt` scores queries against the gallery,
with or without --qe_k and --rerank.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the suite's root, as a script
import reader  # noqa: E402
from data.prepare_common import DatasetError, ListEntry, converter_parser, run, write_lists  # noqa: E402

def convert(data_dir):
    try:
        test = reader.read_list(data_dir, reader.TEST_LIST)
    except reader.ListFormatError as error:
        raise DatasetError(str(error)) from None
    order = np.lexsort((test.image_ids, test.class_ids))
    first_of_class = np.ones(len(order), bool)
    first_of_class[1:] = test.class_ids[order][1:] != test.class_ids[order][:-1]
    class_sizes = dict(zip(*np.unique(test.class_ids, return_counts=True)))
    queries = {int(test.image_ids[i]) for i, first in zip(order, first_of_class)
               if first and class_sizes[test.class_ids[i]] > 1}
    lists = {reader.QUERY_LIST: [], reader.GALLERY_LIST: []}
    for position, image_id in enumerate(test.image_ids):
        entry = ListEntry(int(image_id), int(test.class_ids[position]), int(test.super_class_ids[position]),
                          os.path.relpath(test.paths[position], data_dir), "%s line of image_id %d"
                          % (test.list_path, image_id))
        lists[reader.QUERY_LIST if int(image_id) in queries else reader.GALLERY_LIST].append(entry)
    return write_lists(data_dir, lists)


def make_parser():
    return converter_parser(__doc__)


def main(argv=None):
    return run(convert, make_parser(), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
