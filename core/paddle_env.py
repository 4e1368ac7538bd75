"""Sets up the process for Paddle, then imports it: the first thing every command does (through `import core`).

Importing paddle forces OMP_NUM_THREADS=1 when it is unset, which would make CPU training single-threaded, so the
thread counts default to all cores here, before the import. Paddle's C++ info and warning lines would drown the
one-line-per-step log; errors still show.
"""
import contextlib
import io
import os
import sys
import warnings

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_variable, str(os.cpu_count() or 1))
os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", category=UserWarning, module=r"paddle\.")


def _import_paddle_without_its_thread_warning():
    """Imports paddle once, dropping the two lines it prints to stderr whenever OMP_NUM_THREADS > 1 (set above on
    purpose; they warn about data parallelism and OpenBLAS builds, neither of which applies). Anything else it prints
    is passed on."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            import paddle  # noqa: F401
    finally:
        for line in captured.getvalue().splitlines(keepends=True):
            if not line.startswith(("WARNING: OMP_NUM_THREADS set to", "PLEASE USE OMP_NUM_THREADS WISELY")):
                sys.stderr.write(line)


_import_paddle_without_its_thread_warning()
