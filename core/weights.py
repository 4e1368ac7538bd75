"""Reading weight files: Paddle's `.pdparams` / `.pdopt` and the Fluid per-variable files of the original's
ImageNet tars. Each reader returns `{variable name: ndarray}` or raises `CheckpointError` naming the file.

`.pdparams` and `.pdopt` are pickles, and Python's pickle runs whatever function a file names. These are read by an
unpickler that builds only what weights are made of: NumPy arrays and scalars, numbers, strings, bytes, and lists,
tuples and dicts of them. A file naming anything else, such as `os.system`, is refused before that thing is even
looked up, so a model downloaded from anywhere cannot run code when it is loaded.
"""
import codecs
import collections
import os
import pickle
import struct

import numpy as np


class CheckpointError(RuntimeError):
    """A checkpoint or weights file that cannot be used; the message names the file."""


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a function or class that weights have no need of."""


def _numpy_pickle_functions():
    """The module-level functions NumPy's pickles call to rebuild arrays and scalars, asked of NumPy itself: their
    module moved from numpy.core to numpy._core in NumPy 2, and files of either kind exist."""
    array = np.zeros(2, np.float32)
    return {"_reconstruct": array.__reduce__()[0],  # pickle protocols 2 to 4
            "_frombuffer": array.__reduce_ex__(5)[0],  # protocol 5
            "scalar": np.float32(0).__reduce__()[0]}


def _encode_latin1(text, encoding):
    """codecs.encode for the one codec protocol-2 pickles spell bytes with: codecs.encode(text, "latin1")."""
    if encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode with the codec %r" % encoding)
    return codecs.encode(text, encoding)


def _allowed_globals():
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               # paddle.save writes a Tensor as tuple((name, array))
               ("builtins", "tuple"): tuple, ("_codecs", "encode"): _encode_latin1,
               ("collections", "OrderedDict"): collections.OrderedDict}
    for name, function in _numpy_pickle_functions().items():
        for package in ("numpy.core", "numpy._core"):
            allowed[(package + (".numeric" if name == "_frombuffer" else ".multiarray"), name)] = function
    return allowed


class WeightsUnpickler(pickle.Unpickler):
    """Unpickles arrays, numbers, strings, bytes and containers of them; refuses every other global."""

    ALLOWED = _allowed_globals()

    def find_class(self, module, name):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError("%s.%s" % (module, name)) from None

    def persistent_load(self, pid):
        raise UnsafePickleError("a persistent-id loader")


def load_pickle(path):
    """The object pickled in `path`, built by `WeightsUnpickler`; errors are CheckpointError naming the file."""
    try:
        with open(path, "rb") as handle:
            # latin1: Python 2 pickles of NumPy arrays hold their data as 8-bit strings
            return WeightsUnpickler(handle, encoding="latin1").load()
    except UnsafePickleError as error:
        raise CheckpointError("%s: refused: loading it would call %s, which no weights file needs; it was not made by "
                              "paddle.save or this suite and may be malicious" % (path, error)) from None
    except Exception as error:  # truncated or garbage files fail in many ways, all meaning the same thing here
        raise CheckpointError("%s: cannot be read (%s: %s); the file is truncated or not a Paddle checkpoint"
                              % (path, type(error).__name__, error)) from None


# paddle.static.save with pickle protocol 2 or 3 splits arrays past 4 GB into slices, listed under this key.
SLICED_ARRAYS_KEY = "UnpackBigParamInfor@@"  # (sic)


def _array_values(path, loaded):
    """`{name: ndarray}` from a loaded `.pdparams` / `.pdopt`: sliced arrays joined, Tensors (saved by paddle.save as
    (name, array) pairs) unwrapped, and the rest (a dynamic-graph file's structured-name table) left out."""
    if not isinstance(loaded, dict):
        raise CheckpointError("%s: not a dict of variables but a %s" % (path, type(loaded).__name__))
    loaded = dict(loaded)
    try:
        for name, info in loaded.pop(SLICED_ARRAYS_KEY, {}).items():
            loaded[name] = np.concatenate([loaded.pop(part) for part in info["slices"]]).reshape(info["OriginShape"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError("%s: cannot be read (its table of sliced arrays is wrong: %s: %s)"
                              % (path, type(error).__name__, error)) from None
    arrays = {}
    for name, value in loaded.items():
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], np.ndarray):
            value = value[1]
        if isinstance(value, np.ndarray):
            arrays[name] = value
    return arrays


def read_program_state(prefix):
    """`{name: ndarray}` of `prefix.pdparams` and, when it exists, `prefix.pdopt`, as paddle.static.save wrote them
    (paddle.save's dicts of arrays and Tensors load too)."""
    state = _array_values(prefix + ".pdparams", load_pickle(prefix + ".pdparams"))
    if os.path.isfile(prefix + ".pdopt"):
        state.update(_array_values(prefix + ".pdopt", load_pickle(prefix + ".pdopt")))
    return state


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
