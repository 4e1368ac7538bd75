"""What a training run records besides its text log: its configuration as JSON, and scalars for VisualDL.

`run_config_<start iteration>.json` sits next to the run's checkpoints (model_save_dir/<model>/): every flag, the
Paddle version and the source's git commit, so a checkpoint can always be traced to the code and settings that made
it. A resumed run writes its own file (run_config_1234.json) instead of overwriting the first run's.
"""
import json
import os
import sys

import paddle

import utility

SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_text(path):
    try:
        with open(path) as text_file:
            return text_file.read().strip()
    except OSError:
        return None


def git_commit(source_dir=SOURCE_DIR):
    """The commit checked out in `source_dir`'s repository, read from .git itself (git need not be installed).

    None outside a repository or when the reference cannot be resolved.
    """
    git_dir = os.path.join(source_dir, ".git")
    while not os.path.exists(git_dir):
        parent = os.path.dirname(source_dir)
        if parent == source_dir:
            return None
        source_dir, git_dir = parent, os.path.join(parent, ".git")
    if os.path.isfile(git_dir):  # a worktree or submodule: ".git" holds "gitdir: <path>"
        pointer = _read_text(git_dir) or ""
        if not pointer.startswith("gitdir:"):
            return None
        git_dir = os.path.join(source_dir, pointer[len("gitdir:"):].strip())
    head = _read_text(os.path.join(git_dir, "HEAD"))
    if not head:
        return None
    if not head.startswith("ref:"):
        return head  # a detached HEAD holds the commit itself
    ref = head[len("ref:"):].strip()
    loose = _read_text(os.path.join(git_dir, *ref.split("/")))
    if loose:
        return loose
    for line in (_read_text(os.path.join(git_dir, "packed-refs")) or "").splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1] == ref:
            return fields[0]
    return None


def run_config(args, start_iteration):
    return {"flags": vars(args), "start_iteration": start_iteration, "command": sys.argv,
            "paddle_version": paddle.__version__, "paddle_commit": paddle.version.commit,
            "python_version": sys.version.split()[0], "git_commit": git_commit(), "started": utility.fmt_time()}


def write_run_config(directory, args, start_iteration):
    """Writes run_config_<start_iteration>.json into `directory`, complete or not at all; returns its path."""
    path = os.path.join(directory, "run_config_%d.json" % start_iteration)
    with utility.atomic_output(path) as config_file:
        json.dump(run_config(args, start_iteration), config_file, indent=1, sort_keys=True, default=str)
    return path


class ScalarLog:
    """Scalars (loss, learning rate, test recall) written through VisualDL under `log_dir`; no-ops without it.

    VisualDL is optional: only asking for it with --vdl_log_dir requires it to be installed.
    """

    def __init__(self, log_dir):
        self.writer = None
        if not log_dir:
            return
        try:
            from visualdl import LogWriter
        except ImportError:
            utility.flag_error("vdl_log_dir", "needs VisualDL, which is not installed: pip install visualdl "
                               "(or leave out --vdl_log_dir)")
        self.writer = LogWriter(logdir=log_dir)

    def add(self, step, scalars):
        if self.writer is None:
            return
        for tag, value in scalars.items():
            self.writer.add_scalar(tag=tag, step=step, value=float(value))

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
