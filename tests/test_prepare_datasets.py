"""The data-set converters on tiny fake releases laid out as the real ones, read back with the suite's list reader."""
import fcntl
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest
import scipy.io
from PIL import Image

import eval as eval_script
import infer
import reader
import test_rerank
from data import prepare_cars196, prepare_cub200, prepare_inshop, split_query_gallery

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_image(path, colour):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (40, 40), colour).save(path)


def class_colour(class_id):
    """A colour per class, far from the others', so a JPEG of it still tells which class it was made for."""
    return ((class_id * 37) % 256, (class_id * 91) % 256, (class_id * 13) % 256)


def shows_class(path, class_id):
    return max(abs(a - b) for a, b in zip(Image.open(path).getpixel((20, 20)), class_colour(class_id))) <= 6


def write_lines(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as text_file:
        text_file.write("".join(line + "\n" for line in lines))


def read_lists(data_dir, *names):
    return [reader.read_image_list(os.path.join(data_dir, name), str(data_dir)) for name in names]


# CUB-200-2011 ------------------------------------------------------------------------------------------------------

CUB_CLASSES = {1: "001.Black_footed_Albatross", 2: "002.Laysan_Albatross", 100: "100.Brown_Pelican",
               101: "101.White_Pelican", 150: "150.Sage_Thrasher", 200: "200.Common_Yellowthroat"}


def make_cub(root, drop_image=None):
    """Two images per class, listed in images.txt with ids interleaved across classes (as the release is not)."""
    images, labels = [], []
    image_id = 0
    for number in range(2):
        for class_id, class_dir in CUB_CLASSES.items():
            image_id += 1
            name = "%s/%s_%04d_%d.jpg" % (class_dir, class_dir.split(".")[1], number, image_id)
            images.append("%d %s" % (image_id, name))
            labels.append("%d %d" % (image_id, class_id))
            if image_id != drop_image:
                write_image(os.path.join(root, "images", name), class_colour(class_id))
    write_lines(os.path.join(root, "images.txt"), images)
    write_lines(os.path.join(root, "image_class_labels.txt"), labels)
    write_lines(os.path.join(root, "classes.txt"), ["%d %s" % item for item in CUB_CLASSES.items()])
    # the classification split, which the metric-learning split must ignore
    write_lines(os.path.join(root, "train_test_split.txt"), ["%d %d" % (i, i % 2) for i in range(1, image_id + 1)])
    return root


def test_cub_splits_by_class_1_to_100_and_101_to_200(tmp_path):
    root = make_cub(str(tmp_path / "CUB_200_2011"))
    prepare_cub200.main(["--data_dir=%s" % root])
    train, test = read_lists(root, "Ebay_train.txt", "Ebay_test.txt")
    assert sorted(set(train.class_ids)) == [1, 2, 100] and sorted(set(test.class_ids)) == [101, 150, 200]
    assert len(train.paths) == 6 and len(test.paths) == 6
    assert list(train.image_ids) == [1, 2, 3, 7, 8, 9] and list(test.image_ids) == [4, 5, 6, 10, 11, 12]
    assert set(train.super_class_ids) == set(test.super_class_ids) == {1}
    for image_list in (train, test):
        for path, class_id in zip(image_list.paths, image_list.class_ids):
            assert path.startswith(os.path.join(root, "images", CUB_CLASSES[class_id]))
            assert shows_class(path, class_id)


def test_cub_missing_image_is_an_error_naming_it_and_its_line(tmp_path, capsys):
    root = make_cub(str(tmp_path / "CUB_200_2011"), drop_image=8)
    with pytest.raises(SystemExit) as caught:
        prepare_cub200.main(["--data_dir=%s" % root])
    assert caught.value.code == 1
    error = capsys.readouterr().err
    assert "1 of 12 listed images are missing" in error
    assert "images/002.Laysan_Albatross/Laysan_Albatross_0001_8.jpg" in error
    assert "images.txt:8" in error
    assert not os.path.exists(os.path.join(root, "Ebay_train.txt"))


def test_cub_label_of_an_unknown_image_names_the_line(tmp_path, capsys):
    root = make_cub(str(tmp_path / "CUB_200_2011"))
    with open(os.path.join(root, "image_class_labels.txt"), "a") as labels:
        labels.write("99 1\n")
    with pytest.raises(SystemExit):
        prepare_cub200.main(["--data_dir=%s" % root])
    assert "image_class_labels.txt:13: image_id 99 is not in" in capsys.readouterr().err


# Stanford Cars -----------------------------------------------------------------------------------------------------

CARS_CLASSES = [1, 1, 98, 99, 99, 196]


def car_annotations(path_field, paths, classes):
    """The struct array `annotations` as the release stores it: 1 x N, one 1 x 1 value per field."""
    fields = [path_field, "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class"]
    if path_field == "relative_im_path":
        fields.append("test")
    annotations = np.empty((1, len(paths)), dtype=[(field, object) for field in fields])
    for i, (path, class_id) in enumerate(zip(paths, classes)):
        values = {path_field: np.array([path]), "bbox_x1": np.array([[3]], np.uint8),
                  "bbox_y1": np.array([[4]], np.uint8), "bbox_x2": np.array([[30]], np.uint8),
                  "bbox_y2": np.array([[35]], np.uint8), "class": np.array([[class_id]], np.uint8),
                  "test": np.array([[i % 2]], np.uint8)}
        annotations[0, i] = tuple(values[field] for field in fields)
    return annotations


def test_cars_full_release_splits_by_class_1_to_98_and_99_to_196(tmp_path):
    root = str(tmp_path / "cars196")
    paths = ["car_ims/%06d.jpg" % i for i in range(1, len(CARS_CLASSES) + 1)]
    for path, class_id in zip(paths, CARS_CLASSES):
        write_image(os.path.join(root, path), class_colour(class_id))
    scipy.io.savemat(os.path.join(root, "cars_annos.mat"), {
        "annotations": car_annotations("relative_im_path", paths, CARS_CLASSES),
        "class_names": np.array([["Make Model %d" % i for i in range(1, 197)]], dtype=object)})
    prepare_cars196.main(["--data_dir=%s" % root])
    train, test = read_lists(root, "Ebay_train.txt", "Ebay_test.txt")
    assert list(train.class_ids) == [1, 1, 98] and list(test.class_ids) == [99, 99, 196]
    assert list(train.image_ids) == [1, 2, 3] and list(test.image_ids) == [4, 5, 6]
    assert train.paths == [os.path.join(root, path) for path in paths[:3]]
    assert all(shows_class(path, class_id) for path, class_id in zip(test.paths, test.class_ids))


def test_cars_devkit_release_numbers_train_then_test_images(tmp_path):
    root = str(tmp_path / "stanford_cars")
    train_names, test_names = ["00001.jpg", "00002.jpg", "00003.jpg"], ["00001.jpg", "00002.jpg", "00003.jpg"]
    train_classes, test_classes = [99, 1, 196], [98, 1, 99]
    for directory, names, classes in (("cars_train", train_names, train_classes),
                                      ("cars_test", test_names, test_classes)):
        for name, class_id in zip(names, classes):
            write_image(os.path.join(root, directory, name), class_colour(class_id))
    os.makedirs(os.path.join(root, "devkit"))
    scipy.io.savemat(os.path.join(root, "devkit", "cars_train_annos.mat"),
                     {"annotations": car_annotations("fname", train_names, train_classes)})
    scipy.io.savemat(os.path.join(root, "cars_test_annos_withlabels.mat"),
                     {"annotations": car_annotations("fname", test_names, test_classes)})
    prepare_cars196.main(["--data_dir=%s" % root])
    train, test = read_lists(root, "Ebay_train.txt", "Ebay_test.txt")
    assert list(zip(train.image_ids, train.class_ids)) == [(2, 1), (4, 98), (5, 1)]
    assert list(zip(test.image_ids, test.class_ids)) == [(1, 99), (3, 196), (6, 99)]
    assert [os.path.relpath(path, root) for path in test.paths] == [
        "cars_train/00001.jpg", "cars_train/00003.jpg", "cars_test/00003.jpg"]
    assert all(shows_class(path, class_id) for path, class_id in zip(test.paths, test.class_ids))


def test_cars_without_annotations_says_what_it_looked_for(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        prepare_cars196.main(["--data_dir=%s" % tmp_path])
    assert caught.value.code == 1
    assert "neither cars_annos.mat (with car_ims/) nor devkit/cars_train_annos.mat" in capsys.readouterr().err


# In-Shop -----------------------------------------------------------------------------------------------------------

# (item, category, status of each of its images); id_00000009 has a query but no gallery image.
INSHOP_ITEMS = [
    ("id_00000001", "WOMEN/Dresses", ["train", "train", "train"]),
    ("id_00000003", "MEN/Denim", ["train", "train"]),
    ("id_00000002", "WOMEN/Dresses", ["query", "gallery", "gallery"]),
    ("id_00000005", "MEN/Denim", ["gallery", "query", "gallery"]),
    ("id_00000007", "WOMEN/Skirts", ["query", "gallery", "gallery"]),
    ("id_00000009", "WOMEN/Skirts", ["query"]),
]


def make_inshop(root, image_dir="Img", items=INSHOP_ITEMS):
    lines = []
    for item_number, (item, category, statuses) in enumerate(items):
        for view, status in enumerate(statuses):
            name = "img/%s/%s/%02d_%d_front.jpg" % (category, item, view + 1, view + 1)
            lines.append("%s %s %s" % (name, item, status))
            # colours far apart per item, so an untrained network still tells some of them apart
            write_image(os.path.join(root, image_dir, name), ((item_number * 97) % 256, (item_number * 53) % 256,
                                                              255 - 40 * item_number))
    write_lines(os.path.join(root, "Eval", "list_eval_partition.txt"),
                [str(len(lines)), "image_name item_id evaluation_status"] + lines)
    return root


def test_inshop_writes_train_query_gallery_with_shared_test_classes(tmp_path):
    root = make_inshop(str(tmp_path / "In-shop Clothes Retrieval Benchmark"))
    prepare_inshop.main(["--data_dir=%s" % root])
    train, query, gallery, test = read_lists(root, "Ebay_train.txt", "Ebay_query.txt", "Ebay_gallery.txt",
                                             "Ebay_test.txt")
    # train items in id order: id_00000001 -> 1, id_00000003 -> 2; test items continue: 2 -> 3, 5 -> 4, 7 -> 5, 9 -> 6
    assert list(train.class_ids) == [1, 1, 1, 2, 2]
    assert list(query.class_ids) == [3, 4, 5, 6] and list(gallery.class_ids) == [3, 3, 4, 4, 5, 5]
    assert list(query.image_ids) == [6, 10, 12, 15] and list(gallery.image_ids) == [7, 8, 9, 11, 13, 14]
    assert sorted(test.image_ids) == sorted(list(query.image_ids) + list(gallery.image_ids))
    # categories in name order: MEN/Denim 1, WOMEN/Dresses 2, WOMEN/Skirts 3
    assert list(train.super_class_ids) == [2, 2, 2, 1, 1] and list(query.super_class_ids) == [2, 1, 3, 3]
    assert query.paths[0] == os.path.join(root, "Img", "img", "WOMEN", "Dresses", "id_00000002", "01_1_front.jpg")


def test_inshop_images_unpacked_into_the_data_directory_itself(tmp_path):
    root = make_inshop(str(tmp_path / "inshop"), image_dir="")
    prepare_inshop.main(["--data_dir=%s" % root])
    (train,) = read_lists(root, "Ebay_train.txt")
    assert os.path.relpath(train.paths[0], root) == os.path.join("img", "WOMEN", "Dresses", "id_00000001",
                                                                 "01_1_front.jpg")


def test_inshop_item_in_train_and_test_is_refused(tmp_path, capsys):
    items = INSHOP_ITEMS[:2] + [("id_00000003", "MEN/Denim", ["query", "gallery"])]
    root = make_inshop(str(tmp_path / "inshop"), items=items)
    with pytest.raises(SystemExit):
        prepare_inshop.main(["--data_dir=%s" % root])
    assert "item id_00000003 has both training and query/gallery images" in capsys.readouterr().err


def test_inshop_wrong_image_count_names_the_first_line(tmp_path, capsys):
    root = make_inshop(str(tmp_path / "inshop"))
    partition = os.path.join(root, "Eval", "list_eval_partition.txt")
    lines = open(partition).read().splitlines()
    write_lines(partition, ["52712"] + lines[1:])
    with pytest.raises(SystemExit):
        prepare_inshop.main(["--data_dir=%s" % root])
    assert "list_eval_partition.txt:1: announces 52712 images but lists 15" in capsys.readouterr().err


def test_eval_searches_the_inshop_gallery_with_its_queries(tmp_path, capsys):
    root = make_inshop(str(tmp_path / "inshop"))
    prepare_inshop.main(["--data_dir=%s" % root])
    results = eval_script.main(["--model=ResNet18", "--image_shape=3,32,32", "--use_gpu=False", "--num_workers=0",
                                "--batch_size=4", "--data_dir=%s" % root, "--recall_k=1,6",
                                "--query_list=Ebay_query.txt", "--gallery_list=Ebay_gallery.txt"])
    output = capsys.readouterr().out
    # 4 queries against 6 gallery images: at K = 6 every query with a gallery image of its item is found,
    # whatever the (untrained) weights; id_00000009 has none
    assert results["num_queries"] == 4 and results["num_no_positive"] == 1
    assert results["recall@6"] == 0.75
    assert "4 queries searched a gallery of 6 images" in output


def test_eval_reranks_the_inshop_gallery_as_the_dense_algorithm_does(tmp_path, capsys):
    root = make_inshop(str(tmp_path / "inshop"))
    prepare_inshop.main(["--data_dir=%s" % root])
    flags = ["--model=ResNet18", "--image_shape=3,32,32", "--use_gpu=False", "--num_workers=0", "--batch_size=4",
             "--data_dir=%s" % root]
    infer.main(flags + ["--save_features=%s" % (tmp_path / "features.npy")])
    by_path = dict(zip(open(tmp_path / "features.paths.txt").read().split("\n"), np.load(tmp_path / "features.npy")))
    query, gallery = read_lists(root, "Ebay_query.txt", "Ebay_gallery.txt")
    results = eval_script.main(flags + ["--recall_k=1,2", "--query_list=Ebay_query.txt",
                                        "--gallery_list=Ebay_gallery.txt", "--qe_k=1", "--rerank=True",
                                        "--rerank_k1=4", "--rerank_k2=2", "--rerank_lambda=0.3"])
    assert "| metric | plain | re-ranked |" in capsys.readouterr().out

    query_features = np.array([by_path[path] for path in query.paths], np.float64)
    gallery_features = np.array([by_path[path] for path in gallery.paths], np.float64)
    unit = gallery_features / np.linalg.norm(gallery_features, axis=1, keepdims=True)
    expanded = query_features / np.linalg.norm(query_features, axis=1, keepdims=True)
    expanded = expanded + unit[np.argmax(expanded @ unit.T, axis=1)]  # average query expansion with one neighbour
    final = test_rerank.dense_k_reciprocal(expanded, gallery_features, 4, 2, 0.3)
    pessimistic, optimistic = test_rerank.first_positive_ranks(final, query.class_ids, gallery.class_ids, 1e-6)
    for k in (1, 2):
        assert np.mean(pessimistic <= k) <= results["reranked"]["recall@%d" % k] <= np.mean(optimistic <= k)
    assert results["reranked"]["num_no_positive"] == 1  # id_00000009 has no gallery image


def test_split_query_gallery_takes_the_first_image_of_each_class(toy_root, tmp_path):
    root = str(tmp_path / "toy")
    shutil.copytree(toy_root, root)
    split_query_gallery.main(["--data_dir=%s" % root])
    test, query, gallery = read_lists(root, "Ebay_test.txt", "Ebay_query.txt", "Ebay_gallery.txt")
    assert sorted(query.image_ids.tolist() + gallery.image_ids.tolist()) == sorted(test.image_ids.tolist())
    assert sorted(query.class_ids) == sorted(np.unique(test.class_ids))  # toy classes have 3-5 images
    for image_id, class_id in zip(query.image_ids, query.class_ids):
        assert image_id == test.image_ids[test.class_ids == class_id].min()


def test_a_misspelt_gallery_list_stops_eval_naming_the_file(tmp_path, capsys):
    root = make_inshop(str(tmp_path / "inshop"))
    prepare_inshop.main(["--data_dir=%s" % root])
    capsys.readouterr()
    with pytest.raises(SystemExit) as caught:
        eval_script.main(["--model=ResNet18", "--use_gpu=False", "--data_dir=%s" % root,
                          "--query_list=Ebay_query.txt", "--gallery_list=Ebay_galery.txt"])
    assert caught.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith("error: %s: cannot read the list file" % os.path.join(root, "Ebay_galery.txt"))
    assert len(error.splitlines()) == 1


def test_query_list_without_gallery_list_is_a_flag_error(capsys):
    with pytest.raises(SystemExit) as caught:
        eval_script.main(["--query_list=Ebay_query.txt"])
    assert caught.value.code == 2
    assert "--query_list: give --query_list and --gallery_list together" in capsys.readouterr().err


def run_in_terminal(command):
    """Runs `command` with its stdout on an 80-column pseudo-terminal, as in a shell window; returns its output."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    process = subprocess.Popen(command, stdout=follower, stderr=subprocess.PIPE, cwd=ROOT)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the process has exited
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(timeout=60) == 0, process.stderr.read()
    return output.decode()


def test_preparation_shows_progress_on_a_terminal_only(tmp_path):
    root = make_cub(str(tmp_path / "CUB_200_2011"))
    command = [sys.executable, os.path.join(ROOT, "data", "prepare_cub200.py"), "--data_dir=%s" % root]
    on_terminal = run_in_terminal(command)
    # description, percentage, bar, count and [elapsed<remaining]
    assert re.search(r"checking images: +\d+%\|.*\| *\d+/12 \[\d\d:\d\d<", on_terminal), on_terminal
    assert "Ebay_train.txt: 6 images of 3 classes (class_id 1-100)" in on_terminal
    piped = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and "checking images" not in piped.stdout + piped.stderr
    assert "Ebay_test.txt: 6 images of 3 classes (class_id 101-200)" in piped.stdout


def test_cars_path_with_whitespace_is_refused_naming_its_annotation(tmp_path, capsys):
    root = str(tmp_path / "cars196")
    paths = ["car_ims/000001.jpg", "car_ims/old copy.jpg"]
    for path in paths:
        write_image(os.path.join(root, path), class_colour(1))
    scipy.io.savemat(os.path.join(root, "cars_annos.mat"),
                     {"annotations": car_annotations("relative_im_path", paths, [1, 120])})
    with pytest.raises(SystemExit):
        prepare_cars196.main(["--data_dir=%s" % root])
    assert "cars_annos.mat: annotation 2: the image path 'car_ims/old copy.jpg' contains whitespace" in (
        capsys.readouterr().err)


def test_data_dir_that_does_not_exist_is_a_flag_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        prepare_inshop.main(["--data_dir=%s" % (tmp_path / "nowhere")])
    assert caught.value.code == 2
    assert capsys.readouterr().err == "error: --data_dir: %s is not a directory\n" % (tmp_path / "nowhere")
