"""Helpers shared by the tests that run the scripts: tiny flags, in-process runs, the one-line error, and scripts in
processes of their own with their reader workers and shared memory."""
import os
import queue
import re
import subprocess
import sys
import threading
import time

import pytest

import reader
from core import programs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model=ResNet18", "--image_shape=3,32,32", "--use_gpu=False"]
# Where the CPU has no AVX512, bfloat16 training stops at its flag (test_amp checks that) and the tests that train in
# bfloat16 skip.
CPU_BFLOAT16 = programs.cpu_runs_bfloat16()
needs_cpu_bfloat16 = pytest.mark.skipif(not CPU_BFLOAT16, reason=programs.NO_CPU_BFLOAT16)


def train_flags(data_dir, save_dir, loss_name="eml", iterations=2, **extra):
    flags = TINY + ["--data_dir=%s" % data_dir, "--model_save_dir=%s" % save_dir, "--loss_name=%s" % loss_name,
                    "--train_batch_size=6", "--test_batch_size=16", "--total_iter_num=%d" % iterations,
                    "--display_iter_step=1", "--test_iter_step=0", "--save_iter_step=1000", "--lr=0.01",
                    "--num_workers=1"]
    return flags + ["--%s=%s" % item for item in extra.items()]


def run_main(script, flags, capsys):
    """Runs a script's main() in this process; returns its exit code, stdout and stderr."""
    try:
        script.main(flags)
        code = 0
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def error_line(output):
    """The one `error: ...` line a failed script printed, after making sure there is no traceback."""
    lines = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


def list_paths(data_dir, list_name):
    return reader.read_image_list(os.path.join(data_dir, list_name)).paths


class ScriptProcess:
    """One of the scripts in a process group of its own, its output (stdout and stderr together) read line by line
    without ever blocking the test."""

    def __init__(self, script_name, flags):
        self.process = subprocess.Popen([sys.executable, os.path.join(ROOT, script_name)] + flags,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        self.lines = []
        self._queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.process.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if re.search(pattern, line):
                return
        self.process.kill()
        raise AssertionError("no %r in the output:\n%s" % (pattern, "".join(self.lines)))

    def wait_for_workers(self, count, timeout=120):
        """Returns the reader workers' pids once `count` of them run (the script is decoding images)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            workers = self.workers()
            if len(workers) >= count:
                return workers
            time.sleep(0.05)
        self.process.kill()
        raise AssertionError("no %d reader workers started" % count)

    def finish(self, timeout):
        """Waits for the exit; returns the exit code and the whole output."""
        try:
            self.process.wait(timeout)
        finally:
            self.process.kill()
        self.wait_for_end_of_output()
        return self.process.returncode, "".join(self.lines)

    def wait_for_end_of_output(self):
        while True:
            line = self._queue.get(timeout=60)
            if line is None:
                return
            self.lines.append(line)

    def workers(self):
        """The forked reader workers: children running the script's own command line (not the resource tracker)."""
        return [pid for pid in all_pids()
                if parent_pid(pid) == self.process.pid and command_line(pid) == command_line(self.process.pid)]

    def shared_memory(self):
        """The shared-memory files the script has mapped: the reader's batch slots."""
        try:
            with open("/proc/%d/maps" % self.process.pid) as maps:
                return sorted({line.split()[-1] for line in maps if "/dev/shm/" in line})
        except OSError:
            return []


def all_pids():
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def command_line(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as cmdline:
            return cmdline.read()
    except OSError:
        return None


def parent_pid(pid):
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def assert_gone(pids, within=60.0):
    """The processes `pids` end: within a second normally; the bound is for a loaded machine."""
    deadline = time.monotonic() + within
    while [pid for pid in pids if os.path.exists("/proc/%d" % pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if os.path.exists("/proc/%d" % pid)], "orphaned reader workers"
