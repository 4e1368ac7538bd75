"""Pretrained weights from each supported source, matched by name and shape; the model zoo's download script."""
import os
import pickle
import subprocess
import tarfile

import numpy as np
import paddle
import pytest

from core import checkpoint, pretrained, weights
from core.weights import CheckpointError
from tiny_program import program_values as values

DOWNLOAD_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                               "download_pretrained.sh")


def perturbed(program, scale=3.0):
    """The program's model weights times `scale`: distinguishable from whatever the program holds now."""
    return {name: value * scale for name, value in values(program).items()
            if not any(marker in name for marker in pretrained.RUN_STATE_MARKERS)}


def assert_loaded(program, expected, names):
    current = values(program)
    for name in names:
        np.testing.assert_array_equal(current[name], expected[name], err_msg=name)


def test_pretrained_from_a_checkpoint_directory(trained_tiny_program, tmp_path, capsys):
    program, startup, executor = trained_tiny_program
    target = values(program)
    checkpoint.save_checkpoint(program, str(tmp_path / "ck" / "12"), {"iteration": 12})
    executor.run(startup)
    counts = pretrained.load_pretrained(program, str(tmp_path / "ck"))  # the newest numbered one
    assert counts == {"loaded": 7, "missing": 0, "mismatched": 0, "unused": 0}
    assert_loaded(program, target, ["conv1_weights", "bn_conv1_mean", "fc_offset"])
    assert "loaded 7, missing 0, shape-mismatched 0, unused 0" in capsys.readouterr().out


def test_pretrained_from_a_pdparams_file_partial_and_mismatched(trained_tiny_program, tmp_path, capsys):
    program = trained_tiny_program[0]
    in_file = perturbed(program)
    in_file.pop("bn_conv1_variance")
    in_file["fc_weights"] = np.zeros((5, 2), np.float32)  # another head size
    in_file["fc_0.w_0"] = np.zeros((10, 10), np.float32)  # an ImageNet classifier this model lacks
    with open(tmp_path / "weights.pdparams", "wb") as handle:
        pickle.dump(in_file, handle)
    before = values(program)
    counts = pretrained.load_pretrained(program, str(tmp_path / "weights.pdparams"))
    assert counts == {"loaded": 5, "missing": 1, "mismatched": 1, "unused": 1}
    assert_loaded(program, in_file, ["conv1_weights", "bn_conv1_mean", "fc_offset"])
    assert_loaded(program, before, ["fc_weights", "bn_conv1_variance"])
    output = capsys.readouterr().out
    assert "shape mismatch, kept initialised: fc_weights (5, 2) in file, (4, 2) in model" in output
    assert "missing, kept initialised: bn_conv1_variance" in output


def test_pretrained_from_fluid_per_variable_files(trained_tiny_program, tmp_path):
    program, startup, executor = trained_tiny_program
    target = values(program)
    directory = str(tmp_path / "ResNet50_pretrained")
    paddle.static.save_vars(executor, directory, program, vars=None)
    assert "conv1_weights" in os.listdir(directory)
    np.testing.assert_array_equal(weights.read_fluid_variable(os.path.join(directory, "conv1_weights")),
                                  target["conv1_weights"])
    executor.run(startup)
    counts = pretrained.load_pretrained(program, directory)
    assert counts["loaded"] == 7 and counts["missing"] == 0
    assert_loaded(program, target, ["conv1_weights", "bn_conv1_scale", "bn_conv1_variance", "fc_weights"])


def run_download(arguments, target, url):
    env = dict(os.environ, PRETRAINED_DIR=str(target), PRETRAINED_URL=url, PRETRAINED_CONNECT_TIMEOUT="2")
    return subprocess.run(["sh", DOWNLOAD_SCRIPT] + arguments, env=env, capture_output=True, text=True, timeout=60)


def test_downloaded_imagenet_tar_is_unpacked_and_loads_by_name(trained_tiny_program, tmp_path):
    program, startup, executor = trained_tiny_program
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
    assert pretrained.load_pretrained(program, str(directory))["loaded"] == 7
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


def test_pretrained_errors(trained_tiny_program, tmp_path):
    program = trained_tiny_program[0]
    with pytest.raises(CheckpointError, match="absent: no such file"):
        pretrained.load_pretrained(program, str(tmp_path / "absent"))
    with open(tmp_path / "other.pdparams", "wb") as handle:
        pickle.dump({"something_else": np.zeros(3, np.float32)}, handle)
    with pytest.raises(CheckpointError, match="no variable of this model found"):
        pretrained.load_pretrained(program, str(tmp_path / "other.pdparams"))
    os.makedirs(tmp_path / "junk")
    (tmp_path / "junk" / "conv1_weights").write_bytes(b"not a tensor")
    with pytest.raises(CheckpointError, match="conv1_weights: not a Fluid variable file"):
        pretrained.load_pretrained(program, str(tmp_path / "junk"))
