"""Checkpoints (atomic save, exact resume) and loading pretrained weights by name.

A checkpoint is a directory `model_save_dir/<model>/<iteration>/` holding `model.pdparams` (parameters and batch-norm
statistics), `model.pdopt` (momentum), `model.json` (the program) and `trainer_state.json` (iteration, learning-rate
schedule, flags). It is written into a hidden sibling directory and renamed into place only once complete, so a
crash or Ctrl-C during a save leaves the previous checkpoint as it was.

Pretrained weights come from any of three sources, matched by variable name and shape:
- a checkpoint directory of this suite (train_elem's output feeding train_pair);
- a Paddle `.pdparams` file (or its prefix);
- a directory of per-variable files in the Fluid `save_persistables` format, which is what the original's
  ImageNet `*_pretrained.tar` files unpack to.
"""
import json
import os
import shutil
import struct

import numpy as np
import paddle

MODEL_PREFIX = "model"
STATE_FILE = "trainer_state.json"
# Optimizer state and the learning rate belong to a run, not to a model: never taken from pretrained weights.
RUN_STATE_MARKERS = ("_velocity_", "learning_rate_")


class CheckpointError(RuntimeError):
    """A checkpoint or weights file that cannot be used; the message names the file."""


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


def save_checkpoint(program, directory, trainer_state):
    """Writes program's persistable variables and `trainer_state` to `directory`, atomically."""
    parent, name = os.path.split(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, ".%s.saving-%d" % (name, os.getpid()))
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        paddle.static.save(program, os.path.join(staging, MODEL_PREFIX))
        with open(os.path.join(staging, STATE_FILE), "w") as state_file:
            json.dump(trainer_state, state_file, indent=1, sort_keys=True)
        _fsync_tree(staging)
        if os.path.exists(directory):
            retired = os.path.join(parent, ".%s.replaced-%d" % (name, os.getpid()))
            os.rename(directory, retired)
            os.rename(staging, directory)
            shutil.rmtree(retired)
        else:
            os.rename(staging, directory)
        _fsync_directory(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def find_checkpoint(path):
    """Accepts a checkpoint directory or a `model_save_dir/<model>` holding numbered ones (takes the newest)."""
    if os.path.isfile(os.path.join(path, STATE_FILE)):
        return path
    if os.path.isdir(path):
        numbered = [name for name in os.listdir(path)
                    if name.isdigit() and os.path.isfile(os.path.join(path, name, STATE_FILE))]
        if numbered:
            return os.path.join(path, max(numbered, key=int))
    raise CheckpointError("%s: not a checkpoint (no %s in it or in a numbered sub-directory)" % (path, STATE_FILE))


def _read_program_state(prefix):
    try:
        return paddle.static.load_program_state(prefix)
    except Exception as error:
        raise CheckpointError("%s.pdparams: cannot be read (%s: %s); the file is truncated or not a Paddle "
                              "checkpoint" % (prefix, type(error).__name__, error)) from None


def load_checkpoint(program, path):
    """Restores every persistable of `program` from a checkpoint for an exact resume; returns its trainer state."""
    directory = find_checkpoint(path)
    state_path = os.path.join(directory, STATE_FILE)
    try:
        with open(state_path) as state_file:
            trainer_state = json.load(state_file)
    except (OSError, ValueError) as error:
        raise CheckpointError("%s: cannot be read (%s)" % (state_path, error)) from None
    saved = _read_program_state(os.path.join(directory, MODEL_PREFIX))
    expected = {name: tuple(value.shape()) for name, value in program.state_dict().items()}
    missing = sorted(set(expected) - set(saved))
    wrong_shape = sorted(name for name in expected if name in saved and tuple(saved[name].shape) != expected[name])
    if missing or wrong_shape:
        raise CheckpointError("%s: does not match this model and loss (missing: %s; other shape: %s); resume with the "
                              "same --model, --embedding_size and loss flags, or start from it with "
                              "--pretrained_model" % (directory, missing[:5], wrong_shape[:5]))
    paddle.static.set_program_state(program, {name: saved[name] for name in expected})
    return trainer_state


# Fluid's VarType enum values for the dtypes a saved tensor can have.
FLUID_DTYPES = {0: np.bool_, 1: np.int16, 2: np.int32, 3: np.int64, 4: np.float16, 5: np.float32, 6: np.float64,
                20: np.uint8, 21: np.int8}


def read_fluid_variable(path):
    """Reads one file of Fluid's per-variable format: versions, LoD, a TensorDesc protobuf, then raw data."""
    from paddle.base.proto import framework_pb2
    with open(path, "rb") as handle:
        blob = handle.read()
    try:
        offset = 4  # uint32 format version
        (lod_levels,) = struct.unpack_from("<Q", blob, offset)
        offset += 8
        for _ in range(lod_levels):
            (level_bytes,) = struct.unpack_from("<Q", blob, offset)
            offset += 8 + level_bytes
        offset += 4  # uint32 tensor version
        (desc_size,) = struct.unpack_from("<i", blob, offset)
        offset += 4
        desc = framework_pb2.VarType.TensorDesc()
        desc.ParseFromString(blob[offset:offset + desc_size])
        offset += desc_size
        dtype = np.dtype(FLUID_DTYPES[desc.data_type])
        shape = tuple(desc.dims)
        count = int(np.prod(shape)) if shape else 1
        if len(blob) - offset != count * dtype.itemsize:
            raise ValueError("%d data bytes for shape %s of %s" % (len(blob) - offset, shape, dtype))
        return np.frombuffer(blob, dtype=dtype, count=count, offset=offset).reshape(shape).copy()
    except Exception as error:  # struct, protobuf, dtype and size errors all mean the same thing here
        raise CheckpointError("%s: not a Fluid variable file (%s)" % (path, error)) from None


def read_weights(path):
    """Returns `{name: ndarray}` from any supported source and a short description of what it was."""
    if not os.path.exists(path) and not os.path.exists(path + ".pdparams"):
        raise CheckpointError("%s: no such file or directory" % path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, MODEL_PREFIX + ".pdparams")):
        return _read_program_state(os.path.join(path, MODEL_PREFIX)), "checkpoint directory"
    if os.path.isdir(path) and any(name.isdigit() for name in os.listdir(path)):
        return read_weights(find_checkpoint(path))
    if os.path.isdir(path):
        weights = {}
        for name in sorted(os.listdir(path)):
            file_path = os.path.join(path, name)
            if os.path.isfile(file_path) and not name.startswith("."):
                weights[name] = read_fluid_variable(file_path)
        return weights, "directory of Fluid variable files"
    prefix = path[:-len(".pdparams")] if path.endswith(".pdparams") else path
    return _read_program_state(prefix), ".pdparams file"


def load_pretrained(program, path, log=print):
    """Loads every model variable of `program` found in `path` with the same name and shape.

    Prints how many were loaded, missing, of another shape and unused; loading nothing is an error.
    """
    weights, kind = read_weights(path)
    expected = {name: tuple(value.shape()) for name, value in program.state_dict().items()
                if not any(marker in name for marker in RUN_STATE_MARKERS)}
    loaded = {name: weights[name] for name in expected
              if name in weights and tuple(weights[name].shape) == expected[name]}
    wrong_shape = sorted(name for name in expected if name in weights and name not in loaded)
    missing = sorted(name for name in expected if name not in weights)
    unused = sorted(name for name in weights if name not in expected and
                    not any(marker in name for marker in RUN_STATE_MARKERS))
    if not loaded:
        raise CheckpointError("%s: no variable of this model found in the %s (%d variables in it, e.g. %s)"
                              % (path, kind, len(weights), sorted(weights)[:3]))
    paddle.static.set_program_state(program, loaded)
    log("pretrained %s (%s): loaded %d, missing %d, shape-mismatched %d, unused %d"
        % (path, kind, len(loaded), len(missing), len(wrong_shape), len(unused)))
    for name in wrong_shape:
        log("  shape mismatch, kept initialised: %s %s in file, %s in model"
            % (name, tuple(weights[name].shape), expected[name]))
    if missing:
        log("  missing, kept initialised: %s" % ", ".join(missing[:10] + (["..."] if len(missing) > 10 else [])))
    return {"loaded": len(loaded), "missing": len(missing), "mismatched": len(wrong_shape), "unused": len(unused)}
