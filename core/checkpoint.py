"""Checkpoints: atomic save, exact resume, and the lock that keeps two runs out of one directory.

A checkpoint is a directory `model_save_dir/<model>/<iteration>/` holding `model.pdparams` (parameters and batch-norm
statistics), `model.pdopt` (momentum), `model.json` (the program) and `trainer_state.json` (iteration, learning-rate
schedule, flags, and the size and CRC-32 of each model file). It is written into a hidden sibling directory and
renamed into place only once complete, so a crash or Ctrl-C during a save leaves the previous checkpoint as it was; a
file truncated or corrupted later is caught on load, by name. A lock file in `model_save_dir/<model>` keeps a second
training run from saving into the same directory.
"""
import errno
import fcntl
import json
import os
import re
import shutil
import zlib

import paddle

from core.weights import CheckpointError, read_program_state  # noqa: F401  (CheckpointError: the error of both)

MODEL_PREFIX = "model"
STATE_FILE = "trainer_state.json"
CHECKSUMS_KEY = "checksums"
LOCK_FILE = "train.lock"
# --checkpoint=auto: the newest checkpoint in model_save_dir/<model>, if there is one.
AUTO = "auto"
# The hidden directory a save writes into before renaming it into place: `.<iteration>.saving-<pid>`.
STAGING_NAME = re.compile(r"\.(.+)\.saving-(\d+)$")


def _fsync_directory(directory):
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_tree(directory):
    """Flushes every file of `directory` and the directory itself, so the rename that follows publishes data."""
    for name in os.listdir(directory):
        with open(os.path.join(directory, name), "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_directory(directory)


def _file_checksum(path):
    checksum = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            checksum = zlib.crc32(chunk, checksum)
    return {"bytes": os.path.getsize(path), "crc32": checksum}


def verify_files(directory, checksums):
    """Compares each file with the size and CRC-32 recorded when the checkpoint was saved."""
    for name, saved in sorted(checksums.items()):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise CheckpointError("%s: missing from the checkpoint" % path)
        current = _file_checksum(path)
        if current["bytes"] != saved["bytes"]:
            raise CheckpointError("%s: cannot be read: %d bytes, but %d when saved; the file is truncated or was "
                                  "overwritten" % (path, current["bytes"], saved["bytes"]))
        if current["crc32"] != saved["crc32"]:
            raise CheckpointError("%s: cannot be read: its CRC-32 differs from when it was saved; the file is corrupted"
                                  % path)


def _staging_name(name, pid):
    return ".%s.saving-%d" % (name, pid)


def _retired_name(name, pid):
    return ".%s.replaced-%d" % (name, pid)


def save_checkpoint(program, directory, trainer_state):
    """Writes program's persistable variables and `trainer_state` to `directory`, atomically.

    A failure (a full disk, a read-only directory) is a CheckpointError naming `directory`; the half-written staging
    directory is removed and the checkpoints saved before are not touched.
    """
    parent, name = os.path.split(os.path.abspath(directory))
    staging = os.path.join(parent, _staging_name(name, os.getpid()))
    try:
        os.makedirs(parent, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        paddle.static.save(program, os.path.join(staging, MODEL_PREFIX))
        checksums = {file_name: _file_checksum(os.path.join(staging, file_name)) for file_name in os.listdir(staging)}
        with open(os.path.join(staging, STATE_FILE), "w") as state_file:
            state_file.write(json.dumps(dict(trainer_state, **{CHECKSUMS_KEY: checksums}), indent=1, sort_keys=True))
        _fsync_tree(staging)
        if os.path.exists(directory):
            retired = os.path.join(parent, _retired_name(name, os.getpid()))
            os.rename(directory, retired)
            os.rename(staging, directory)
            shutil.rmtree(retired)
        else:
            os.rename(staging, directory)
        _fsync_directory(parent)
    except Exception as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointError("%s: cannot be saved (%s: %s); the checkpoints saved before it are kept"
                              % (directory, type(error).__name__, error)) from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def newest_checkpoint(directory):
    """The newest complete checkpoint in `directory` (a `model_save_dir/<model>`), or None.

    Complete: a numbered directory holding its trainer state, which a save writes last, before renaming the directory
    into place. Hidden staging directories of interrupted saves and best/ are not numbered.
    """
    if not os.path.isdir(directory):
        return None
    numbered = [name for name in os.listdir(directory)
                if name.isdigit() and os.path.isfile(os.path.join(directory, name, STATE_FILE))]
    return os.path.join(directory, max(numbered, key=int)) if numbered else None


def find_checkpoint(path):
    """Accepts a checkpoint directory or a `model_save_dir/<model>` holding numbered ones (takes the newest)."""
    if os.path.isfile(os.path.join(path, STATE_FILE)):
        return path
    newest = newest_checkpoint(path)
    if newest is None:
        raise CheckpointError("%s: not a checkpoint (no %s in it or in a numbered sub-directory)" % (path, STATE_FILE))
    return newest


def read_trainer_state(directory):
    state_path = os.path.join(directory, STATE_FILE)
    try:
        with open(state_path) as state_file:
            trainer_state = json.load(state_file)
    except (OSError, ValueError) as error:
        raise CheckpointError("%s: cannot be read (%s)" % (state_path, error)) from None
    if not isinstance(trainer_state, dict):
        raise CheckpointError("%s: not a trainer state (a JSON object)" % state_path)
    return trainer_state


def load_checkpoint(program, path):
    """Restores every persistable of `program` from a checkpoint for an exact resume; returns its trainer state."""
    directory = find_checkpoint(path)
    trainer_state = read_trainer_state(directory)
    verify_files(directory, trainer_state.pop(CHECKSUMS_KEY, {}))
    saved = read_program_state(os.path.join(directory, MODEL_PREFIX))
    expected = {name: tuple(value.shape()) for name, value in program.state_dict().items()}
    missing = sorted(set(expected) - set(saved))
    wrong_shape = sorted(name for name in expected if name in saved and tuple(saved[name].shape) != expected[name])
    if missing or wrong_shape:
        raise CheckpointError("%s: does not match this model and loss (missing: %s; other shape: %s); resume with the "
                              "same --model, --embedding_size and loss flags, or start from it with "
                              "--pretrained_model" % (directory, missing[:5], wrong_shape[:5]))
    paddle.static.set_program_state(program, {name: saved[name] for name in expected})
    return trainer_state


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_interrupted_saves(directory, log=print):
    """Deletes the staging directories that killed runs left in `directory`, each as big as a checkpoint: a supervisor
    restarting a pre-empted run over and over would otherwise fill the disk with them.

    Only those of processes that no longer exist, and never one whose checkpoint was being replaced (a crash between
    the two renames of `save_checkpoint` leaves the old copy as `.N.replaced-<pid>` beside it: both are kept).
    """
    removed = []
    for name in sorted(os.listdir(directory)):
        match = STAGING_NAME.match(name)
        if not match or _process_exists(int(match.group(2))):
            continue
        if os.path.exists(os.path.join(directory, _retired_name(match.group(1), int(match.group(2))))):
            continue
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
        removed.append(name)
    if removed:
        log("removed %d unfinished saves of runs that were killed while saving: %s"
            % (len(removed), ", ".join(removed)))
    return removed


class SaveDirLock:
    """Keeps a second training run from saving checkpoints into the same `model_save_dir/<model>` as this one.

    A context manager holding a POSIX record lock (lockf) on LOCK_FILE, which contains the owner's pid for the
    messages. A record lock belongs to the process that took it: the reader workers it forks neither inherit nor keep
    it, so it is free the moment the training process dies, even while its workers wind down, and a run restarted at
    once after a `kill -9` takes it over (the dead pid in the file makes a warning). With `force`, a directory locked
    by a live run is used anyway.
    """

    def __init__(self, directory, force=False, log=print):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_FILE)
        self.force = force
        self.log = log
        self.descriptor = None

    def __enter__(self):
        try:
            os.makedirs(self.directory, exist_ok=True)
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise CheckpointError("%s: cannot create the lock file (%s)" % (self.path, error.strerror)) from None
        try:
            fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(descriptor)
                raise CheckpointError("%s: cannot be locked (%s)" % (self.path, error.strerror)) from None
            owner = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(descriptor)
            if not self.force:
                raise CheckpointError("%s: training run pid %s is saving checkpoints into this directory; wait for it "
                                      "to end, choose another --model_save_dir, or pass --force" % (self.path, owner))
            self.log("warning: --force: saving into %s, where training run pid %s is saving too"
                     % (self.directory, owner))
            return self
        stale_owner = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip()
        if stale_owner:
            self.log("warning: taking over %s from training run pid %s, which ended without releasing it"
                     % (self.path, stale_owner))
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, b"%d\n" % os.getpid(), 0)
        self.descriptor = descriptor
        remove_interrupted_saves(self.directory, self.log)
        return self

    def __exit__(self, *exc_info):
        if self.descriptor is None:
            return
        os.ftruncate(self.descriptor, 0)
        os.close(self.descriptor)  # releases the lock
        self.descriptor = None
