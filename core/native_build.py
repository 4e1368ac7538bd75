"""Builds the suite's compiled kernels once per version, for every process that needs them.

Two kernels are compiled from source on first use: the training program's batch norm and Momentum update
(cpu_ops.py, a Paddle custom op) and the selection pass of the retrieval metrics and top-k search (select_kernel.py,
a plain C library).
Both are built here into a directory of their own under Paddle's extension directory (`PADDLE_EXTENSION_DIR`, by
default ~/.cache/paddle_extensions), named after the version of their source and flags:

* data-parallel ranks and parallel test processes start together: a file lock lets one compile while the others
  wait, then all load the same build;
* the build goes to a staging directory renamed when finished, so that a build killed halfway never looks finished;
  the next build clears what it left.

Where a kernel cannot be built (no compiler, no write access), its module warns once and the suite runs on the code
it replaces. `METRIC_LEARNING_CPU_OPS=0` in the environment keeps every kernel out, to compare or to rule them out.
"""
import contextlib
import fcntl
import glob
import hashlib
import os
import shutil
import sys
import time

import utility

SWITCH = "METRIC_LEARNING_CPU_OPS"


def switched_on():
    return os.environ.get(SWITCH, "1") != "0"


@contextlib.contextmanager
def switched(on):
    """Inside, the suite's kernels are used (where built) if `on`, else left out: the environment switch, restored
    after."""
    previous = os.environ.get(SWITCH)
    os.environ[SWITCH] = "1" if on else "0"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[SWITCH]
        else:
            os.environ[SWITCH] = previous


def extension_root():
    """Paddle's extension directory (as paddle.utils.cpp_extension.get_build_directory, without importing Paddle)."""
    return os.environ.get("PADDLE_EXTENSION_DIR") or os.path.join(os.path.expanduser("~/.cache"), "paddle_extensions")


def build_directory(name, sources, flags):
    """The directory of the build of the files `sources` with `flags` (lists of strings)."""
    digest = hashlib.sha256()
    for source in sources:
        with open(source, "rb") as text:
            digest.update(text.read())
    digest.update(" ".join(flags).encode())
    return os.path.join(extension_root(), "%s_%s" % (name, digest.hexdigest()[:12]))


def built(directory, compile_into, what):
    """`directory`, built first by `compile_into(staging_directory)` unless another process built it already.

    compile_into raises (e.g. `CompileError`) where the build fails. what: the kernels' name for the log line.
    """
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    with open(directory + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isdir(directory):
            for stale in glob.glob(glob.escape(directory) + ".partial-*"):  # under the lock: a killed build's
                shutil.rmtree(stale, ignore_errors=True)
            staging = "%s.partial-%d" % (directory, os.getpid())
            os.makedirs(staging)
            start = time.time()
            try:
                compile_into(staging)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            os.rename(staging, directory)
            utility.log("compiled %s in %.1f s (%s)" % (what, time.time() - start, directory))
    return directory


class CompileError(RuntimeError):
    """A compiler that failed: the message is its first error line."""

    @classmethod
    def from_output(cls, program, output, returncode):
        """The error of `program`, which printed `output` and exited with `returncode`."""
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        errors = [line for line in lines if "error:" in line]  # the compiler's or setuptools' own words
        return cls((errors or lines or ["%s exited with status %d" % (program, returncode)])[0 if errors else -1])


def warn_unbuilt(what, error, instead):
    """The one warning of a kernel that could not be built or loaded: why, and what runs instead."""
    reason = (str(error).strip().splitlines() or [""])[-1]
    print("warning: could not build %s (%s: %s); %s" % (what, type(error).__name__, reason, instead),
          file=sys.stderr, flush=True)
