"""Sets up the process for Paddle, then imports it: the first thing every command does (through `import core`).

Importing paddle forces OMP_NUM_THREADS=1 when it is unset, which would make CPU training single-threaded, so the
thread counts default to all cores here, before the import. Paddle's C++ info and warning lines would drown the
one-line-per-step log; errors still show. Ctrl-C and SIGTERM end a command at once until it takes them over.
"""
import atexit
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
# NumPy's OpenBLAS threads spin for about 0.1 s after each product before they sleep: between the metrics' blocks
# that burnt a core for the NumPy passes to compete with (bench/eval_speed.py, CPU time 1.17x the bare products
# against 1.09x when they sleep at once). Paddle's own kernels do not use it.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
# Paddle's CPU matrix products go through the MKL it ships (mklml), which on a non-Intel CPU takes its generic SSE
# path; this variable, which that MKL still reads, lets it take its AVX2 kernels on AMD CPUs (ignored on Intel's).
# The cross-batch memory's 30 x 512 x 8192 product and its gradient: 9.4 -> 3.2 ms on this machine's AMD EPYC.
os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
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


SUITE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _runs_a_command_of_this_suite():
    """Whether this process runs one of the suite's commands (train_elem.py, eval.py, ...: the scripts in its root), as
    opposed to a test, a notebook, a benchmark or a data script that imports the suite."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return bool(main_file) and os.path.dirname(os.path.abspath(main_file)) == SUITE_ROOT


RUNS_A_COMMAND = _runs_a_command_of_this_suite()


def _exit_at_once(signum, frame):
    utility.log("stopped by %s" % signal.Signals(signum).name)
    os._exit(128 + signum)


def _signal_handlers():
    """A command, until it takes the signals over (utility.exit_on_signals), ends at once on Ctrl-C or SIGTERM with its
    one line and 130 or 143: it is importing or parsing its flags and has nothing open or written, and Python's own
    Ctrl-C would print a KeyboardInterrupt traceback from deep inside some import. Anything else importing the suite
    keeps the handlers it has. Either way, not the one Paddle's import installs, which answers SIGTERM (the way
    schedulers stop jobs) with a "FatalError ... C++ Traceback" report. Paddle's handlers of real crashes (SIGSEGV,
    SIGABRT, ...) stay. A signal the process was started with ignored stays ignored."""
    current = {signum: signal.getsignal(signum) for signum in utility.STOP_SIGNALS}
    if RUNS_A_COMMAND:
        return {signum: _exit_at_once for signum, handler in current.items() if handler != signal.SIG_IGN}
    return {signum: handler for signum, handler in current.items() if handler is not None}


def _set(handlers):
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


_handlers = _signal_handlers()
_set(_handlers)
# Importing Paddle installs its SIGTERM handler half-way: the signals wait until the handlers are back in place.
_held_back = signal.pthread_sigmask(signal.SIG_BLOCK, utility.STOP_SIGNALS)
try:
    _import_paddle_without_its_thread_warning()
finally:
    _set(_handlers)
    signal.pthread_sigmask(signal.SIG_SETMASK, _held_back)


@atexit.register  # after Paddle's import: atexit runs it before Paddle's own clean-up
def _ignore_signals_once_a_command_has_finished():
    # Its work is done and written; a signal while Paddle tears down (up to a second) would only turn exit code 0
    # into a death by signal.
    if RUNS_A_COMMAND:
        _set({signum: signal.SIG_IGN for signum in utility.STOP_SIGNALS})
