"""Writes Ebay_train.txt / Ebay_test.txt for your own images, one sub-folder per class, split by class.

    python data/prepare_folder.py --data_dir=my_images --test_ratio=0.5 --seed=0

expects `my_images/<class>/<image>` (or, with --super_classes=True, `my_images/<super class>/<class>/<image>`). A
seeded random --test_ratio of the classes goes to the test list, the rest to the training list: metric learning
tests on classes never seen in training. Each list numbers its classes from 1 in folder-name order, so train with
--class_dim = the training classes it reports. Every image is opened as the reader will open it; one that cannot be
read stops the script naming it. Files without an image extension and hidden files are left out (and counted).
"""
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the suite's root, as a script
from core import image_ops  # noqa: E402
from data.prepare_common import DatasetError, ListEntry, converter_parser, run, write_lists  # noqa: E402
from utility import Flag, progress_bar  # noqa: E402

def _fraction(value):
    return None if 0 < value < 1 else "must be between 0 and 1 (exclusive), got %s" % value


FLAGS = (
    Flag("test_ratio", float, 0.5, "Share of the classes that go to the test list.", _fraction),
    Flag("seed", int, 0, "Random seed of the class split."),
    Flag("super_classes", bool, False, "The folders under --data_dir are super classes holding the class folders "
         "(as SOP's bicycle_final/, cabinet_final/, ...)."),
)


def _visible(directory):
    return sorted(name for name in os.listdir(directory) if not name.startswith("."))


def find_classes(data_dir, super_classes):
    """[(super class id, class folder relative to data_dir)], super classes numbered from 1 in name order."""
    if not super_classes:
        return [(1, name) for name in _visible(data_dir) if os.path.isdir(os.path.join(data_dir, name))]
    groups = [name for name in _visible(data_dir) if os.path.isdir(os.path.join(data_dir, name))]
    return [(super_id, os.path.join(group, name)) for super_id, group in enumerate(groups, start=1)
            for name in _visible(os.path.join(data_dir, group)) if os.path.isdir(os.path.join(data_dir, group, name))]


def class_images(data_dir, folder):
    """The image files of one class folder, relative to data_dir, and how many other files it holds."""
    names = [name for name in _visible(os.path.join(data_dir, folder))
             if os.path.isfile(os.path.join(data_dir, folder, name))]
    images = [os.path.join(folder, name) for name in names if image_ops.is_image_name(name)]
    return images, len(names) - len(images)


def check_images_open(data_dir, paths):
    """Opens every image as the reader will; the first that cannot be read stops the script, named."""
    with progress_bar(len(paths), "opening images") as bar:
        for path in paths:
            try:
                image_ops.load_rgb(os.path.join(data_dir, path))
            except image_ops.BadImageError as error:
                raise DatasetError("%s; remove it or replace it, then run this again" % error) from None
            bar.update(1)


def convert(data_dir, test_ratio, seed, super_classes):
    classes = find_classes(data_dir, super_classes)
    if len(classes) < 2:
        raise DatasetError("%s: found %d class folder%s; a train/test split by class needs at least 2 (layout: "
                           "%s/<class>/<image>%s)" % (data_dir, len(classes), "" if len(classes) == 1 else "s",
                                                      data_dir, ", with --super_classes=True <super class>/<class>/"
                                                      "<image>" if not super_classes else ""))
    images, skipped = {}, 0
    for _, folder in classes:
        images[folder], others = class_images(data_dir, folder)
        skipped += others
    empty = [folder for _, folder in classes if not images[folder]]
    if empty:
        raise DatasetError("%s: %d class folders hold no image (%s), the first: %s"
                           % (data_dir, len(empty), "/".join(image_ops.IMAGE_EXTENSIONS),
                              os.path.join(data_dir, empty[0])))
    check_images_open(data_dir, [path for folder in images.values() for path in folder])
    order = np.random.default_rng(seed).permutation(len(classes))
    num_test = min(len(classes) - 1, max(1, int(math.floor(test_ratio * len(classes) + 0.5))))
    test_classes = set(order[:num_test].tolist())
    lists = {"Ebay_train.txt": [], "Ebay_test.txt": []}
    for name, in_test in (("Ebay_train.txt", False), ("Ebay_test.txt", True)):
        chosen = [(super_id, folder) for position, (super_id, folder) in enumerate(classes)
                  if (position in test_classes) == in_test]
        for class_id, (super_id, folder) in enumerate(chosen, start=1):
            for path in images[folder]:
                lists[name].append(ListEntry(len(lists[name]) + 1, class_id, super_id, path,
                                             os.path.join(data_dir, path)))
    lines = write_lists(data_dir, lists)
    if skipped:
        lines.append("left out %d files without an image extension (%s)"
                     % (skipped, " ".join(image_ops.IMAGE_EXTENSIONS)))
    num_train_classes = len(classes) - num_test
    lines.append("next: python train_elem.py --data_dir=%s --class_dim=%d --loss_name=arcmargin ..."
                 % (data_dir, num_train_classes))
    return lines


def make_parser():
    return converter_parser(__doc__, FLAGS)


def main(argv=None):
    return run(convert, make_parser(), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
