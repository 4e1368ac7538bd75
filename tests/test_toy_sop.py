"""The toy Stanford Online Products generator (data/make_toy_sop.py) and the real download script."""
import os
import re
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from data.make_toy_sop import HEADER, MARKER_NAME, SUPER_CLASSES, main, make_toy_sop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOWNLOAD_SCRIPT = os.path.join(ROOT, "data", "download_sop.sh")
TINY = dict(num_train_classes=6, num_test_classes=5, min_images=2, max_images=4, image_size=32, seed=3)
PATH_PATTERN = re.compile(r"^([a-z_]+)_final/(\d{12})_(\d+)\.JPG$")


def read_list(root, list_name):
    """Rows of an Ebay_*.txt file as (image_id, class_id, super_class_id, path), after checking the header."""
    with open(os.path.join(root, list_name)) as list_file:
        lines = list_file.read().splitlines()
    assert lines[0] == HEADER
    rows = []
    for line in lines[1:]:
        fields = line.split(" ")
        assert len(fields) == 4, line
        rows.append((int(fields[0]), int(fields[1]), int(fields[2]), fields[3]))
    return rows


def read_all_files(root):
    contents = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as data_file:
                contents[os.path.relpath(path, root)] = data_file.read()
    return contents


def raw_pixel_recall(root, list_name, k):
    """Recall@k of L2-normalised raw pixels under Euclidean distance, each query excluded from its own neighbours."""
    rows = read_list(root, list_name)
    labels = np.array([class_id for _, class_id, _, _ in rows])
    pixels = np.stack([np.asarray(Image.open(os.path.join(root, path)), np.float32).ravel() for *_, path in rows])
    pixels /= np.linalg.norm(pixels, axis=1, keepdims=True)
    # For unit vectors the Euclidean order is the order of decreasing dot product.
    similarity = pixels @ pixels.T
    np.fill_diagonal(similarity, -np.inf)
    neighbours = np.argsort(-similarity, axis=1)[:, :k]
    return float(np.mean((labels[neighbours] == labels[:, None]).any(axis=1)))


@pytest.fixture(scope="module")
def tiny_sop(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny") / "toy_sop")
    summary = make_toy_sop(root, **TINY)
    return root, summary


def test_list_files_have_the_sop_layout(tiny_sop):
    root, summary = tiny_sop
    for list_name, num_classes, num_images in [("Ebay_train.txt", TINY["num_train_classes"], summary["train_images"]),
                                               ("Ebay_test.txt", TINY["num_test_classes"], summary["test_images"])]:
        rows = read_list(root, list_name)
        assert [image_id for image_id, *_ in rows] == list(range(1, num_images + 1))
        assert sorted({class_id for _, class_id, _, _ in rows}) == list(range(1, num_classes + 1))
        views_by_class = {}
        for _, class_id, super_class_id, path in rows:
            super_class_name, product_id, view = PATH_PATTERN.match(path).groups()
            assert SUPER_CLASSES[super_class_id - 1][0] == super_class_name
            views_by_class.setdefault(class_id, []).append((product_id, int(view)))
        for views in views_by_class.values():
            assert len({product_id for product_id, _ in views}) == 1
            assert [view for _, view in views] == list(range(len(views)))
            assert TINY["min_images"] <= len(views) <= TINY["max_images"]


def test_train_and_test_products_are_disjoint(tiny_sop):
    root, _ = tiny_sop
    products = {}
    for list_name in ("Ebay_train.txt", "Ebay_test.txt"):
        products[list_name] = {path.split("/")[1].split("_")[0] for *_, path in read_list(root, list_name)}
    assert len(products["Ebay_train.txt"]) == TINY["num_train_classes"]
    assert len(products["Ebay_test.txt"]) == TINY["num_test_classes"]
    assert not products["Ebay_train.txt"] & products["Ebay_test.txt"]


def test_every_listed_path_is_an_rgb_jpeg_and_nothing_else_is_there(tiny_sop):
    root, summary = tiny_sop
    listed = [path for list_name in ("Ebay_train.txt", "Ebay_test.txt") for *_, path in read_list(root, list_name)]
    for path in listed:
        with Image.open(os.path.join(root, path)) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (TINY["image_size"],) * 2)
    on_disk = set(read_all_files(root)) - {"Ebay_train.txt", "Ebay_test.txt", MARKER_NAME}
    assert on_disk == set(listed)
    assert len(listed) == summary["train_images"] + summary["test_images"]


def test_same_arguments_give_the_same_bytes(tiny_sop, tmp_path):
    root, _ = tiny_sop
    make_toy_sop(str(tmp_path / "again"), **TINY)
    assert read_all_files(str(tmp_path / "again")) == read_all_files(root)
    make_toy_sop(str(tmp_path / "other_seed"), **dict(TINY, seed=4))
    assert read_all_files(str(tmp_path / "other_seed")) != read_all_files(root)


def test_refuses_a_directory_it_did_not_make(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not made by make_toy_sop"):
        make_toy_sop(str(foreign), **dict(TINY, overwrite=True))
    script = os.path.join(ROOT, "data", "make_toy_sop.py")
    result = subprocess.run([sys.executable, script, "--out_dir=" + str(foreign)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "not made by make_toy_sop" in result.stderr
    assert os.listdir(foreign) == ["precious.txt"]
    assert (foreign / "precious.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["foreign"]


def test_marker_makes_a_rerun_a_no_op_and_guards_other_arguments(tmp_path, capsys):
    out_dir = str(tmp_path / "toy")
    first = make_toy_sop(out_dir, **TINY)
    files_before = read_all_files(out_dir)
    marker_time = os.stat(os.path.join(out_dir, MARKER_NAME)).st_mtime_ns

    again = make_toy_sop(out_dir, **TINY)
    assert again["created"] is False and first["created"] is True
    assert again["test_images"] == first["test_images"]
    assert os.stat(os.path.join(out_dir, MARKER_NAME)).st_mtime_ns == marker_time

    with pytest.raises(FileExistsError, match="overwrite"):
        make_toy_sop(out_dir, **dict(TINY, seed=4))
    assert main(["--out_dir=" + out_dir, "--seed=4", "--num_train_classes=2", "--num_test_classes=2"]) == 2
    assert "--overwrite=True" in capsys.readouterr().err
    assert read_all_files(out_dir) == files_before

    replaced = make_toy_sop(out_dir, **dict(TINY, seed=4, overwrite=True))
    assert replaced["created"] is True
    assert read_all_files(out_dir) != files_before
    assert sorted(os.listdir(tmp_path)) == ["toy"]


def test_an_empty_directory_is_filled(tmp_path):
    (tmp_path / "empty").mkdir()
    assert make_toy_sop(str(tmp_path / "empty"), **TINY)["created"] is True
    assert os.path.isfile(tmp_path / "empty" / "Ebay_test.txt")


def test_raw_pixels_retrieve_above_chance_but_far_from_perfect(tmp_path):
    root = str(tmp_path / "toy")
    summary = make_toy_sop(root, num_train_classes=1, num_test_classes=100, min_images=4, max_images=6,
                           image_size=32, seed=0)
    chance = (summary["test_images"] / summary["test_classes"] - 1) / (summary["test_images"] - 1)
    recall_at_1 = raw_pixel_recall(root, "Ebay_test.txt", k=1)
    assert 5 * chance < recall_at_1 < 0.6


def run_download(data_dir, url):
    env = dict(os.environ, SOP_DATA_DIR=str(data_dir), SOP_URL=url, SOP_CONNECT_TIMEOUT="2")
    start = time.time()
    result = subprocess.run(["sh", DOWNLOAD_SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    return result, time.time() - start


def test_download_fails_quickly_and_clearly_without_a_server(tmp_path):
    # A refused local port and a documentation-only address (RFC 5737): neither can start a real download.
    result, seconds = run_download(tmp_path, "http://127.0.0.1:9/Stanford_Online_Products.zip "
                                             "ftp://192.0.2.1/Stanford_Online_Products.zip")
    assert result.returncode != 0
    assert "could not download a complete Stanford_Online_Products.zip" in result.stderr
    assert seconds < 60  # two connection attempts of 2 s each; a download hanging on a dead server would not end
    assert os.listdir(tmp_path) == []


def test_download_unpacks_a_zip_given_as_file_url(tiny_sop, tmp_path):
    root, _ = tiny_sop
    with zipfile.ZipFile(tmp_path / "mirror.zip", "w") as mirror:
        for relative_path in read_all_files(root):
            mirror.write(os.path.join(root, relative_path), "Stanford_Online_Products/" + relative_path)
    data_dir = tmp_path / "data"
    data_dir.mkdir()

    result, _ = run_download(data_dir, "file://" + str(tmp_path / "mirror.zip"))
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(data_dir)) == ["Stanford_Online_Products", "Stanford_Online_Products.zip"]
    assert read_all_files(data_dir / "Stanford_Online_Products") == read_all_files(root)

    result, _ = run_download(data_dir, "http://127.0.0.1:9/unused.zip")
    assert result.returncode == 0 and "already there" in result.stdout
