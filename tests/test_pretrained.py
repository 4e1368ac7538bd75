"""Pretrained weights from each supported source, matched by name and shape; the model zoo's download script."""
import os
import pickle
import subprocess
import tarfile

import numpy as np
import paddle
import pytest

import losses
from core import checkpoint, pretrained, programs, weights
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
    assert "(checkpoint directory, iteration 12): loaded 7, missing 0, shape-mismatched 0, unused 0" in \
        capsys.readouterr().out


def test_a_folder_one_level_too_high_is_answered_with_the_folder_inside(trained_tiny_program, tmp_path):
    program = trained_tiny_program[0]
    checkpoint.save_checkpoint(program, str(tmp_path / "output" / "ResNet50" / "12"), {"iteration": 12})
    with pytest.raises(CheckpointError) as caught:
        pretrained.load_pretrained(program, str(tmp_path / "output"))
    assert str(caught.value) == ("%s: holds no weights (no checkpoint, .pdparams file or Fluid variable file); pass "
                                 "the folder inside that holds them: %s" % (tmp_path / "output",
                                                                            tmp_path / "output" / "ResNet50"))


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


# ---------------------------------------------------------------- models the original suite saved

def suite_to_original(state, embedding):
    """This suite's names → the original's automatic ones for the head and loss parameters."""
    classifier = "fc_1" if embedding else "fc_0"
    names = {"embedding_fc_weights": "fc_0.w_0", "embedding_fc_offset": "fc_0.b_0",
             "softmax_fc_weights": classifier + ".w_0", "softmax_fc_offset": classifier + ".b_0",
             "arcmargin_weight_norm": "weight_norm.w_0"}
    return {names.get(name, name): value for name, value in state.items()}


def write_fluid_files(directory, state):
    """The 2019 layout: one Fluid variable file per variable, as fluid.io.save_persistables wrote it."""
    paddle.enable_static()
    program, startup, scope = paddle.static.Program(), paddle.static.Program(), paddle.static.Scope()
    with paddle.static.scope_guard(scope), paddle.static.program_guard(program, startup):
        variables = [paddle.static.create_parameter(list(value.shape), str(value.dtype), name=name)
                     for name, value in state.items()]
        executor = paddle.static.Executor(paddle.CPUPlace())
        executor.run(startup)
        for name, value in state.items():
            scope.find_var(name).get_tensor().set(value, paddle.CPUPlace())
        paddle.static.save_vars(executor, directory, program, vars=variables)


def write_2020_save(prefix, parameters, optimizer_state):
    """The 2020 layout: fluid.save's <iter>.pdparams and .pdopt (protocol-2 pickles) beside an empty <iter>/."""
    os.makedirs(prefix)
    with open(prefix + ".pdparams", "wb") as handle:
        pickle.dump(parameters, handle, protocol=2)
    with open(prefix + ".pdopt", "wb") as handle:
        pickle.dump(optimizer_state, handle, protocol=2)


def train_program_state(loss, embedding, seed):
    """(train program, feature program, its executor, the trained-looking weights) of ResNet18 with `loss`."""
    paddle.enable_static()
    paddle.seed(seed)
    train = programs.build_train_program("ResNet18", embedding, (3, 32, 32), loss, 0.01, seed=seed)
    features = programs.build_feature_program("ResNet18", embedding, (3, 32, 32))
    executor = paddle.static.Executor(paddle.CPUPlace())
    executor.run(train.startup)
    return train, features, executor, values(train.program)


@pytest.mark.parametrize("layout, loss_name, embedding", [
    ("2019 Fluid files", "arcmargin", 8), ("2019 Fluid files", "softmax", 0), ("2020 <iter>/ folder", "softmax", 8),
    ("2020 <iter>.pdparams", "softmax", 0), ("2020 model_save_dir/<model>", "arcmargin", 8)])
def test_a_model_the_original_saved_loads_every_variable(tmp_path, capsys, layout, loss_name, embedding):
    loss = losses.LOSSES[loss_name](class_dim=5)
    images = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    with paddle.static.scope_guard(paddle.static.Scope()):
        train, features, executor, saved = train_program_state(loss, embedding, seed=1)
        reference = executor.run(features.program, feed={"image": images}, fetch_list=[features.feature])[0]
    run_state = {name for name in saved if any(marker in name for marker in pretrained.RUN_STATE_MARKERS)}
    model = {name: value for name, value in saved.items() if name not in run_state}
    original = suite_to_original(model, embedding)
    assert set(original) != set(model)  # some names do differ
    save_dir = tmp_path / "output" / "ResNet18"
    if layout.startswith("2019"):
        write_fluid_files(str(save_dir / "1000"), suite_to_original(saved, embedding))
        path = save_dir / "1000"
    else:
        optimizer_state = {name: value for name, value in saved.items() if name in run_state}
        write_2020_save(str(save_dir / "1000"), original, optimizer_state)
        path = {"2020 <iter>/ folder": save_dir / "1000", "2020 <iter>.pdparams": save_dir / "1000.pdparams",
                "2020 model_save_dir/<model>": save_dir}[layout]
    with paddle.static.scope_guard(paddle.static.Scope()):
        train, features, executor, initial = train_program_state(loss, embedding, seed=2)
        assert not np.array_equal(initial["conv1_weights"], model["conv1_weights"])
        counts = pretrained.load_pretrained(train.program, str(path))
        assert counts["loaded"] == len(model) and counts["missing"] == 0 and counts["mismatched"] == 0
        assert_loaded(train.program, model, sorted(model))
        result = executor.run(features.program, feed={"image": images}, fetch_list=[features.feature])[0]
    np.testing.assert_array_equal(result, reference)
    renamed = sum(name in model for name in ("embedding_fc_weights", "embedding_fc_offset", "softmax_fc_weights",
                                             "softmax_fc_offset", "arcmargin_weight_norm"))
    assert "loaded %d (%d under the original's names), missing 0" % (len(model), renamed) in capsys.readouterr().out
