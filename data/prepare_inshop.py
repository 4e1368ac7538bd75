"""Writes the lists of DeepFashion's In-shop Clothes Retrieval Benchmark, with its own train/query/gallery split.

    python data/prepare_inshop.py --data_dir="data/In-shop Clothes Retrieval Benchmark"

Reads Eval/list_eval_partition.txt (the image count, the header `image_name item_id evaluation_status`, then one
image per line: `img/<GENDER>/<category>/<item>/<file>.jpg id_<item> train|query|gallery`), with the images of
img.zip unpacked into Img/ (or directly into the data directory). Writes
- Ebay_train.txt: the training images (25,882 of 3,997 items in the release);
- Ebay_query.txt and Ebay_gallery.txt: the test queries and the gallery they are searched in, for
  `eval.py --query_list=Ebay_query.txt --gallery_list=Ebay_gallery.txt` (the benchmark's protocol);
- Ebay_test.txt: query and gallery images together, for the test pass during training (all against all).
Each item is a class: training items get class_id 1.. in item order, test items continue after them, the same
in query and gallery. super_class_id numbers the clothing categories (e.g. WOMEN/Dresses) in name order.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the suite's root, as a script
import reader  # noqa: E402
from data.prepare_common import (DatasetError, ListEntry, converter_parser, parse_int, read_table, run,  # noqa: E402
                                 write_lists)

PARTITION = os.path.join("Eval", "list_eval_partition.txt")
PARTITION_HEADER = ["image_name", "item_id", "evaluation_status"]
STATUSES = ("train", "query", "gallery")
IMAGE_PREFIXES = ("Img", "")  # img.zip unpacked into Img/ as released, or into the data directory itself


def read_partition(path):
    """(line number, image name, item id, status) of every image; checks the count and header lines."""
    with open(path, encoding="utf-8") as partition:
        head = partition.read().splitlines()[:2]
    if len(head) < 2:
        raise DatasetError("%s: expected the image count and the header on its first two lines" % path)
    count = parse_int(path, 1, head[0].strip())
    if head[1].split() != PARTITION_HEADER:
        raise DatasetError("%s:2: expected the header %r, got %r" % (path, " ".join(PARTITION_HEADER), head[1]))
    rows = []
    for line_number, (name, item, status) in read_table(path, 3, skip_lines=2):
        if status not in STATUSES:
            raise DatasetError("%s:%d: evaluation_status %r is not one of %s"
                               % (path, line_number, status, ", ".join(STATUSES)))
        rows.append((line_number, name, item, status))
    if len(rows) != count:
        raise DatasetError("%s:1: announces %d images but lists %d" % (path, count, len(rows)))
    return rows


def image_prefix(data_dir, first_image):
    for prefix in IMAGE_PREFIXES:
        if os.path.isfile(os.path.join(data_dir, prefix, first_image)):
            return prefix
    raise DatasetError("%s: the first listed image %s is neither under Img/ nor under the data directory: unpack "
                       "img.zip into %s" % (data_dir, first_image, os.path.join(data_dir, "Img")))


def category(image_name):
    """The clothing category of `img/WOMEN/Dresses/id_00000002/02_1_front.jpg`: WOMEN/Dresses."""
    return "/".join(image_name.split("/")[1:3])


def convert(data_dir):
    path = os.path.join(data_dir, PARTITION)
    if not os.path.isfile(path):
        raise DatasetError("%s: not found; is %s the unpacked In-shop Clothes Retrieval Benchmark?" % (path, data_dir))
    rows = read_partition(path)
    if not rows:
        raise DatasetError("%s: no images listed" % path)
    prefix = image_prefix(data_dir, rows[0][1])
    train_items = sorted({item for _, _, item, status in rows if status == "train"})
    test_items = sorted({item for _, _, item, status in rows if status != "train"})
    shared = sorted(set(train_items) & set(test_items))
    if shared:
        raise DatasetError("%s: item %s has both training and query/gallery images; train and test items must "
                           "not overlap" % (path, shared[0]))
    class_ids = {item: class_id for class_id, item in enumerate(train_items + test_items, start=1)}
    super_class_ids = {name: number for number, name in enumerate(sorted({category(row[1]) for row in rows}),
                                                                  start=1)}
    lists = {reader.TRAIN_LIST: [], reader.QUERY_LIST: [], reader.GALLERY_LIST: [], reader.TEST_LIST: []}
    for line_number, name, item, status in rows:
        entry = ListEntry(line_number - 2, class_ids[item], super_class_ids[category(name)],
                          "/".join(part for part in (prefix, name) if part), "%s:%d" % (path, line_number))
        if status == "train":
            lists[reader.TRAIN_LIST].append(entry)
        else:
            lists[reader.QUERY_LIST if status == "query" else reader.GALLERY_LIST].append(entry)
            lists[reader.TEST_LIST].append(entry)
    return write_lists(data_dir, lists)


def make_parser():
    return converter_parser(__doc__)


def main(argv=None):
    return run(convert, make_parser(), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
