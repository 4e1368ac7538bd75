"""Reading weight files: Paddle's `.pdparams` / `.pdopt` and the Fluid per-variable files of the original's
ImageNet tars. Each reader returns `{variable name: ndarray}` or raises `CheckpointError` naming the file.
"""
import os
import pickletools
import struct

import numpy as np
import paddle


class CheckpointError(RuntimeError):
    """A checkpoint or weights file that cannot be used; the message names the file."""


def _first_unreadable(prefix):
    """Which of the pickles load_program_state reads is damaged; pickletools parses them without running them."""
    for path in (prefix + ".pdparams", prefix + ".pdopt"):
        if not os.path.isfile(path):
            continue
        try:
            with open(path, "rb") as handle:
                for _ in pickletools.genops(handle):
                    pass
        except Exception:
            return path
    return prefix + ".pdparams"


def read_program_state(prefix):
    try:
        state = paddle.static.load_program_state(prefix)
        # Files saved from a dynamic graph also hold a dict of structured names, which is no variable.
        return {name: value for name, value in state.items() if isinstance(value, np.ndarray)}
    except Exception as error:
        raise CheckpointError("%s: cannot be read (%s: %s); the file is truncated or not a Paddle checkpoint"
                              % (_first_unreadable(prefix), type(error).__name__, error)) from None


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
