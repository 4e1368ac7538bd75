"""The SOP list format, the samplers, decoding and the worker processes, on small JPEG trees made here."""
import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from core import image_ops
import reader
import tiny_program
from core import worker_pool

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
    sampler = reader.make_sampler(batch_layout, reader.train_labels(image_list), batch_size, samples_each_class, seed)
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


# ---------------------------------------------------------------- samplers

def test_shuffled_sampler_visits_every_image_once_per_epoch():
    labels = np.arange(10)
    sampler = reader.ShuffledSampler(labels, batch_size=4, seed=3)
    stream = np.concatenate([sampler.batch(b) for b in range(5)])
    assert sorted(stream[:10].tolist()) == list(range(10))
    assert sorted(stream[10:20].tolist()) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:20])
    assert np.array_equal(reader.ShuffledSampler(labels, 4, seed=3).batch(3), sampler.batch(3))


def test_triplet_sampler_structure():
    labels = np.repeat(np.arange(6), [1, 2, 3, 4, 2, 5])
    sampler = reader.TripletSampler(labels, batch_size=12, seed=0)
    for batch_index in range(20):
        triples = sampler.batch(batch_index).reshape(-1, 3)
        assert len(triples) == 4
        for anchor, positive, negative in triples:
            assert labels[anchor] == labels[positive] and anchor != positive
            assert labels[negative] != labels[anchor]
            assert labels[anchor] != 0  # a singleton class cannot be an anchor


def test_class_balanced_sampler_structure_and_small_classes():
    labels = np.repeat(np.arange(8), [3, 1, 4, 2, 5, 3, 1, 3])
    with pytest.warns(UserWarning, match="2 of 8 classes have fewer than --samples_each_class=2"):
        sampler = reader.ClassBalancedSampler(labels, batch_size=6, samples_each_class=2, seed=1)
    seen_classes = set()
    for batch_index in range(12):
        batch = sampler.batch(batch_index)
        groups = labels[batch].reshape(3, 2)
        assert (groups[:, 0] == groups[:, 1]).all()
        assert len(set(groups[:, 0])) == 3
        assert len(set(batch.tolist())) == 6
        seen_classes.update(groups[:, 0].tolist())
    assert seen_classes == {0, 2, 3, 4, 5, 7}


@pytest.mark.parametrize("batch_layout, batch_size, samples_each_class, words", [
    (reader.CLASS_BALANCED, 7, 2, "--train_batch_size=7 must be a multiple of --samples_each_class=2"),
    (reader.CLASS_BALANCED, 40, 2, "needs 20 classes per batch, but only 10"),
    (reader.TRIPLETS, 10, 2, "--train_batch_size=10 must be a multiple of 3"),
    ("pairs", 6, 2, "unknown batch layout 'pairs'"),
])
def test_sampler_configuration_errors_name_the_flag(batch_layout, batch_size, samples_each_class, words):
    with pytest.raises(ValueError, match=words):
        reader.make_sampler(batch_layout, np.repeat(np.arange(10), 3), batch_size, samples_each_class, 0)


# ---------------------------------------------------------------- decoding and augmentation

def test_test_transform_is_exact_normalisation_of_the_pixels():
    image = Image.new("RGB", (50, 30), (200, 100, 50))
    out = np.empty((3, 16, 16), dtype=np.float32)
    image_ops.process_test_image(image, out)
    expected = (np.array([200, 100, 50]) / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=(1, 2)), expected, rtol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2)), 0, atol=1e-5)


def test_test_transform_centre_crops_after_resizing_the_short_side():
    pixels = np.zeros((40, 120, 3), dtype=np.uint8)
    pixels[:, 60:, :] = 255  # left half black, right half white
    out = np.empty((3, 32, 32), dtype=np.float32)
    image_ops.process_test_image(Image.fromarray(pixels), out)
    white = (1.0 - 0.485) / 0.229
    black = -0.485 / 0.229
    # short side 40 → 37 (=32·256/224), so the image is 111 wide and its centre 32 columns straddle the edge.
    np.testing.assert_allclose(out[0, :, 0], black, atol=1e-3)
    np.testing.assert_allclose(out[0, :, -1], white, atol=1e-3)


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (224, 224), (97, 310), (30, 20), (1, 1)])
def test_test_crop_equals_resizing_the_whole_image_then_cropping(size):
    pixels = np.random.default_rng(size[0]).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels = np.cumsum(pixels, axis=1, dtype=np.uint16).astype(np.uint8)  # texture at every scale, not just noise
    image = Image.fromarray(pixels)
    height, width = 56, 48
    short = int(round(max(height, width) * image_ops.TEST_RESIZE_RATIO))
    scale = short / min(size)
    new_w, new_h = max(width, int(round(size[0] * scale))), max(height, int(round(size[1] * scale)))
    left, top = (new_w - width) // 2, (new_h - height) // 2
    whole = image.resize((new_w, new_h), Image.BILINEAR).crop((left, top, left + width, top + height))
    cropped = image_ops.resize_short_center_crop(image, height, width)
    difference = np.abs(np.asarray(cropped, dtype=np.int16) - np.asarray(whole, dtype=np.int16))
    assert cropped.size == (width, height) and difference.max() <= 1  # PIL rounds its 8-bit filter weights


def test_rgb_images_are_not_copied_and_others_are_converted(tmp_path):
    rgb = Image.new("RGB", (4, 4), (1, 2, 3))
    assert image_ops.to_rgb(rgb) is rgb
    rgb.save(tmp_path / "rgb.png")
    assert image_ops.load_rgb(str(tmp_path / "rgb.png")).getpixel((3, 3)) == (1, 2, 3)  # pixels outlive the file
    gray = image_ops.to_rgb(Image.new("L", (4, 4), 7))
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (7, 7, 7)


@pytest.mark.parametrize("size", [(300, 200), (64, 64), (20, 90), (1, 1)])
def test_random_resized_crop_area_stays_in_range(size):
    rng = np.random.default_rng(0)
    image = Image.new("RGB", size)
    original_crop = image.crop
    areas = []

    def recording_crop(box):
        areas.append((box[2] - box[0]) * (box[3] - box[1]) / (size[0] * size[1]))
        return original_crop(box)

    image.crop = recording_crop
    for _ in range(200):
        result = image_ops.random_resized_crop(image, 24, 32, 0.25, rng)
        assert result.size == (32, 24)
    assert max(areas) <= 1.0 + 1e-9
    if size in ((300, 200), (64, 64)):  # the area range only shrinks below 0.25 for very elongated images
        assert min(areas) >= 0.2 and max(areas) > 0.8


def test_train_transform_output_and_flip():
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[:, :16] = 255
    image = Image.fromarray(pixels)
    left_bright = []
    for seed in range(40):
        out = np.empty((3, 24, 24), dtype=np.float32)
        image_ops.process_train_image(image, out, PLAIN._replace(random_flip=True), np.random.default_rng(seed))
        assert np.isfinite(out).all()
        left_bright.append(out[0, :, :4].mean() > out[0, :, -4:].mean())
    assert 5 < sum(left_bright) < 35  # flipped about half the time


def test_rotation_changes_the_image_and_keeps_the_shape():
    image = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))[:, :, None].repeat(3, 2))
    plain = np.empty((3, 32, 32), dtype=np.float32)
    rotated = np.empty((3, 32, 32), dtype=np.float32)
    image_ops.process_train_image(image, plain, PLAIN, np.random.default_rng(5))
    image_ops.process_train_image(image, rotated, PLAIN._replace(rotate=True), np.random.default_rng(5))
    assert not np.allclose(plain, rotated)


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


@pytest.mark.parametrize("batch_layout", reader.BATCH_LAYOUTS)
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
        return train_stream(sop_root, reader.CLASS_BALANCED, 4, (3, 16, 16), image_ops.Augmentation(0.08, True, True),
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
        stream = train_stream(sop_root, reader.CLASS_BALANCED, 8, (3, 8, 8), num_workers=0, rank=rank,
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
    stream = train_stream(sop_root, reader.SHUFFLED, 40, (3, 8, 8), num_workers=1)
    images, labels = next(stream)
    stream.close()
    assert decoded_class(images).tolist() == (labels.ravel() + 1).tolist()  # replaced within the class
    warnings = capsys.readouterr().err
    assert "train_1_0.JPG" in warnings and "train_2_0.JPG" in warnings
    strict = train_stream(sop_root, reader.SHUFFLED, 40, (3, 8, 8), num_workers=1, max_bad_images=1)
    with pytest.raises(reader.TooManyBadImagesError, match="--max_bad_images=1"):
        next(strict)


def test_unreadable_eval_image_is_an_error_naming_the_file(sop_root):
    os.remove(os.path.join(sop_root, "mug_final/test_3_1.JPG"))
    with pytest.raises(worker_pool.WorkerError, match="test_3_1.JPG"):
        list(reader.eval_batches(read_test_list(sop_root), batch_size=4, image_shape=(3, 8, 8), num_workers=2))
    with pytest.raises(image_ops.BadImageError, match="test_3_1.JPG"):
        list(reader.eval_batches(read_test_list(sop_root), batch_size=4, image_shape=(3, 8, 8), num_workers=0))
    assert multiprocessing.active_children() == []


def failing_work(task, out):
    if task == 2:
        raise ValueError("task two is cursed")
    out[:] = task
    return 1, task


def test_worker_exception_surfaces_with_its_traceback_and_no_orphans():
    pool = worker_pool.OrderedWorkerPool(failing_work, 2, (1, 2))
    pids = [worker.pid for worker in pool.workers]
    results = []
    with pytest.raises(worker_pool.WorkerError) as caught:
        for batch, task in pool.imap(range(5)):
            results.append(task)
    pool.close()
    assert results == [0, 1]
    assert "ValueError: task two is cursed" in str(caught.value)
    assert "failing_work" in str(caught.value)
    assert multiprocessing.active_children() == []
    for pid in pids:
        assert not os.path.exists("/proc/%d" % pid) or open("/proc/%d/stat" % pid).read().split()[2] == "Z"


def collecting_work(task, out):
    gc.collect()
    out[:] = task
    return 1, task


def test_workers_leave_paddle_garbage_of_the_parent_alone():
    tiny = tiny_program.build_tiny_program()
    tiny.train_step()  # the executor now holds an interpreter, whose destructor segfaults in a forked child
    cycle = [tiny]
    cycle.append(cycle)  # unreachable, but only a garbage collection frees it
    del tiny, cycle
    with worker_pool.OrderedWorkerPool(collecting_work, 1, (1, 1)) as pool:
        assert [task for _, task in pool.imap(range(3))] == [0, 1, 2]
    assert gc.get_freeze_count() == 0  # this process collects its own garbage as before


def slow_work(task, out):
    time.sleep(0.05)
    out[:] = task
    return 1, task


def test_killed_worker_is_reported_within_seconds():
    pool = worker_pool.OrderedWorkerPool(slow_work, 2, (1, 1))
    started = time.monotonic()
    with pytest.raises(worker_pool.WorkerDiedError, match="killed by signal SIGKILL"):
        for batch, task in pool.imap(iter(int, 1)):  # endless tasks
            if task == 0:
                os.kill(pool.workers[0].pid, signal.SIGKILL)
    pool.close()
    assert time.monotonic() - started < 5
    assert multiprocessing.active_children() == []


def test_results_come_back_in_order_whatever_finishes_first():
    def tasks():
        yield from [3, 0, 2, 0, 1, 0]

    with worker_pool.OrderedWorkerPool(sleepy_work, 2, (1, 1)) as pool:
        assert [task for _, task in pool.imap(tasks())] == [3, 0, 2, 0, 1, 0]


def sleepy_work(task, out):
    time.sleep(task * 0.05)
    out[:] = task
    return 1, task


def test_closing_the_stream_early_leaves_no_workers(sop_root):
    stream = train_stream(sop_root, reader.SHUFFLED, 4, (3, 8, 8), num_workers=2)
    next(stream)
    assert len(multiprocessing.active_children()) == 2
    stream.close()
    assert multiprocessing.active_children() == []


def test_a_pool_nobody_closed_does_not_hang_the_exit(sop_root):
    script = ("import sys; sys.path.insert(0, %r); import reader; from core import image_ops\n"
              "image_list = reader.read_train_list(%r)\n"
              "sampler = reader.make_sampler('shuffled', reader.train_labels(image_list), 4, 1, 0)\n"
              "stream = reader.train_batches(image_list, sampler, (3, 8, 8), image_ops.Augmentation(0.08, True, False), "
              "num_workers=2)\n"
              "next(stream)\n"
              "print('exiting with the stream open', flush=True)\n") % (ROOT, sop_root)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "exiting with the stream open" in result.stdout
    assert time.monotonic() - started < 20
