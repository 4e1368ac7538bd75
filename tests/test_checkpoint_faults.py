"""Checkpoints under faults: a crash or a full disk at every point of a save, damaged files, a really full disk.

The previous checkpoint must stay loadable whatever happens during a save, and a damaged one must be refused on
load with an error naming the file.
"""
import builtins
import errno
import json
import os
import shutil
import subprocess

import numpy as np
import paddle
import pytest

from core import checkpoint, pretrained
import eval as eval_script
import train_elem
from script_tools import TINY, error_line, run_main, train_flags
from tiny_program import build_tiny_program


class SimulatedCrash(BaseException):
    """The process dies here: nothing after this point runs, clean-up included."""


class FaultyDisk:
    """Counts the file-system changes a save makes (opening a file to write, each write, makedirs, rename, fsync,
    rmtree) and injects a fault at change number `at`.

    "no space": that change fails with ENOSPC, as on a full disk, and everything else runs, clean-up included.
    "crash": that change and every later one raise SimulatedCrash before doing anything, so the disk is left as a
    process killed at that point leaves it.
    """

    def __init__(self, monkeypatch, fault=None, at=-1):
        self.fault, self.at, self.count = fault, at, 0
        disk, real_open = self, builtins.open

        class FaultyFile:
            def __init__(self, handle):
                self.handle = handle

            def write(self, data):
                return disk.change(lambda: self.handle.write(data))

            def __getattr__(self, name):
                return getattr(self.handle, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc_info):
                self.handle.close()

        def faulty_open(path, mode="r", *args, **kwargs):
            if not set(mode) & set("wax+"):
                return real_open(path, mode, *args, **kwargs)
            return FaultyFile(disk.change(lambda: real_open(path, mode, *args, **kwargs)))

        monkeypatch.setattr(builtins, "open", faulty_open)
        for module, name in ((os, "makedirs"), (os, "rename"), (os, "fsync"), (shutil, "rmtree")):
            real = getattr(module, name)
            monkeypatch.setattr(module, name,
                                lambda *args, real=real, **kwargs: disk.change(lambda: real(*args, **kwargs)))

    def change(self, action):
        self.count += 1
        if self.fault == "crash" and self.count > self.at:
            raise SimulatedCrash()
        if self.fault == "no space" and self.count == self.at + 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return action()


@pytest.fixture
def tiny_program():
    tiny = build_tiny_program()
    return tiny.program, tiny.train_step


def values(program):
    return {name: np.array(tensor) for name, tensor in program.state_dict().items()}


def file_bytes(directory):
    return {name: open(os.path.join(directory, name), "rb").read() for name in os.listdir(directory)}


@pytest.mark.parametrize("fault", ["crash", "no space"])
def test_a_fault_at_any_point_of_a_save_keeps_a_loadable_checkpoint(tiny_program, tmp_path, monkeypatch, fault):
    program, train_step = tiny_program
    parent = str(tmp_path / "ResNet18")
    train_step()
    checkpoint.save_checkpoint(program, os.path.join(parent, "7"), {"iteration": 7})
    saved = {7: values(program), 8: None}
    previous_files = file_bytes(os.path.join(parent, "7"))
    train_step()
    saved[8] = values(program)
    with monkeypatch.context() as patch:
        counter = FaultyDisk(patch)
        checkpoint.save_checkpoint(program, os.path.join(parent, "8"), {"iteration": 8})
    assert counter.count >= 12
    for at in range(counter.count):
        for name in os.listdir(parent):
            if name != "7":
                shutil.rmtree(os.path.join(parent, name))
        paddle.static.set_program_state(program, saved[8])
        with monkeypatch.context() as patch:
            FaultyDisk(patch, fault, at)
            with pytest.raises((SimulatedCrash, checkpoint.CheckpointError)) as caught:
                checkpoint.save_checkpoint(program, os.path.join(parent, "8"), {"iteration": 8})
        if fault == "no space":
            assert str(caught.value).startswith(os.path.join(parent, "8") + ": cannot be saved (OSError: [Errno 28] "
                                                "No space left on device); the checkpoints saved before it are kept")
            assert not [name for name in os.listdir(parent) if name.startswith(".")], "staging left behind"
        assert file_bytes(os.path.join(parent, "7")) == previous_files
        newest = checkpoint.find_checkpoint(parent)  # the previous checkpoint, or the new one if it was complete
        iteration = checkpoint.load_checkpoint(program, parent)["iteration"]
        assert newest == os.path.join(parent, str(iteration))
        for name, value in values(program).items():
            np.testing.assert_array_equal(value, saved[iteration][name], err_msg="%s after a fault at %d" % (name, at))


def flip_a_byte(path):
    with open(path, "r+b") as handle:
        handle.seek(os.path.getsize(path) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x10]))


def truncate(path):
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)


def rewrite_state(path, change):
    with open(path) as state_file:
        state = json.load(state_file)
    with open(path, "w") as state_file:
        json.dump(change(state), state_file)


CORRUPTIONS = {
    "truncated parameters": ("model.pdparams", truncate, "cannot be read: "),
    "a flipped byte in the parameters": ("model.pdparams", flip_a_byte, "CRC-32 differs"),
    "a flipped byte in the momentum": ("model.pdopt", flip_a_byte, "CRC-32 differs"),
    "empty momentum file": ("model.pdopt", lambda path: open(path, "wb").close(), "cannot be read: 0 bytes"),
    "missing momentum file": ("model.pdopt", os.remove, "missing from the checkpoint"),
    "garbage trainer state": ("trainer_state.json", lambda path: open(path, "wb").write(b"\x00{garbage"),
                              "cannot be read"),
    "trainer state not an object": ("trainer_state.json", lambda path: rewrite_state(path, lambda state: [state]),
                                    "not a trainer state"),
    "truncated momentum of a checkpoint saved without checksums": (
        "model.pdopt", lambda path: (rewrite_state(os.path.join(os.path.dirname(path), "trainer_state.json"),
                                                   lambda state: {"iteration": state["iteration"]}), truncate(path)),
        "cannot be read (UnpicklingError"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_damaged_checkpoint_is_an_error_naming_the_file(tiny_program, tmp_path, corruption):
    program, train_step = tiny_program
    train_step()
    directory = checkpoint.save_checkpoint(program, str(tmp_path / "3"), {"iteration": 3})
    file_name, damage, words = CORRUPTIONS[corruption]
    damage(os.path.join(directory, file_name))
    for load in (checkpoint.load_checkpoint, pretrained.load_pretrained):
        with pytest.raises(checkpoint.CheckpointError) as caught:
            load(program, directory)
        assert str(caught.value).startswith(os.path.join(directory, file_name) + ": "), str(caught.value)
        assert words in str(caught.value)


def test_a_corrupted_checkpoint_stops_resume_and_eval_naming_the_file(toy_root, tmp_path, capsys):
    flags = train_flags(toy_root, tmp_path, "softmax", 1, class_dim=12, num_workers=0)
    assert run_main(train_elem, flags, capsys)[0] == 0
    directory = str(tmp_path / "ResNet18" / "1")
    flip_a_byte(os.path.join(directory, "model.pdopt"))
    expected = ("error: %s/model.pdopt: cannot be read: its CRC-32 differs from when it was saved; the file is "
                "corrupted" % directory)
    code, out, err = run_main(train_elem, flags + ["--total_iter_num=2", "--checkpoint=%s" % directory], capsys)
    assert code == 1 and error_line(err) == expected
    code, out, err = run_main(eval_script, TINY + ["--data_dir=%s" % toy_root, "--pretrained_model=%s" % directory],
                              capsys)
    assert code == 1 and error_line(err) == expected


@pytest.fixture
def small_disk(tmp_path):
    """A 120 MB file system: room for one tiny ResNet18 checkpoint (90 MB), not for the staging copy of a second."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=120m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here: %s" % mounted.stderr.strip())
    try:
        yield str(mount_point)
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_is_reported_and_the_previous_checkpoint_kept(toy_root, small_disk, capsys):
    flags = train_flags(toy_root, small_disk, "softmax", 3, class_dim=12, save_iter_step=1, num_workers=0)
    code, out, err = run_main(train_elem, flags, capsys)
    assert code == 1
    saved_dir = os.path.join(small_disk, "ResNet18")
    message = error_line(err)
    assert message.startswith("error: %s/2: cannot be saved (OSError: [Errno 28] No space left on device" % saved_dir)
    assert message.endswith("; the checkpoints saved before it are kept")
    assert sorted(name for name in os.listdir(saved_dir) if not name.startswith("run_config")) == ["1", "train.lock"]
    paddle.enable_static()
    state = paddle.static.load_program_state(os.path.join(saved_dir, "1", "model"))
    assert checkpoint.find_checkpoint(saved_dir) == os.path.join(saved_dir, "1") and len(state) > 100
