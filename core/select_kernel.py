"""The selection pass of the retrieval metrics and top-k search in C (core/select_kernel.c), on every core.

On the CPU the metrics' time beyond the matrix product is the passes over each block of similarities, bound by
memory: NumPy's reads every row from memory once for its group maxima and once more to count and extract (a row of
the SOP test set is 240 KB, the block hundreds of MB). The C pass reads a row from memory once, into the core's cache,
and does both there; row ranges run on as many threads as the BLAS (ctypes lets go of the GIL while C runs). At SOP
scale on 2 cores it cut the metrics' wall time beyond the product from 10-16% to 4-6% (docs/benchmarks.md).

The library is compiled with the C compiler (`CC`, by default cc; about 1 s) on first use, as native_build.py builds the
suite's kernels. Where it cannot be built, one warning says why and the metrics and search run on NumPy's passes:
the same results, slower. `METRIC_LEARNING_CPU_OPS=0` keeps it out.
"""
import concurrent.futures
import ctypes
import os
import shlex
import subprocess

import numpy as np

from core import native_build

NAME = "metric_learning_select"
WHAT = "the C selection pass"
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "select_kernel.c")
# Without -fno-trapping-math GCC keeps the comparisons out of the vectorised loops.
COMPILE_FLAGS = ["-O3", "-fno-trapping-math", "-fPIC", "-shared"]

_library = None
_load_failed = False


def _compiler():
    return shlex.split(os.environ.get("CC") or "cc")


def _compile(staging):
    command = _compiler() + COMPILE_FLAGS + [SOURCE, "-o", os.path.join(staging, NAME + ".so")]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except OSError as error:  # no such compiler
        raise native_build.CompileError("%s: %s" % (command[0], error.strerror)) from None
    if done.returncode != 0:
        raise native_build.CompileError.from_output(command[0], done.stdout + done.stderr, done.returncode)


def load():
    """The C library, compiled on first use; None where it is switched off, or (after one warning) cannot be built."""
    global _library, _load_failed
    if not native_build.switched_on():
        return None
    if _library is not None or _load_failed:
        return _library
    try:
        flags = _compiler() + COMPILE_FLAGS
        directory = native_build.built(native_build.build_directory(NAME, [SOURCE], flags), _compile, WHAT)
        library = ctypes.CDLL(os.path.join(directory, NAME + ".so"))
    except Exception as error:  # a missing compiler or write access: NumPy's passes instead
        _load_failed = True
        native_build.warn_unbuilt(WHAT, error, "the retrieval metrics and top-k search run on NumPy's passes")
        return None
    array = np.ctypeslib.ndpointer
    int64, float32 = array(np.int64, flags="C"), array(np.float32, flags="C")
    library.select_rows.restype = ctypes.c_int
    library.select_rows.argtypes = ([float32] + [ctypes.c_int64] * 3 + [int64, float32, float32, int64, ctypes.c_int64]
                                    + [float32, int64, int64, int64, float32])
    _library = library
    return _library


def threads():
    """As many as the BLAS uses for the product (core/paddle_env.py sets it to the cores)."""
    return max(1, int(os.environ.get("OPENBLAS_NUM_THREADS") or os.cpu_count() or 1))


def select(s, width, num, t_first, t_last, caps):
    """similarity.select_by_passes for every row of `s` (a C-contiguous rows x padded float32 block; padded a multiple
    of width), the bound over whole rows; None where the library is not loaded."""
    library = load()
    if library is None:
        return None
    rows, padded = s.shape
    if padded % width or int(np.max(num, initial=0)) > width:
        raise ValueError("select: %d columns in groups of %d, for up to %d items a row" % (padded, width, np.max(num)))
    num, caps = np.ascontiguousarray(num, np.int64), np.ascontiguousarray(caps, np.int64)
    t_first, t_last = np.ascontiguousarray(t_first, np.float32), np.ascontiguousarray(t_last, np.float32)
    stride = max(int(caps.max()), 1)
    tau, count, found = np.empty(rows, np.float32), np.empty(rows, np.int64), np.empty(rows, np.int64)
    col, value = np.empty((rows, stride), np.int64), np.empty((rows, stride), np.float32)

    def select_range(first, last):
        part = slice(first, last)
        if library.select_rows(s[part], last - first, padded, width, num[part], t_first[part], t_last[part],
                               caps[part], stride, tau[part], count[part], found[part], col[part], value[part]):
            raise MemoryError(WHAT + ": out of memory")

    bounds = np.linspace(0, rows, min(threads(), rows) + 1).astype(int)
    with concurrent.futures.ThreadPoolExecutor(len(bounds) - 1) as pool:
        list(pool.map(select_range, bounds[:-1], bounds[1:]))
    stored = np.arange(stride) < found[:, None]
    return tau, count, np.nonzero(stored)[0], col[stored], value[stored]
