"""Atomic checkpoints and exact restore; the save-directory lock."""
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import paddle
import pytest

from core import checkpoint
from script_tools import ROOT
from tiny_program import program_values as values


def session_of(pid):
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def test_save_then_load_restores_every_variable_exactly(trained_tiny_program, tmp_path):
    program, startup, executor = trained_tiny_program
    saved = values(program)
    directory = checkpoint.save_checkpoint(program, str(tmp_path / "ResNet" / "5"), {"iteration": 5})
    assert sorted(os.listdir(directory)) == ["model.json", "model.pdopt", "model.pdparams", "trainer_state.json"]
    executor.run(startup)  # re-initialise everything
    assert not np.array_equal(values(program)["conv1_weights"], saved["conv1_weights"])
    assert checkpoint.load_checkpoint(program, directory) == {"iteration": 5}
    restored = values(program)
    assert any("_velocity_" in name for name in restored)
    for name, value in saved.items():
        np.testing.assert_array_equal(restored[name], value, err_msg=name)


def test_find_checkpoint_takes_the_newest_numbered_directory(trained_tiny_program, tmp_path):
    program = trained_tiny_program[0]
    for iteration in (5, 40, 10):
        checkpoint.save_checkpoint(program, str(tmp_path / str(iteration)), {"iteration": iteration})
    os.makedirs(tmp_path / "99")  # incomplete: no trainer_state.json
    assert checkpoint.find_checkpoint(str(tmp_path)) == str(tmp_path / "40")
    with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint"):
        checkpoint.find_checkpoint(str(tmp_path / "99"))


def test_a_failed_save_keeps_the_previous_checkpoint(trained_tiny_program, tmp_path, monkeypatch):
    program = trained_tiny_program[0]
    target = str(tmp_path / "7")
    checkpoint.save_checkpoint(program, target, {"iteration": 7})
    before = {name: open(os.path.join(target, name), "rb").read() for name in os.listdir(target)}

    def failing_save(program, prefix):
        with open(prefix + ".pdparams", "wb") as half_written:
            half_written.write(b"\x80\x04half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(paddle.static, "save", failing_save)
    with pytest.raises(checkpoint.CheckpointError, match="No space left"):
        checkpoint.save_checkpoint(program, target, {"iteration": 8})
    assert {name: open(os.path.join(target, name), "rb").read() for name in os.listdir(target)} == before
    assert os.listdir(tmp_path) == ["7"]  # no staging directory left behind


def test_a_truncated_checkpoint_is_an_error_naming_the_file(trained_tiny_program, tmp_path):
    program = trained_tiny_program[0]
    directory = checkpoint.save_checkpoint(program, str(tmp_path / "3"), {"iteration": 3})
    params = os.path.join(directory, "model.pdparams")
    with open(params, "r+b") as handle:
        handle.truncate(os.path.getsize(params) // 2)
    with pytest.raises(checkpoint.CheckpointError, match="model.pdparams: cannot be read"):
        checkpoint.load_checkpoint(program, directory)


def test_the_newest_complete_checkpoint_ignores_staging_best_and_incomplete_directories(trained_tiny_program,
                                                                                         tmp_path):
    program = trained_tiny_program[0]
    assert checkpoint.newest_checkpoint(str(tmp_path / "none")) is None
    assert checkpoint.newest_checkpoint(str(tmp_path)) is None
    for name in ("3", "12", "best"):
        checkpoint.save_checkpoint(program, str(tmp_path / name), {"iteration": 0})
    shutil.copytree(tmp_path / "12", tmp_path / ".13.saving-999999")  # a save cut short, complete inside or not
    os.makedirs(tmp_path / "20")  # no trainer_state.json
    assert checkpoint.newest_checkpoint(str(tmp_path)) == str(tmp_path / "12")


def dead_pid():
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_taking_the_lock_removes_the_saves_killed_runs_left_half_done(tmp_path):
    dead = dead_pid()
    for name in (".5.saving-%d" % dead, ".6.saving-%d" % os.getpid(), ".7.saving-%d" % dead,
                 ".7.replaced-%d" % dead, "5"):
        os.makedirs(tmp_path / name)
    messages = []
    with checkpoint.SaveDirLock(str(tmp_path), log=messages.append):
        pass
    # A live process's save and both halves of a replacement cut short between its renames are kept.
    assert sorted(os.listdir(tmp_path)) == sorted([".6.saving-%d" % os.getpid(), ".7.saving-%d" % dead,
                                                   ".7.replaced-%d" % dead, "5", checkpoint.LOCK_FILE])
    assert messages == ["removed 1 unfinished saves of runs that were killed while saving: .5.saving-%d" % dead]


def test_the_lock_is_the_training_process_alone_not_its_forked_children(tmp_path):
    """A POSIX record lock is not inherited: a child forked while the parent holds it (as reader workers are), still
    running after the parent died, leaves the directory free."""
    script = ("import os, sys, time; sys.path.insert(0, %r); from core import checkpoint\n"
              "lock = checkpoint.SaveDirLock(%r).__enter__()\n"
              "if os.fork() == 0:\n    time.sleep(30); os._exit(0)\n"
              "print('locked', flush=True); time.sleep(30)\n" % (ROOT, str(tmp_path)))
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(checkpoint.CheckpointError, match="training run pid %d is saving" % holder.pid):
            checkpoint.SaveDirLock(str(tmp_path)).__enter__()
        holder.kill()
        holder.wait()
        child = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if session_of(pid) == holder.pid]
        assert len(child) == 1, "the forked child outlives its parent"
        messages = []
        with checkpoint.SaveDirLock(str(tmp_path), log=messages.append):
            assert messages == ["warning: taking over %s from training run pid %d, which ended without releasing it"
                                % (tmp_path / checkpoint.LOCK_FILE, holder.pid)]
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
