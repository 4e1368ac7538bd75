"""Writes Ebay_train.txt / Ebay_test.txt for CUB-200-2011 (Caltech-UCSD Birds): classes 1-100 train, 101-200 test.

    python data/prepare_cub200.py --data_dir=data/CUB_200_2011

Reads the release's images.txt (`<image_id> <image_name>`), image_class_labels.txt (`<image_id> <class_id>`) and
classes.txt (`<class_id> <class_name>`); list paths are `images/<image_name>`. The release's train_test_split.txt
splits every class's images for classification; metric learning tests on classes never seen in training instead
(the split of Song et al. 2016 and later work), so it is not used. Class ids stay the release's; CUB has no super
classes, so super_class_id is 1.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the suite's root, as a script
from data.prepare_common import (DatasetError, ListEntry, converter_parser, parse_int, read_table, run,  # noqa: E402
                                 write_lists)

LAST_TRAIN_CLASS = 100


def convert(data_dir):
    classes_path = os.path.join(data_dir, "classes.txt")
    known_classes = {parse_int(classes_path, line_number, class_id)
                     for line_number, (class_id, _) in read_table(classes_path, 2)}
    images_path = os.path.join(data_dir, "images.txt")
    images = {}
    for line_number, (image_id, name) in read_table(images_path, 2):
        image_id = parse_int(images_path, line_number, image_id)
        if image_id in images:
            raise DatasetError("%s:%d: image_id %d listed twice" % (images_path, line_number, image_id))
        images[image_id] = (name, "%s:%d" % (images_path, line_number))
    labels_path = os.path.join(data_dir, "image_class_labels.txt")
    labels = {}
    for line_number, (image_id, class_id) in read_table(labels_path, 2):
        image_id = parse_int(labels_path, line_number, image_id)
        class_id = parse_int(labels_path, line_number, class_id)
        if image_id not in images:
            raise DatasetError("%s:%d: image_id %d is not in %s" % (labels_path, line_number, image_id, images_path))
        if class_id not in known_classes:
            raise DatasetError("%s:%d: class %d is not in %s" % (labels_path, line_number, class_id, classes_path))
        labels[image_id] = class_id
    unlabelled = sorted(set(images) - set(labels))
    if unlabelled:
        raise DatasetError("%s: %d images have no class, the first: image_id %d" % (labels_path, len(unlabelled),
                                                                                     unlabelled[0]))
    train, test = [], []
    for image_id in sorted(images):
        name, source = images[image_id]
        entry = ListEntry(image_id, labels[image_id], 1, "images/" + name, source)
        (train if entry.class_id <= LAST_TRAIN_CLASS else test).append(entry)
    return write_lists(data_dir, {"Ebay_train.txt": train, "Ebay_test.txt": test})


def make_parser():
    return converter_parser(__doc__)


def main(argv=None):
    return run(convert, make_parser(), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
