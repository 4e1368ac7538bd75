"""Sets up the process for Paddle, then imports it: the first thing every command does (through `import core`).

Importing paddle forces OMP_NUM_THREADS=1 when it is unset, which would make CPU training single-threaded, so the
thread counts default to all cores here, before the import. Paddle's C++ info and warning lines would drown the
one-line-per-step log; errors still show. Ctrl-C and SIGTERM end the process at once until a script takes them over.
"""
import contextlib
import io
import os
import signal
import sys
import warnings

import utility

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


def _exit_at_once(signum, frame):
    utility.log("stopped by %s" % signal.Signals(signum).name)
    os._exit(128 + signum)


def _exit_at_once_on_signals():
    """Until a script takes over (utility.exit_on_signals), Ctrl-C or SIGTERM ends the process at once with its one
    line and 130 or 143: it is importing or parsing its flags, and has nothing open or written. Python's own Ctrl-C
    would print a KeyboardInterrupt traceback from deep inside some import, and Paddle's C++ handler answers SIGTERM,
    the way schedulers stop jobs, with a "FatalError ... C++ Traceback" report. Paddle's handlers of real crashes
    (SIGSEGV, SIGABRT, ...) stay. A signal the process was started with ignored stays ignored."""
    for signum in utility.STOP_SIGNALS:
        if signal.getsignal(signum) != signal.SIG_IGN:
            signal.signal(signum, _exit_at_once)


_exit_at_once_on_signals()
# Importing Paddle installs its SIGTERM handler half-way: the signals wait until ours are back in place.
_held_back = signal.pthread_sigmask(signal.SIG_BLOCK, utility.STOP_SIGNALS)
try:
    _import_paddle_without_its_thread_warning()
finally:
    _exit_at_once_on_signals()
    signal.pthread_sigmask(signal.SIG_SETMASK, _held_back)
