"""The SOP list format, the samplers and the batch readers, on small JPEG trees made here."""
import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import reader
from core import image_ops, samplers, worker_pool

HEADER = "image_id class_id super_class_id path\n"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def class_colour(class_id):
    """A distinct flat colour per class, so a decoded batch tells which class each row came from."""
    return ((class_id * 37) % 256, (class_id * 91) % 256, (class_id * 53) % 256)


def write_tree(root, list_name, num_classes, images_per_class, size=(48, 40), sizes=None):
    """Writes flat-coloured JPEGs and their list file; `sizes` maps class id → images in that class."""
    os.makedirs(os.path.join(root, "mug_final"), exist_ok=True)
    lines = [HEADER]
    image_id = 1
    for class_id in range(1, num_classes + 1):
        for view in range((sizes or {}).get(class_id, images_per_class)):
            relative = "mug_final/%s_%d_%d.JPG" % (list_name[5:-4], class_id, view)
            Image.new("RGB", size, class_colour(class_id)).save(os.path.join(root, relative), quality=95)
            lines.append("%d %d 1 %s\n" % (image_id, class_id, relative))
            image_id += 1
    with open(os.path.join(root, list_name), "w") as list_file:
        list_file.writelines(lines)


@pytest.fixture
def sop_root(tmp_path):
    root = str(tmp_path / "sop")
    write_tree(root, reader.TRAIN_LIST, num_classes=10, images_per_class=4)
    write_tree(root, reader.TEST_LIST, num_classes=7, images_per_class=3)
    return root


def read_test_list(root):
    return reader.read_list(root, reader.TEST_LIST)


PLAIN = image_ops.Augmentation(crop_scale_min=1.0, random_flip=False, rotate=False)  # whole image, no flip


def train_stream(root, batch_layout, batch_size, image_shape, augmentation=PLAIN, samples_each_class=2, seed=0,
                 **options):
    """reader.train_batches over the training list of `root`, with the sampler of `batch_layout`."""
    image_list = reader.read_train_list(root)
    sampler = samplers.make_sampler(batch_layout, reader.train_labels(image_list), batch_size, samples_each_class, seed)
    return reader.train_batches(image_list, sampler, image_shape, augmentation, seed=seed, **options)


def decoded_class(images):
    """Recovers each row's class id from its (test-mode, flat) colour."""
    rgb = images.mean(axis=(2, 3)) * image_ops.IMAGENET_STD.reshape(1, 3) + image_ops.IMAGENET_MEAN.reshape(1, 3)
    colours = np.array([class_colour(c) for c in range(1, 30)]) / 255.0
    return np.argmin(((rgb[:, None, :] - colours[None]) ** 2).sum(-1), axis=1) + 1


# ---------------------------------------------------------------- list format

def write_list(tmp_path, body, name="list.txt", mode="w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(body)
    else:
        path.write_text(body)
    return str(path)


def test_list_parses_ids_paths_bom_crlf_and_blank_lines(tmp_path):
    body = ("\ufeff" + HEADER + "1 1 1 a_final/x.JPG\r\n\r\n2 2 3 a_final/y.JPG\r\n\n").encode("utf-8")
    parsed = reader.read_image_list(write_list(tmp_path, body, mode="wb"), "/data")
    assert parsed.image_ids.tolist() == [1, 2]
    assert parsed.class_ids.tolist() == [1, 2]
    assert parsed.super_class_ids.tolist() == [1, 3]
    assert parsed.paths == ["/data/a_final/x.JPG", "/data/a_final/y.JPG"]


@pytest.mark.parametrize("body, line, words", [
    ("", 1, "empty list file"),
    ("1 1 1 a.jpg\n", 1, "expected the header"),
    (HEADER, 1, "no images"),
    (HEADER + "1 1 1\n", 2, "expected 4 fields"),
    (HEADER + "1 1 1 a.jpg extra\n", 2, "expected 4 fields"),
    (HEADER + "1 one 1 a.jpg\n", 2, "must be integers"),
    (HEADER + "1 0 1 a.jpg\n", 2, "1-based"),
    (HEADER + "1 1 1 a.jpg\n\n1 2 1 b.jpg\n", 4, "image_id 1 repeats line 2"),
    (HEADER + "1 1 1 ../outside.jpg\n", 2, "leaves the data root"),
    (HEADER + "1 1 1 a/../../outside.jpg\n", 2, "leaves the data root"),
    (HEADER + "1 1 1 /etc/passwd\n", 2, "leaves the data root"),
])
def test_bad_list_lines_name_file_and_line(tmp_path, body, line, words):
    path = write_list(tmp_path, body)
    with pytest.raises(reader.ListFormatError) as caught:
        reader.read_image_list(path)
    assert str(caught.value).startswith("%s:%d:" % (path, line))
    assert words in str(caught.value)


def test_non_utf8_and_missing_list_files(tmp_path):
    path = write_list(tmp_path, HEADER.encode() + b"1 1 1 caf\xe9.jpg\n", mode="wb")
    with pytest.raises(reader.ListFormatError, match=r"list.txt:2: not UTF-8"):
        reader.read_image_list(path)
    with pytest.raises(reader.ListFormatError, match="cannot read the list file"):
        reader.read_image_list(str(tmp_path / "absent.txt"))


# ---------------------------------------------------------------- batch readers

def test_eval_batches_keep_file_order_and_labels(sop_root):
    batches = list(reader.eval_batches(read_test_list(sop_root), batch_size=4, image_shape=(3, 16, 16), num_workers=2))
    assert [len(labels) for _, labels in batches] == [4, 4, 4, 4, 4, 1]
    labels = np.concatenate([labels for _, labels in batches]).ravel()
    images = np.concatenate([images for images, _ in batches])
    assert labels.tolist() == np.repeat(np.arange(1, 8), 3).tolist()
    assert decoded_class(images).tolist() == labels.tolist()
    assert images.shape == (21, 3, 16, 16) and images.dtype == np.float32


def test_infer_batches_yield_paths(sop_root):
    batches = list(reader.infer_batches(read_test_list(sop_root), batch_size=5, image_shape=(3, 16, 16), num_workers=1))
    paths = sum([paths for _, paths in batches], [])
    assert len(paths) == 21
    assert paths[0] == os.path.join(sop_root, "mug_final/test_1_0.JPG")


@pytest.mark.parametrize("batch_layout", samplers.BATCH_LAYOUTS)
def test_train_batches_labels_match_the_pixels(sop_root, batch_layout):
    stream = train_stream(sop_root, batch_layout, 6, (3, 16, 16), num_workers=2)
    for _, (images, labels) in zip(range(4), stream):
        assert labels.shape == (6, 1) and labels.dtype == np.int64
        assert decoded_class(images).tolist() == (labels.ravel() + 1).tolist()
    stream.close()


def take(stream, count):
    batches = [batch for _, batch in zip(range(count), stream)]
    stream.close()
    return batches


def test_train_stream_is_identical_for_any_worker_count_and_resumes(sop_root):
    def stream(num_workers, start_batch=0):
        return train_stream(sop_root, samplers.CLASS_BALANCED, 4, (3, 16, 16), image_ops.Augmentation(0.08, True, True),
                            num_workers=num_workers, seed=7, start_batch=start_batch)
    inline = take(stream(0), 5)
    parallel = take(stream(2), 5)
    resumed = take(stream(2, start_batch=3), 2)
    for (images_a, labels_a), (images_b, labels_b) in zip(inline, parallel):
        np.testing.assert_array_equal(images_a, images_b)
        np.testing.assert_array_equal(labels_a, labels_b)
    for (images_a, _), (images_b, _) in zip(inline[3:], resumed):
        np.testing.assert_array_equal(images_a, images_b)


def test_ranks_split_each_global_batch(sop_root):
    def labels_of(rank, world_size):
        stream = train_stream(sop_root, samplers.CLASS_BALANCED, 8, (3, 8, 8), num_workers=0, rank=rank,
                              world_size=world_size)
        return np.concatenate([labels for _, labels in take(stream, 3)]).ravel()

    whole = labels_of(0, 1).reshape(3, 8)
    halves = [labels_of(rank, 2).reshape(3, 4) for rank in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves, axis=1), whole)


# ---------------------------------------------------------------- bad images and worker failures

def test_bad_training_images_are_replaced_then_fatal(sop_root, capsys):
    os.remove(os.path.join(sop_root, "mug_final/train_1_0.JPG"))
    with open(os.path.join(sop_root, "mug_final/train_2_0.JPG"), "wb") as broken:
        broken.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    stream = train_stream(sop_root, samplers.SHUFFLED, 40, (3, 8, 8), num_workers=1)
    images, labels = next(stream)
    stream.close()
    assert decoded_class(images).tolist() == (labels.ravel() + 1).tolist()  # replaced within the class
    warnings = capsys.readouterr().err
    assert "train_1_0.JPG" in warnings and "train_2_0.JPG" in warnings
    strict = train_stream(sop_root, samplers.SHUFFLED, 40, (3, 8, 8), num_workers=1, max_bad_images=1)
    with pytest.raises(reader.TooManyBadImagesError, match="--max_bad_images=1"):
        next(strict)


def test_unreadable_eval_image_is_an_error_naming_the_file(sop_root):
    os.remove(os.path.join(sop_root, "mug_final/test_3_1.JPG"))
    with pytest.raises(worker_pool.WorkerError, match="test_3_1.JPG"):
        list(reader.eval_batches(read_test_list(sop_root), batch_size=4, image_shape=(3, 8, 8), num_workers=2))
    with pytest.raises(image_ops.BadImageError, match="test_3_1.JPG"):
        list(reader.eval_batches(read_test_list(sop_root), batch_size=4, image_shape=(3, 8, 8), num_workers=0))
    assert multiprocessing.active_children() == []


def test_closing_the_stream_early_leaves_no_workers(sop_root):
    stream = train_stream(sop_root, samplers.SHUFFLED, 4, (3, 8, 8), num_workers=2)
    next(stream)
    assert len(multiprocessing.active_children()) == 2
    stream.close()
    assert multiprocessing.active_children() == []


def test_a_pool_nobody_closed_does_not_hang_the_exit(sop_root):
    script = ("import sys; sys.path.insert(0, %r); import reader; from core import image_ops, samplers\n"
              "image_list = reader.read_train_list(%r)\n"
              "sampler = samplers.make_sampler('shuffled', reader.train_labels(image_list), 4, 1, 0)\n"
              "stream = reader.train_batches(image_list, sampler, (3, 8, 8), "
              "image_ops.Augmentation(0.08, True, False), num_workers=2)\n"
              "next(stream)\n"
              "print('exiting with the stream open', flush=True)\n") % (ROOT, sop_root)
    # A hang is what this guards against: the generous timeout tells it from a slow exit on a loaded machine.
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "exiting with the stream open" in result.stdout
