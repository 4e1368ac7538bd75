"""Writes Ebay_train.txt / Ebay_test.txt for Stanford Cars (Cars196): classes 1-98 train, 99-196 test.

    python data/prepare_cars196.py --data_dir=data/cars196

Either layout of the release is read:
- car_ims/ with cars_annos.mat (all 16,185 images; fields relative_im_path and class of `annotations`);
- the devkit split: cars_train/ and cars_test/ with devkit/cars_train_annos.mat and cars_test_annos_withlabels.mat
  (in devkit/ or in the data directory; fields fname and class). Images are numbered train first, then test.
The releases' own train/test flag splits every class's images for classification; metric learning tests on
classes never seen in training instead, so it is not used. Class ids stay the release's; super_class_id is 1.
"""
import os
import sys

import numpy as np
import scipy.io

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the suite's root, as a script
from data.prepare_common import DatasetError, ListEntry, converter_parser, run, write_lists  # noqa: E402

LAST_TRAIN_CLASS = 98
FULL_ANNOTATIONS = "cars_annos.mat"
DEVKIT_TRAIN_ANNOTATIONS = os.path.join("devkit", "cars_train_annos.mat")
DEVKIT_TEST_ANNOTATIONS = "cars_test_annos_withlabels.mat"


def read_annotations(path, path_field):
    """(image path, class) of every element of the struct array `annotations` in the .mat file at `path`."""
    try:
        annotations = np.atleast_1d(scipy.io.loadmat(path, squeeze_me=True)["annotations"])
    except (OSError, ValueError, KeyError) as error:
        raise DatasetError("%s: cannot read the struct array 'annotations': %s" % (path, error)) from None
    for field in (path_field, "class"):
        if field not in (annotations.dtype.names or ()):
            raise DatasetError("%s: 'annotations' has no field %r (fields: %s)"
                               % (path, field, ", ".join(annotations.dtype.names or ())))
    return [(str(element[path_field]), int(element["class"])) for element in annotations]


def full_release(data_dir):
    path = os.path.join(data_dir, FULL_ANNOTATIONS)
    return [(image_path, class_id, "%s: annotation %d" % (path, number))
            for number, (image_path, class_id) in enumerate(read_annotations(path, "relative_im_path"), start=1)]


def devkit_release(data_dir):
    test_annotations = os.path.join(data_dir, "devkit", DEVKIT_TEST_ANNOTATIONS)
    if not os.path.isfile(test_annotations):
        test_annotations = os.path.join(data_dir, DEVKIT_TEST_ANNOTATIONS)
    images = []
    for path, image_dir in ((os.path.join(data_dir, DEVKIT_TRAIN_ANNOTATIONS), "cars_train"),
                            (test_annotations, "cars_test")):
        images += [(image_dir + "/" + name, class_id, "%s: annotation %d" % (path, number))
                   for number, (name, class_id) in enumerate(read_annotations(path, "fname"), start=1)]
    return images


def convert(data_dir):
    if os.path.isfile(os.path.join(data_dir, FULL_ANNOTATIONS)):
        images = full_release(data_dir)
    elif os.path.isfile(os.path.join(data_dir, DEVKIT_TRAIN_ANNOTATIONS)):
        images = devkit_release(data_dir)
    else:
        raise DatasetError("%s: neither %s (with car_ims/) nor %s (with cars_train/, cars_test/) found"
                           % (data_dir, FULL_ANNOTATIONS, DEVKIT_TRAIN_ANNOTATIONS))
    train, test = [], []
    for image_id, (path, class_id, source) in enumerate(images, start=1):
        if class_id < 1:
            raise DatasetError("%s: class %d, expected 1-196" % (source, class_id))
        entry = ListEntry(image_id, class_id, 1, path, source)
        (train if class_id <= LAST_TRAIN_CLASS else test).append(entry)
    return write_lists(data_dir, {"Ebay_train.txt": train, "Ebay_test.txt": test})


def make_parser():
    return converter_parser(__doc__)


def main(argv=None):
    return run(convert, make_parser(), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
