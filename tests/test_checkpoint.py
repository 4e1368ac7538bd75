"""Atomic checkpoints, exact restore, and pretrained weights from each supported source."""
import os
import pickle
import subprocess
import tarfile

import numpy as np
import paddle
import pytest

import checkpoint
from tiny_program import build_tiny_program

DOWNLOAD_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                               "download_pretrained.sh")


@pytest.fixture
def tiny_program():
    """The tiny network after one training step, so that velocities and statistics are not at their initial values."""
    tiny = build_tiny_program()
    tiny.train_step()
    return tiny.program, tiny.startup, tiny.executor


def values(program):
    return {name: np.array(tensor) for name, tensor in program.state_dict().items()}


def test_save_then_load_restores_every_variable_exactly(tiny_program, tmp_path):
    program, startup, executor = tiny_program
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


def test_find_checkpoint_takes_the_newest_numbered_directory(tiny_program, tmp_path):
    program = tiny_program[0]
    for iteration in (5, 40, 10):
        checkpoint.save_checkpoint(program, str(tmp_path / str(iteration)), {"iteration": iteration})
    os.makedirs(tmp_path / "99")  # incomplete: no trainer_state.json
    assert checkpoint.find_checkpoint(str(tmp_path)) == str(tmp_path / "40")
    with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint"):
        checkpoint.find_checkpoint(str(tmp_path / "99"))


def test_a_failed_save_keeps_the_previous_checkpoint(tiny_program, tmp_path, monkeypatch):
    program = tiny_program[0]
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


def test_a_truncated_checkpoint_is_an_error_naming_the_file(tiny_program, tmp_path):
    program = tiny_program[0]
    directory = checkpoint.save_checkpoint(program, str(tmp_path / "3"), {"iteration": 3})
    params = os.path.join(directory, "model.pdparams")
    with open(params, "r+b") as handle:
        handle.truncate(os.path.getsize(params) // 2)
    with pytest.raises(checkpoint.CheckpointError, match="model.pdparams: cannot be read"):
        checkpoint.load_checkpoint(program, directory)


def perturbed(program, scale=3.0):
    """The program's model weights times `scale`: distinguishable from whatever the program holds now."""
    return {name: value * scale for name, value in values(program).items()
            if not any(marker in name for marker in checkpoint.RUN_STATE_MARKERS)}


def assert_loaded(program, expected, names):
    current = values(program)
    for name in names:
        np.testing.assert_array_equal(current[name], expected[name], err_msg=name)


def test_pretrained_from_a_checkpoint_directory(tiny_program, tmp_path, capsys):
    program, startup, executor = tiny_program
    target = values(program)
    checkpoint.save_checkpoint(program, str(tmp_path / "ck" / "12"), {"iteration": 12})
    executor.run(startup)
    counts = checkpoint.load_pretrained(program, str(tmp_path / "ck"))  # the newest numbered one
    assert counts == {"loaded": 7, "missing": 0, "mismatched": 0, "unused": 0}
    assert_loaded(program, target, ["conv1_weights", "bn_conv1_mean", "fc_offset"])
    assert "loaded 7, missing 0, shape-mismatched 0, unused 0" in capsys.readouterr().out


def test_pretrained_from_a_pdparams_file_partial_and_mismatched(tiny_program, tmp_path, capsys):
    program = tiny_program[0]
    weights = perturbed(program)
    weights.pop("bn_conv1_variance")
    weights["fc_weights"] = np.zeros((5, 2), np.float32)  # another head size
    weights["fc_0.w_0"] = np.zeros((10, 10), np.float32)  # an ImageNet classifier this model lacks
    with open(tmp_path / "weights.pdparams", "wb") as handle:
        pickle.dump(weights, handle)
    before = values(program)
    counts = checkpoint.load_pretrained(program, str(tmp_path / "weights.pdparams"))
    assert counts == {"loaded": 5, "missing": 1, "mismatched": 1, "unused": 1}
    assert_loaded(program, weights, ["conv1_weights", "bn_conv1_mean", "fc_offset"])
    assert_loaded(program, before, ["fc_weights", "bn_conv1_variance"])
    output = capsys.readouterr().out
    assert "shape mismatch, kept initialised: fc_weights (5, 2) in file, (4, 2) in model" in output
    assert "missing, kept initialised: bn_conv1_variance" in output


def test_pretrained_from_fluid_per_variable_files(tiny_program, tmp_path):
    program, startup, executor = tiny_program
    target = values(program)
    directory = str(tmp_path / "ResNet50_pretrained")
    paddle.static.save_vars(executor, directory, program, vars=None)
    assert "conv1_weights" in os.listdir(directory)
    np.testing.assert_array_equal(checkpoint.read_fluid_variable(os.path.join(directory, "conv1_weights")),
                                  target["conv1_weights"])
    executor.run(startup)
    counts = checkpoint.load_pretrained(program, directory)
    assert counts["loaded"] == 7 and counts["missing"] == 0
    assert_loaded(program, target, ["conv1_weights", "bn_conv1_scale", "bn_conv1_variance", "fc_weights"])


def run_download(arguments, target, url):
    env = dict(os.environ, PRETRAINED_DIR=str(target), PRETRAINED_URL=url, PRETRAINED_CONNECT_TIMEOUT="2")
    return subprocess.run(["sh", DOWNLOAD_SCRIPT] + arguments, env=env, capture_output=True, text=True, timeout=60)


def test_downloaded_imagenet_tar_is_unpacked_and_loads_by_name(tiny_program, tmp_path):
    program, startup, executor = tiny_program
    target = values(program)
    paddle.static.save_vars(executor, str(tmp_path / "zoo" / "ResNet50_pretrained"), program, vars=None)
    with tarfile.open(tmp_path / "ResNet50_pretrained.tar", "w") as mirror:  # the model zoo's layout
        mirror.add(str(tmp_path / "zoo" / "ResNet50_pretrained"), "ResNet50_pretrained")
    url = "file://%s" % (tmp_path / "ResNet50_pretrained.tar")

    result = run_download(["ResNet50"], tmp_path / "pretrained", url)
    directory = tmp_path / "pretrained" / "ResNet50_pretrained"
    assert result.returncode == 0, result.stderr
    assert "--pretrained_model=%s" % directory in result.stdout
    assert sorted(os.listdir(tmp_path / "pretrained")) == ["ResNet50_pretrained", "ResNet50_pretrained.tar"]
    executor.run(startup)
    assert checkpoint.load_pretrained(program, str(directory))["loaded"] == 7
    assert_loaded(program, target, ["conv1_weights", "bn_conv1_variance", "fc_weights"])
    again = run_download(["ResNet50"], tmp_path / "pretrained", "http://127.0.0.1:9/unused.tar")
    assert again.returncode == 0 and "already there" in again.stdout


def test_pretrained_download_failures_are_clear(tmp_path):
    refused = run_download(["ResNet18"], tmp_path / "pretrained", "http://127.0.0.1:9/ResNet18_pretrained.tar")
    assert refused.returncode == 1
    assert "could not download a complete ResNet18_pretrained.tar" in refused.stderr
    assert os.listdir(tmp_path / "pretrained") == []
    with tarfile.open(tmp_path / "other.tar", "w") as wrong:
        (tmp_path / "notes.txt").write_text("not weights")
        wrong.add(str(tmp_path / "notes.txt"), "notes.txt")
    misnamed = run_download(["ResNet18"], tmp_path / "pretrained", "file://%s" % (tmp_path / "other.tar"))
    assert misnamed.returncode == 1
    assert "ResNet18_pretrained.tar holds no ResNet18_pretrained/ folder" in misnamed.stderr
    usage = run_download([], tmp_path / "pretrained", "unused")
    assert usage.returncode == 2 and "usage: sh download_pretrained.sh MODEL" in usage.stderr


def test_pretrained_errors(tiny_program, tmp_path):
    program = tiny_program[0]
    with pytest.raises(checkpoint.CheckpointError, match="absent: no such file"):
        checkpoint.load_pretrained(program, str(tmp_path / "absent"))
    with open(tmp_path / "other.pdparams", "wb") as handle:
        pickle.dump({"something_else": np.zeros(3, np.float32)}, handle)
    with pytest.raises(checkpoint.CheckpointError, match="no variable of this model found"):
        checkpoint.load_pretrained(program, str(tmp_path / "other.pdparams"))
    os.makedirs(tmp_path / "junk")
    (tmp_path / "junk" / "conv1_weights").write_bytes(b"not a tensor")
    with pytest.raises(checkpoint.CheckpointError, match="conv1_weights: not a Fluid variable file"):
        checkpoint.load_pretrained(program, str(tmp_path / "junk"))
