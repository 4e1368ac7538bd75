"""data/prepare_folder.py: a folder of class folders becomes two SOP lists, split by class, that the scripts train
on."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import reader
import train_elem
from data import prepare_folder
from script_tools import ROOT, error_line, run_main, train_flags


def write_folder(root, classes, super_classes=None, size=(40, 30)):
    """`classes` maps a class folder to its number of images; with `super_classes`, {super: [class, ...]}."""
    groups = super_classes or {"": list(classes)}
    for group, names in groups.items():
        for name in names:
            folder = os.path.join(root, group, name)
            os.makedirs(folder, exist_ok=True)
            for index in range(classes[name]):
                colour = (sum(map(ord, name)) % 200, index * 40 % 256, 90)
                Image.new("RGB", size, colour).save(os.path.join(folder, "%s_%d.jpg" % (name, index)))


CLASSES = {"bike_%02d" % index: 3 + index % 3 for index in range(10)}


def test_classes_split_disjointly_by_the_seed_and_numbered_from_one(tmp_path, capsys):
    root = str(tmp_path / "mine")
    write_folder(root, CLASSES)
    (tmp_path / "mine" / "bike_00" / "notes.txt").write_text("not an image")
    (tmp_path / "mine" / "bike_01" / ".hidden.jpg").write_text("an editor's leftover")
    prepare_folder.main(["--data_dir=%s" % root, "--test_ratio=0.3", "--seed=4"])
    output = capsys.readouterr().out
    train, test = reader.read_train_list(root), reader.read_list(root, reader.TEST_LIST)
    class_of = {path: os.path.basename(os.path.dirname(path)) for path in train.paths + test.paths}
    train_classes = {class_of[path] for path in train.paths}
    test_classes = {class_of[path] for path in test.paths}
    assert not train_classes & test_classes and train_classes | test_classes == set(CLASSES)
    assert len(test_classes) == 3  # 30% of 10 classes
    assert len(train.paths) + len(test.paths) == sum(CLASSES.values())
    for image_list in (train, test):
        assert sorted(set(image_list.class_ids)) == list(range(1, len(set(image_list.class_ids)) + 1))
        for path, class_id in zip(image_list.paths, image_list.class_ids):  # one class id per folder
            assert {c for p, c in zip(image_list.paths, image_list.class_ids) if class_of[p] == class_of[path]} == \
                {class_id}
        assert set(image_list.super_class_ids) == {1}
    assert "left out 1 files without an image extension" in output
    assert "--class_dim=7" in output
    prepare_folder.main(["--data_dir=%s" % root, "--test_ratio=0.3", "--seed=4"])
    assert reader.read_list(root, reader.TEST_LIST).paths == test.paths  # the seed decides the split
    prepare_folder.main(["--data_dir=%s" % root, "--test_ratio=0.3", "--seed=5"])
    assert reader.read_list(root, reader.TEST_LIST).paths != test.paths


def test_super_classes_come_from_the_parent_folders(tmp_path):
    root = str(tmp_path / "shop")
    classes = {"mug_a": 2, "mug_b": 3, "chair_a": 2, "chair_b": 2, "chair_c": 4}
    write_folder(root, classes, super_classes={"chairs": ["chair_a", "chair_b", "chair_c"], "mugs": ["mug_a", "mug_b"]})
    prepare_folder.main(["--data_dir=%s" % root, "--super_classes=True"])
    both = reader.read_train_list(root), reader.read_list(root, reader.TEST_LIST)
    for image_list in both:
        for path, super_id in zip(image_list.paths, image_list.super_class_ids):
            assert super_id == {"chairs": 1, "mugs": 2}[os.path.basename(os.path.dirname(os.path.dirname(path)))]
    assert sum(len(image_list.paths) for image_list in both) == sum(classes.values())


@pytest.mark.parametrize("setup, flags, code, message", [
    (lambda root: write_folder(root, {"only": 3}), [], 1, "found 1 class folder; a train/test split by class needs "
                                                          "at least 2"),
    (lambda root: write_folder(root, CLASSES), ["--test_ratio=1"], 2,
     "--test_ratio: must be between 0 and 1 (exclusive), got 1.0"),
    (lambda root: (write_folder(root, CLASSES), os.makedirs(os.path.join(root, "empty"))), [], 1,
     "1 class folders hold no image"),
])
def test_bad_folders_and_flags_are_one_line_errors(tmp_path, capsys, setup, flags, code, message):
    root = str(tmp_path / "mine")
    os.makedirs(root)
    setup(root)
    result = run_main(prepare_folder, ["--data_dir=%s" % root] + flags, capsys)
    assert result[0] == code and message in error_line(result[2])
    assert not os.path.exists(os.path.join(root, reader.TRAIN_LIST))


def test_an_image_that_does_not_open_is_named(tmp_path, capsys):
    root = str(tmp_path / "mine")
    write_folder(root, CLASSES)
    broken = os.path.join(root, "bike_03", "bike_03_1.jpg")
    with open(broken, "wb") as handle:
        handle.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, _, err = run_main(prepare_folder, ["--data_dir=%s" % root], capsys)
    assert code == 1 and error_line(err).startswith("error: %s: " % broken)
    assert not os.path.exists(os.path.join(root, reader.TRAIN_LIST))


def test_the_lists_train_through_the_scripts(tmp_path, capsys):
    root = str(tmp_path / "mine")
    write_folder(root, CLASSES, size=(48, 40))
    result = subprocess.run([sys.executable, os.path.join(ROOT, "data", "prepare_folder.py"), "--data_dir=%s" % root],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    train_elem.main(train_flags(root, tmp_path / "out", "softmax", 2, class_dim=5, test_iter_step=2))
    output = capsys.readouterr().out
    assert "test_img_num %d, trainbatch 2" % len(reader.read_list(root, reader.TEST_LIST).paths) in output
    assert np.isfinite([float(value) for value in re.findall(r"loss ([\d.]+)", output)]).all()
