"""The Stanford Online Products list format, the other ways to name images, and the batch readers.

List files (`Ebay_train.txt`, `Ebay_test.txt`) start with the header `image_id class_id super_class_id path` and
hold one image per line, the path relative to the data root. Training labels are `class_id - 1`, as the original;
test and infer keep `class_id`, which only has to tell classes apart.

Training batches are laid out by the sampler of the loss's batch layout (core/samplers.py); each is a pure function
of (seed, batch index), so a resumed run draws the very batches it would have drawn, and so does augmentation: its
random generator is seeded per image, from the batch index and the image's position in the global batch, not per
worker or rank, so the decoded batches are the same whatever the number of workers, and the shares of data-parallel
ranks put together are exactly the single-process batch. Decoding runs in worker processes (core/worker_pool.py).
"""
import collections
import os
import re
import sys
import unicodedata

import numpy as np

from core import image_ops
from core.samplers import AUGMENT_STREAM, batch_rng, indices_by_class
from core.worker_pool import OrderedWorkerPool, WorkerDiedError, WorkerError

LIST_HEADER = ("image_id", "class_id", "super_class_id", "path")
TRAIN_LIST = "Ebay_train.txt"
TEST_LIST = "Ebay_test.txt"
QUERY_LIST, GALLERY_LIST = "Ebay_query.txt", "Ebay_gallery.txt"  # a query/gallery split of the test images
MAX_REPLACEMENT_TRIES = 10
# Fields are separated by spaces and tabs only: str.split() would also split on form feeds, non-breaking spaces and
# other characters that have no business in a list file, and quietly turn them into separators.
FIELD_SEPARATOR = re.compile(r"[ \t]+")


class ListFormatError(ValueError):
    """A list file that cannot be read; the message starts with `file:line:`."""


class TooManyBadImagesError(RuntimeError):
    """Training met more unreadable images than --max_bad_images allows."""


# What reading data can fail with through no fault of the program (a bad file, a killed worker): the scripts report
# these as one line, not a traceback.
READ_ERRORS = (ListFormatError, TooManyBadImagesError, image_ops.BadImageError, WorkerError, WorkerDiedError)


ImageList = collections.namedtuple("ImageList", "list_path data_root image_ids class_ids super_class_ids paths")


def _list_lines(list_path):
    """A list file's lines, numbered from 1 in order; a file that cannot be read or is not UTF-8 is a ListFormatError
    naming it (and the line)."""
    try:
        with open(list_path, "rb") as list_file:
            raw = list_file.read()
    except OSError as error:
        raise ListFormatError("%s: cannot read the list file: %s" % (list_path, error.strerror)) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line_number = raw[:error.start].count(b"\n") + 1
        raise ListFormatError("%s:%d: not UTF-8 text" % (list_path, line_number)) from None
    # Lines end at "\n" only (a "\r" before it is dropped), so line numbers are the ones editors and `sed -n` show;
    # str.splitlines() would also break at form feeds and other separators and shift every number after them.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_image_list(list_path, data_root=None, lines=None):
    """Parses an SOP list file (or its `lines`, already read); `data_root` defaults to the list's directory. Paths
    come back absolute."""
    data_root = os.path.dirname(os.path.abspath(list_path)) if data_root is None else data_root
    lines = _list_lines(list_path) if lines is None else lines

    def fail(line_number, problem):
        raise ListFormatError("%s:%d: %s" % (list_path, line_number, problem))

    image_ids, class_ids, super_class_ids, paths = [], [], [], []
    first_line_of_id = {}
    header_seen = False
    for line_number, line in enumerate(lines, start=1):
        if not line.strip(" \t"):
            continue
        fields = FIELD_SEPARATOR.split(line.strip(" \t"))
        if not header_seen:
            if tuple(fields) != LIST_HEADER:
                fail(line_number, "expected the header %r, got %r" % (" ".join(LIST_HEADER), line.strip()))
            header_seen = True
            continue
        if len(fields) != 4:
            fail(line_number, "expected 4 fields (%s), got %d" % (" ".join(LIST_HEADER), len(fields)))
        # int() would also take "+1", "1_0" and non-ASCII digits: an id is plain ASCII digits or the line is wrong.
        if not all(field.isascii() and field.isdigit() for field in fields[:3]):
            fail(line_number, "image_id, class_id and super_class_id must be integers, got %r" % line.strip())
        image_id, class_id, super_class_id = (int(field) for field in fields[:3])
        if min(image_id, class_id, super_class_id) < 1:
            fail(line_number, "ids are 1-based, got %r" % line.strip())
        if image_id in first_line_of_id:
            fail(line_number, "image_id %d repeats line %d" % (image_id, first_line_of_id[image_id]))
        first_line_of_id[image_id] = line_number
        if any(unicodedata.category(character) in ("Cc", "Zl", "Zp") for character in fields[3]):
            fail(line_number, "path %r contains a control character or line separator" % fields[3])
        relative = os.path.normpath(fields[3])
        if os.path.isabs(relative) or relative == ".." or relative.startswith(".." + os.sep):
            fail(line_number, "path %r leaves the data root %s" % (fields[3], data_root))
        if relative == ".":
            fail(line_number, "path %r is the data root itself, not an image file" % fields[3])
        image_ids.append(image_id)
        class_ids.append(class_id)
        super_class_ids.append(super_class_id)
        paths.append(os.path.join(data_root, relative))
    if not header_seen:
        fail(max(len(lines), 1), "empty list file: expected the header %r" % " ".join(LIST_HEADER))
    if not paths:
        fail(len(lines), "no images listed after the header")
    return ImageList(list_path, data_root, np.array(image_ids, dtype=np.int64), np.array(class_ids, dtype=np.int64),
                     np.array(super_class_ids, dtype=np.int64), paths)


class BatchDecoder:
    """The work a reader worker does: decode and transform the images of one batch into a shared slot.

    Training (with an `image_ops.Augmentation`) replaces an unreadable image by another of its class (or any image)
    and reports the bad path; test and infer (without) raise, naming the file, since every image must be scored;
    with `skip_unreadable` (search queries) they report its row and error instead, for the caller to leave it out.
    """

    def __init__(self, image_list, labels, augmentation=None, skip_unreadable=False):
        self.paths = image_list.paths
        self.labels = labels
        self.augmentation = augmentation
        self.train = augmentation is not None
        self.skip_unreadable = skip_unreadable
        self.by_class = indices_by_class(labels) if self.train else None

    def __call__(self, task, out):
        batch_index, indices, seed, first_row = task
        bad_paths = []
        for row, index in enumerate(indices):
            if not self.train:
                try:
                    image_ops.test_image(self.paths[index], out.shape[1:], out[row])
                except image_ops.BadImageError as error:
                    if not self.skip_unreadable:
                        raise
                    bad_paths.append((row, str(error)))
                continue
            rng = batch_rng(seed, AUGMENT_STREAM, batch_index, first_row + row)
            pixels = self._load_or_replace(index, rng, bad_paths)
            image_ops.train_image(pixels, out[row], self.augmentation, rng)
        return len(indices), (self.labels[indices].reshape(-1, 1), bad_paths)

    def _load_or_replace(self, index, rng, bad_paths):
        for attempt in range(MAX_REPLACEMENT_TRIES):
            try:
                return image_ops.load_rgb(self.paths[index])
            except image_ops.BadImageError as error:
                bad_paths.append(str(error))
            same_class = self.by_class[self.labels[index]]
            index = rng.choice(same_class) if attempt < MAX_REPLACEMENT_TRIES // 2 else rng.integers(len(self.paths))
        raise image_ops.BadImageError(self.paths[index], "no readable replacement found after %d tries"
                                      % MAX_REPLACEMENT_TRIES)


def _run_batches(decoder, tasks, num_workers, batch_size, image_shape, max_bad_images=None):
    bad_seen = 0
    with OrderedWorkerPool(decoder, num_workers, (batch_size,) + tuple(image_shape)) as pool:
        for images, (labels, bad_paths) in pool.imap(tasks):
            for bad in bad_paths:
                bad_seen += 1
                print("warning: bad image replaced (%d so far): %s" % (bad_seen, bad), file=sys.stderr, flush=True)
            if max_bad_images is not None and bad_seen > max_bad_images:
                raise TooManyBadImagesError("%d unreadable images, more than --max_bad_images=%d; last: %s"
                                            % (bad_seen, max_bad_images, bad_paths[-1]))
            yield images, labels


def _unlabelled(list_path, paths):
    ids = np.arange(1, len(paths) + 1, dtype=np.int64)
    return ImageList(list_path, os.path.dirname(os.path.abspath(list_path)), ids, None, None, paths)


def read_path_list(list_path, lines=None):
    """A plain list of image paths, one a line (blank lines skipped), or its `lines`, already read; relative paths
    are relative to its directory."""
    root = os.path.dirname(os.path.abspath(list_path))
    paths = []
    for line_number, line in enumerate(_list_lines(list_path) if lines is None else lines, start=1):
        if not line.strip():
            continue
        if any(unicodedata.category(character) in ("Cc", "Zl", "Zp") for character in line):
            raise ListFormatError("%s:%d: path %r contains a control character or line separator"
                                  % (list_path, line_number, line))
        paths.append(os.path.normpath(os.path.join(root, line.strip())))
    if not paths:
        raise ListFormatError("%s: no image paths listed" % list_path)
    return _unlabelled(list_path, paths)


def read_images(path):
    """The images `path` names: an image folder (every image file under it, in name order), one image file, a list
    in the SOP format (with its labels) or a plain list of image paths (without). A list's relative paths are
    relative to its own directory. Returns an ImageList whose class_ids and super_class_ids are None without labels.
    """
    if os.path.isdir(path):
        found = sorted(os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names
                       if image_ops.is_image_name(name))
        if not found:
            raise ListFormatError("%s: no image files (%s) in this folder"
                                  % (path, " ".join(image_ops.IMAGE_EXTENSIONS)))
        return _unlabelled(os.path.join(path, ""), found)
    if not os.path.exists(path):
        raise ListFormatError("%s: no such file or directory" % path)
    if image_ops.is_image_name(path):
        return _unlabelled(path, [os.path.abspath(path)])
    lines = _list_lines(path)
    first_line = next((line for line in lines if line.strip(" \t")), "")
    if tuple(FIELD_SEPARATOR.split(first_line.strip(" \t"))) == LIST_HEADER:
        return read_image_list(path, lines=lines)
    return read_path_list(path, lines)


def subset(image_list, start, stop):
    """Images start..stop-1 of a parsed list, e.g. one process's share of it."""
    def part(values):
        return None if values is None else values[start:stop]
    return image_list._replace(image_ids=part(image_list.image_ids), class_ids=part(image_list.class_ids),
                               super_class_ids=part(image_list.super_class_ids), paths=image_list.paths[start:stop])


def read_list(data_dir, list_name):
    """Parses `list_name` (in `data_dir`, or an absolute path), its image paths relative to `data_dir`."""
    return read_image_list(os.path.join(data_dir, list_name), data_dir)


def read_train_list(data_dir):
    return read_list(data_dir, TRAIN_LIST)


def train_labels(image_list):
    """Training labels are `class_id - 1`, as the original's."""
    return image_list.class_ids - 1


def train_batches(image_list, sampler, image_shape, augmentation, num_workers=2, seed=0, max_bad_images=100,
                  start_batch=0, rank=0, world_size=1):
    """Endless training batches `(images N×C×H×W float32, labels N×1 int64)` from a parsed training list, laid out
    by `sampler` (`make_sampler` on `train_labels(image_list)`) and augmented as `augmentation` says.

    `start_batch` resumes the stream; with `world_size > 1` each rank gets its own contiguous share of every global
    batch, so class-balanced groups stay whole when `batch_size / world_size` is a multiple of samples_each_class.
    """
    labels = train_labels(image_list)
    per_rank = sampler.batch_size // world_size

    def tasks():
        batch_index = start_batch
        while True:
            indices = sampler.batch(batch_index)[rank * per_rank:(rank + 1) * per_rank]
            yield batch_index, indices, seed, rank * per_rank
            batch_index += 1

    decoder = BatchDecoder(image_list, labels, augmentation)
    yield from _run_batches(decoder, tasks(), num_workers, per_rank, image_shape, max_bad_images)


def _sequential_tasks(num_images, batch_size):
    for batch_index, start in enumerate(range(0, num_images, batch_size)):
        yield batch_index, np.arange(start, min(start + batch_size, num_images)), 0, start


def eval_batches(image_list, batch_size, image_shape, num_workers=2):
    """Every image of a parsed list, in file order: `(images, class_ids N×1 int64)`, the last batch possibly short."""
    decoder = BatchDecoder(image_list, image_list.class_ids)
    yield from _run_batches(decoder, _sequential_tasks(len(image_list.paths), batch_size), num_workers,
                            batch_size, image_shape)


def readable_batches(image_list, batch_size, image_shape, num_workers=2):
    """Every readable image of a parsed list in file order: `(images, [paths], [(path, error), ...])`; an image
    that cannot be read is left out of its batch and named with its error in the third item instead."""
    paths = np.array(image_list.paths, dtype=object)
    decoder = BatchDecoder(image_list, paths, skip_unreadable=True)
    with OrderedWorkerPool(decoder, num_workers, (batch_size,) + tuple(image_shape)) as pool:
        for images, (batch_paths, bad) in pool.imap(_sequential_tasks(len(paths), batch_size)):
            readable = np.ones(len(images), bool)
            readable[[row for row, _ in bad]] = False
            yield images[readable], batch_paths.reshape(-1)[readable].tolist(), [
                (batch_paths[row, 0], message) for row, message in bad]


def infer_batches(image_list, batch_size, image_shape, num_workers=2):
    """Every image of a parsed list in file order, with its path instead of a label: `(images, [paths])`."""
    paths = np.array(image_list.paths, dtype=object)
    decoder = BatchDecoder(image_list, paths)
    for images, batch_paths in _run_batches(decoder, _sequential_tasks(len(paths), batch_size), num_workers,
                                            batch_size, image_shape):
        yield images, batch_paths.reshape(-1).tolist()
