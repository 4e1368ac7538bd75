"""The index directory of search.py: a gallery's features, image paths and labels, and the model that made them.

    index.json               the manifest: index format, the suite's version, the model's fingerprint (backbone,
                             embedding size, image shape, weights checksum), the feature size, the parts and the
                             approximate structure, if any
    part-<token>.npy         the features (float32 rows) one build or add wrote
    part-<token>.paths.txt   their image paths, one a line
    part-<token>.labels.npy  their labels (int64), when the images came with labels (an SOP list)
    <type>-<token>.faiss     a faiss structure over all parts (search.py build --index_type=flat|ivf|hnsw)

Writing is atomic: every file is written under a temporary name (utility.atomic_output) and renamed to a fresh name
no manifest uses, and only the replacement of index.json by a new manifest (one rename) makes the new files part of
the index. A crash before it leaves the previous manifest and every file it names as they were; the next write
removes the files no manifest names. A lock file keeps two writers of one index apart. Features are kept as
extracted; search normalises them.
"""
import fcntl
import json
import os
import secrets

import numpy as np

import core
import utility

FORMAT_VERSION = 1
MANIFEST = "index.json"
LOCK_FILE = ".lock"
MODEL_KEYS = ("backbone", "embedding_size", "image_shape", "weights")


class GalleryIndexError(RuntimeError):
    """An index directory that cannot be used as asked; the message names it and says why."""


def fingerprint(backbone, embedding_size, image_shape, weights):
    """What makes features comparable: the network and its exact weights (a programs.weights_checksum)."""
    return {"backbone": backbone, "embedding_size": int(embedding_size), "image_shape": list(image_shape),
            "weights": weights}


def describe(model):
    return "%s, --embedding_size=%d, --image_shape=%s, weights %s" % (
        model["backbone"], model["embedding_size"], ",".join(map(str, model["image_shape"])), model["weights"][:19])


class Gallery:
    """A loaded index: manifest fields, features (N x D, read from the part files), paths, labels (None each where
    unknown) and the approximate structure's entry ({'type', 'file', parameters}) or None."""

    def __init__(self, directory, manifest, parts, paths, labels):
        self.directory, self.manifest = directory, manifest
        self.parts, self.paths, self.labels = parts, paths, labels
        self.model, self.dim = manifest["model"], manifest["dim"]
        self.approximate = manifest.get("approximate")
        self._features = None

    @property
    def features(self):
        """All parts' rows: the one part's file mapped into memory, or several parts joined (read when first used)."""
        if self._features is None:
            self._features = self.parts[0] if len(self.parts) == 1 else np.concatenate(self.parts)
        return self._features

    def check_model(self, model):
        if model != self.model:
            raise GalleryIndexError("%s was built with another model (%s); this run has %s: give the flags and "
                                    "--pretrained_model it was built with, or build a new index"
                                    % (self.directory, describe(self.model), describe(model)))

    def file(self, name):
        return os.path.join(self.directory, name)


def _fail(directory, problem):
    raise GalleryIndexError("%s: %s" % (directory, problem))


def read_manifest(directory):
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        _fail(directory, "not an index directory (no %s); make one with search.py build" % MANIFEST)
    try:
        with open(path, encoding="utf-8") as manifest_file:
            manifest = json.load(manifest_file)
        version = int(manifest["format"])
    except (ValueError, KeyError, TypeError) as error:
        _fail(directory, "%s is damaged (%s: %s)" % (MANIFEST, type(error).__name__, error))
    if version > FORMAT_VERSION:
        _fail(directory, "written by a newer version of the suite (%s, index format %d); this one (%s) reads "
                         "index format %d: upgrade it" % (manifest.get("suite_version", "?"), version,
                                                          core.__version__, FORMAT_VERSION))
    missing = [key for key in ("model", "dim", "count", "parts") if key not in manifest]
    if missing:
        _fail(directory, "%s is damaged: it lacks %s" % (MANIFEST, ", ".join(missing)))
    return manifest


def load(directory):
    """Reads and checks an index: every file the manifest names must be there with the rows it says."""
    manifest = read_manifest(directory)
    features, paths, labels = [], [], []
    for part in manifest["parts"]:
        count = part["count"]
        feature_path = os.path.join(directory, part["features"])
        try:
            rows = np.load(feature_path, mmap_mode="r")
        except (OSError, ValueError) as error:
            _fail(directory, "incomplete: %s cannot be read (%s)" % (part["features"], error))
        if rows.dtype != np.float32 or rows.shape != (count, manifest["dim"]):
            _fail(directory, "incomplete: %s holds %s %s, %s says (%d, %d) float32"
                  % (part["features"], rows.dtype, rows.shape, MANIFEST, count, manifest["dim"]))
        part_paths = _read_lines(directory, part["paths"])
        if len(part_paths) != count:
            _fail(directory, "incomplete: %s lists %d paths, %s says %d"
                  % (part["paths"], len(part_paths), MANIFEST, count))
        part_labels = [None] * count
        if part.get("labels"):
            try:
                part_labels = np.load(os.path.join(directory, part["labels"])).tolist()
            except (OSError, ValueError) as error:
                _fail(directory, "incomplete: %s cannot be read (%s)" % (part["labels"], error))
            if len(part_labels) != count:
                _fail(directory, "incomplete: %s holds %d labels, %s says %d"
                      % (part["labels"], len(part_labels), MANIFEST, count))
        features.append(rows)
        paths += part_paths
        labels += part_labels
    if len(paths) != manifest["count"]:
        _fail(directory, "incomplete: its parts hold %d images, %s says %d" % (len(paths), MANIFEST,
                                                                               manifest["count"]))
    approximate = manifest.get("approximate")
    if approximate and not os.path.isfile(os.path.join(directory, approximate["file"])):
        _fail(directory, "incomplete: %s is missing" % approximate["file"])
    return Gallery(directory, manifest, features, paths, labels)


def _read_lines(directory, name):
    try:
        with open(os.path.join(directory, name), encoding="utf-8") as lines:
            text = lines.read()
    except (OSError, UnicodeDecodeError) as error:
        _fail(directory, "incomplete: %s cannot be read (%s)" % (name, error))
    return text.split("\n")[:-1]


class Writer:
    """One build or add: holds the lock, writes new files under fresh names, then commits a new manifest."""

    def __init__(self, directory):
        self.directory = directory
        self.token = secrets.token_hex(6)
        self.lock = None

    def __enter__(self):
        try:
            os.makedirs(self.directory, exist_ok=True)
            self.lock = os.open(os.path.join(self.directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            _fail(self.directory, "cannot write the index here (%s)" % error.strerror)
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self.lock, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(self.lock)
            _fail(self.directory, "another search.py build or add (pid %s) is writing this index; wait for it to end"
                  % owner)
        os.ftruncate(self.lock, 0)
        os.pwrite(self.lock, b"%d\n" % os.getpid(), 0)
        return self

    def __exit__(self, *exc_info):
        os.close(self.lock)

    def _staged(self, name, write):
        """Writes `name` through `write(binary file)`, complete or not at all (utility.atomic_output)."""
        with utility.atomic_output(os.path.join(self.directory, name), "wb") as handle:
            write(handle)
        return name

    def part(self, features, paths, labels):
        """Writes one part's files; returns its manifest entry."""
        prefix = "part-%s" % self.token
        for path in paths:
            if "\n" in path or "\r" in path:
                _fail(self.directory, "the image path %r has a line break, which the paths file cannot hold" % path)
        entry = {"count": len(paths), "labels": None}
        entry["features"] = self._staged(prefix + ".npy", lambda handle: np.save(handle, features.astype(np.float32)))
        entry["paths"] = self._staged(prefix + ".paths.txt", lambda handle: handle.write(
            "".join(path + "\n" for path in paths).encode("utf-8")))
        if labels is not None:
            entry["labels"] = self._staged(prefix + ".labels.npy",
                                           lambda handle: np.save(handle, np.asarray(labels, np.int64)))
        return entry

    def approximate(self, index_type, write, parameters):
        """Writes a faiss structure through `write(binary file)`; returns its manifest entry."""
        entry = dict(parameters, type=index_type)
        entry["file"] = self._staged("%s-%s.faiss" % (index_type, self.token), write)
        return entry

    def commit(self, model, dim, parts, approximate=None):
        """Makes the manifest naming `parts` (and `approximate`) the index, then removes files it does not name."""
        manifest = {"format": FORMAT_VERSION, "suite_version": core.__version__, "model": model, "dim": int(dim),
                    "count": sum(part["count"] for part in parts), "parts": parts, "approximate": approximate}
        self._staged(MANIFEST, lambda handle: _write_json(handle, manifest))
        named = {MANIFEST, LOCK_FILE} | {part[key] for part in parts for key in ("features", "paths", "labels")
                                         if part[key]}
        named |= {approximate["file"]} if approximate else set()
        for name in os.listdir(self.directory):
            if name not in named and (name.startswith("part-") or name.endswith(".faiss")
                                      or utility.is_staging_name(name)):
                os.remove(os.path.join(self.directory, name))
        return manifest


def _write_json(handle, value):
    handle.write(json.dumps(value, indent=1, sort_keys=True).encode("utf-8"))
