"""Atomic checkpoints and exact restore."""
import os

import numpy as np
import paddle
import pytest

from core import checkpoint
from tiny_program import program_values as values


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
