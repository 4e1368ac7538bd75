"""Awkward and broken image files: decoded right, or handled by the reader's bad-image policy in a real run.

Train: a bad image is replaced with a warning, until --max_bad_images; eval and infer: an error naming the file.
"""
import multiprocessing
import os
import re
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

import eval as eval_script
from core import image_ops
import infer
import reader
import train_elem
from script_tools import TINY, error_line, list_paths, run_main, train_flags


@pytest.fixture
def toy_copy(toy_root, tmp_path):
    """A private copy of the toy data set, for tests that break some of its files."""
    return shutil.copytree(toy_root, str(tmp_path / "toy_sop"))


def noise_jpeg(path, size=(64, 48)):
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=90)


def write_awkward_image(path, kind):
    """Writes a readable image of an awkward kind; returns the RGB pixels it must decode to and the tolerance."""
    if kind == "grayscale JPEG":
        Image.new("L", (30, 20), 90).save(path, "JPEG", quality=95)
        return np.full((20, 30, 3), 90), 2
    if kind == "PNG with alpha":
        rgba = np.zeros((20, 30, 4), np.uint8)
        rgba[:, :15] = (255, 0, 0, 255)  # opaque red on the left; fully transparent black on the right
        Image.fromarray(rgba).save(path, "PNG")
        expected = np.full((20, 30, 3), 255)
        expected[:, :15] = (255, 0, 0)
        return expected, 0
    if kind == "palette PNG with a transparent colour":
        image = Image.new("P", (30, 20), 1)
        image.putpalette([0, 0, 0, 0, 0, 200] + [0] * 762)
        image.paste(0, (0, 0, 15, 20))
        image.save(path, "PNG", transparency=0)
        expected = np.full((20, 30, 3), 255)
        expected[:, 15:] = (0, 0, 200)
        return expected, 0
    if kind == "CMYK JPEG":
        Image.new("RGB", (30, 20), (200, 100, 50)).convert("CMYK").save(path, "JPEG", quality=100)
        return np.full((20, 30, 3), (200, 100, 50)), 3
    if kind == "16-bit grayscale PNG":
        levels = np.tile(np.arange(30, dtype=np.uint16) * 257 * 8, (20, 1))  # 0, 8, ... 232 in 8-bit terms
        Image.fromarray(levels).save(path, "PNG")
        return np.repeat((np.arange(30) * 8)[None, :, None], 20, 0).repeat(3, 2), 0
    if kind == "dark 16-bit grayscale PNG":
        Image.fromarray(np.full((20, 30), 200, np.uint16)).save(path, "PNG")  # 200/65535 of full scale: black
        return np.full((20, 30, 3), 1), 0
    if kind == "16-bit RGB PNG":
        with open(path, "wb") as handle:  # Pillow cannot write 16-bit colour; OpenCV can
            handle.write(cv2.imencode(".png", np.full((20, 30, 3), 40000, np.uint16))[1].tobytes())
        return np.full((20, 30, 3), 40000 * 255 / 65535), 1
    if kind == "1x1":
        Image.new("RGB", (1, 1), (10, 200, 30)).save(path, "PNG")
        return np.full((1, 1, 3), (10, 200, 30)), 0
    if kind == "10000x100":
        pixels = np.zeros((100, 10000, 3), np.uint8)
        pixels[:, 5000:] = 255  # black left half, white right half
        Image.fromarray(pixels).save(path, "PNG")
        return pixels, 0
    raise AssertionError(kind)


AWKWARD = ["grayscale JPEG", "PNG with alpha", "palette PNG with a transparent colour", "CMYK JPEG",
           "16-bit grayscale PNG", "dark 16-bit grayscale PNG", "16-bit RGB PNG", "1x1", "10000x100"]


@pytest.mark.parametrize("kind", AWKWARD)
def test_awkward_images_decode_to_their_pixels(tmp_path, kind):
    path = str(tmp_path / "image")
    expected, tolerance = write_awkward_image(path, kind)
    decoded = np.asarray(image_ops.load_rgb(path), dtype=np.float64)
    assert decoded.shape == expected.shape
    np.testing.assert_allclose(decoded, expected, atol=tolerance + 0.5)
    out = np.empty((3, 32, 40), np.float32)
    image_ops.train_image(image_ops.load_rgb(path), out, image_ops.Augmentation(0.08, True, True),
                          np.random.default_rng(0))
    assert np.isfinite(out).all()
    image_ops.test_image(path, out.shape, out)
    if kind == "10000x100":  # the centre crop straddles the black/white edge
        assert out[:, :, :18].max() < -1.5 and out[:, :, 22:].min() > 1.5


def write_unreadable_image(path, kind):
    if kind == "truncated JPEG":
        noise_jpeg(path)
        with open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) // 2)
    elif kind == "zero-byte file":
        open(path, "wb").close()
    elif kind == "directory":
        os.makedirs(path)
    elif kind == "text file":
        with open(path, "w") as handle:
            handle.write("not an image\n")
    else:
        raise AssertionError(kind)


UNREADABLE = ["truncated JPEG", "zero-byte file", "directory", "text file"]


@pytest.mark.parametrize("kind", UNREADABLE + ["missing file"])
def test_unreadable_images_are_bad_images_naming_the_file(tmp_path, kind):
    path = str(tmp_path / "broken.JPG")
    if kind != "missing file":
        write_unreadable_image(path, kind)
    with pytest.raises(image_ops.BadImageError) as caught:
        image_ops.load_rgb(path)
    assert str(caught.value).startswith(path + ": ") and caught.value.path == path


def test_pillow_itself_refuses_a_truncated_jpeg(tmp_path):
    path = str(tmp_path / "cut.jpg")
    write_unreadable_image(path, "truncated JPEG")
    with Image.open(path) as image, pytest.raises(OSError, match="truncated"):
        image.load()


def test_training_decodes_awkward_images_replaces_bad_ones_then_gives_up(toy_copy, tmp_path, capsys):
    paths = list_paths(toy_copy, reader.TRAIN_LIST)
    for path, kind in zip(paths[::4], AWKWARD):  # the files keep their .JPG names: Pillow goes by content
        write_awkward_image(path, kind)
    broken = paths[1::9][:len(UNREADABLE)]
    for path, kind in zip(broken, UNREADABLE):
        os.remove(path)
        write_unreadable_image(path, kind)
    # softmax reads every training image once per epoch: 8 batches of 8 cover the 53 images, and a non-square input.
    flags = train_flags(toy_copy, tmp_path / "out", "softmax", 8, class_dim=12, train_batch_size=8, num_workers=2,
                        image_shape="3,32,40")
    code, out, err = run_main(train_elem, flags, capsys)
    assert code == 0, err
    for path in broken:
        assert re.search(r"warning: bad image replaced \(\d+ so far\): %s: " % re.escape(path), err), path
    assert os.path.isfile(tmp_path / "out" / "ResNet18" / "8" / "model.pdparams")

    code, out, err = run_main(train_elem, flags + ["--max_bad_images=0", "--model_save_dir=%s" % (tmp_path / "b")],
                              capsys)
    assert code == 1
    assert "unreadable images, more than --max_bad_images=0; last: %s/" % toy_copy in error_line(err)
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("script, num_workers", [(eval_script, 2), (infer, 0)])
def test_a_bad_test_image_stops_eval_and_infer_naming_it(toy_copy, capsys, script, num_workers):
    broken = list_paths(toy_copy, reader.TEST_LIST)[7]
    write_unreadable_image(broken + ".tmp", "zero-byte file")
    os.replace(broken + ".tmp", broken)
    code, out, err = run_main(script, TINY + ["--data_dir=%s" % toy_copy, "--batch_size=8",
                                              "--num_workers=%d" % num_workers], capsys)
    assert code == 1
    assert "%s: UnidentifiedImageError" % broken in error_line(err)
    assert multiprocessing.active_children() == []
