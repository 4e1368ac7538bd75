"""Reading .pdparams / .pdopt without running code: what Paddle and this suite write loads, anything else is refused."""
import codecs
import json
import os
import pickle
import subprocess
import warnings

import numpy as np
import paddle
import pytest

import eval as eval_script
import train_elem
from core import checkpoint, weights
from core.weights import CheckpointError
from script_tools import TINY, error_line, run_main, train_flags
from tiny_program import program_values as values


def test_a_checkpoint_of_this_suite_reads_as_paddle_reads_it(trained_tiny_program, tmp_path):
    program = trained_tiny_program[0]
    directory = checkpoint.save_checkpoint(program, str(tmp_path / "4"), {"iteration": 4})
    prefix = os.path.join(directory, checkpoint.MODEL_PREFIX)
    ours, paddles = weights.read_program_state(prefix), paddle.static.load_program_state(prefix)
    assert set(ours) == set(paddles) == set(values(program)) and any("_velocity_" in name for name in ours)
    for name, value in paddles.items():
        assert ours[name].dtype == value.dtype
        np.testing.assert_array_equal(ours[name], value, err_msg=name)


def test_paddle_save_of_dynamic_state_dicts_and_tensors_reads_as_arrays(tmp_path):
    paddle.disable_static()
    try:
        layer = paddle.nn.Linear(3, 2)
        optimizer = paddle.optimizer.Momentum(parameters=layer.parameters(), momentum=0.9)
        layer(paddle.ones([4, 3])).sum().backward()
        optimizer.step()
        paddle.save(layer.state_dict(), str(tmp_path / "layer.pdparams"))
        paddle.save(optimizer.state_dict(), str(tmp_path / "layer.pdopt"))
        paddle.save({"fc_weights": layer.weight, "epoch": 3, "note": "text"}, str(tmp_path / "tensors.pdparams"))
        expected = {"weight": layer.weight.numpy(), "bias": layer.bias.numpy()}
        expected.update({name: value.numpy() for name, value in optimizer.state_dict().items()
                         if isinstance(value, paddle.Tensor)})
    finally:
        paddle.enable_static()
    state = weights.read_program_state(str(tmp_path / "layer"))
    assert set(state) == set(expected) and len(expected) == 4  # two parameters, two velocities
    for name, value in expected.items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)
    # A Tensor put in a dict by hand is pickled as (its name, its array); numbers and strings are no variables.
    tensors = weights.read_program_state(str(tmp_path / "tensors"))
    assert list(tensors) == ["fc_weights"]
    np.testing.assert_array_equal(tensors["fc_weights"], expected["weight"])


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_arrays_and_scalars_of_every_pickle_protocol(tmp_path, protocol):
    saved = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([1, 2], np.int64),
             "f": np.asfortranarray(np.ones((2, 3), np.float64)), "step": np.float32(7.5), "n": 3}
    with open(tmp_path / "model.pdparams", "wb") as handle:
        pickle.dump(saved, handle, protocol=protocol)
    loaded = weights.load_pickle(str(tmp_path / "model.pdparams"))
    assert set(loaded) == set(saved) and loaded["step"] == np.float32(7.5) and loaded["n"] == 3
    for name in ("w", "b", "f"):
        assert loaded[name].dtype == saved[name].dtype
        np.testing.assert_array_equal(loaded[name], saved[name])


def test_files_pickled_by_numpy_1_load_without_warnings(tmp_path):
    """NumPy 1 named its pickle helpers numpy.core.multiarray.*; NumPy 2 moved them to numpy._core."""
    data = pickle.dumps({"w": np.arange(6, dtype=np.float32), "s": np.float32(2)}, protocol=2)
    assert b"numpy._core.multiarray" in data
    with open(tmp_path / "old.pdparams", "wb") as handle:
        handle.write(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = weights.read_program_state(str(tmp_path / "old"))
    assert list(state) == ["w"]
    np.testing.assert_array_equal(state["w"], np.arange(6, dtype=np.float32))


def test_arrays_paddle_split_into_slices_are_joined(tmp_path):
    whole = np.arange(24, dtype=np.float32).reshape(4, 6)
    flat = whole.ravel()
    sliced = {"w@@.0": flat[:10], "w@@.1": flat[10:], "b": np.zeros(2, np.float32),
              weights.SLICED_ARRAYS_KEY: {"w": {"OriginShape": (4, 6), "slices": ["w@@.0", "w@@.1"]}}}
    with open(tmp_path / "big.pdparams", "wb") as handle:
        pickle.dump(sliced, handle, protocol=2)
    state = weights.read_program_state(str(tmp_path / "big"))
    assert sorted(state) == ["b", "w"]
    np.testing.assert_array_equal(state["w"], whole)


class RunsACommand:
    """Unpickling this calls `function(*arguments)`: what a malicious model file does."""

    def __init__(self, function, *arguments):
        self.function, self.arguments = function, arguments

    def __reduce__(self):
        return self.function, self.arguments


def write_hostile(path, payload):
    """A weights file with one real array and the payload hidden beside it."""
    with open(path, "wb") as handle:
        pickle.dump({"fc_weights": np.zeros((4, 2), np.float32), "hidden": payload}, handle, protocol=4)


@pytest.mark.parametrize("function, refused", [
    (os.system, "posix.system"),
    (subprocess.call, "subprocess.call"),
    (eval, "builtins.eval"),
    (np.load, "numpy.load"),  # NumPy, but no array-building function
])
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, function, refused):
    marker = tmp_path / "ran"
    command = {os.system: "touch %s" % marker, subprocess.call: ["touch", str(marker)],
               eval: "open(%r, 'w').close()" % str(marker), np.load: str(marker)}[function]
    path = str(tmp_path / "model.pdparams")
    write_hostile(path, RunsACommand(function, command))
    with pytest.raises(CheckpointError) as caught:
        weights.read_program_state(str(tmp_path / "model"))
    assert str(caught.value) == ("%s: refused: loading it would call %s, which no weights file needs; it was not made "
                                 "by paddle.save or this suite and may be malicious" % (path, refused))
    assert not marker.exists()
    with open(path, "rb") as handle:  # the file really does run the command when unpickled as Paddle does
        if function is not np.load:
            pickle.load(handle)
            assert marker.exists()


def test_a_hostile_model_file_stops_eval_and_resume_with_one_line_and_runs_nothing(toy_root, tmp_path, capsys):
    marker = tmp_path / "ran"
    hostile = str(tmp_path / "downloaded.pdparams")
    write_hostile(hostile, RunsACommand(os.system, "touch %s" % marker))
    code, out, err = run_main(eval_script, TINY + ["--data_dir=%s" % toy_root, "--pretrained_model=%s" % hostile],
                              capsys)
    assert code == 1 and error_line(err) == "error: %s: refused: loading it would call posix.system, which no " \
        "weights file needs; it was not made by paddle.save or this suite and may be malicious" % hostile

    # A checkpoint whose momentum file was swapped, its checksums dropped so that only unpickling can tell.
    flags = train_flags(toy_root, tmp_path, "softmax", 1, class_dim=12, num_workers=0)
    assert run_main(train_elem, flags, capsys)[0] == 0
    directory = tmp_path / "ResNet18" / "1"
    state_path = directory / checkpoint.STATE_FILE
    state = checkpoint.read_trainer_state(str(directory))
    state.pop(checkpoint.CHECKSUMS_KEY)
    state_path.write_text(json.dumps(state))
    write_hostile(str(directory / "model.pdopt"), RunsACommand(os.system, "touch %s" % marker))
    code, out, err = run_main(train_elem, flags + ["--total_iter_num=2", "--checkpoint=auto"], capsys)
    assert code == 1 and error_line(err).startswith("error: %s: refused: loading it would call posix.system"
                                                    % (directory / "model.pdopt"))
    assert not marker.exists()


def test_protocol_2_bytes_decode_with_latin1_only(tmp_path):
    """Protocol-2 pickles spell bytes as codecs.encode(text, "latin1"); any other codec (zlib: a decompression bomb,
    say) is refused."""
    path = str(tmp_path / "model.pdparams")
    with open(path, "wb") as handle:
        pickle.dump({"w": np.arange(3, dtype=np.float32), "note": b"\xff\x00"}, handle, protocol=2)
    assert weights.load_pickle(path)["note"] == b"\xff\x00"
    write_hostile(path, RunsACommand(codecs.encode, "x" * 100, "zlib"))
    with pytest.raises(CheckpointError, match=r"refused: loading it would call _codecs.encode with the codec 'zlib'"):
        weights.load_pickle(path)


def test_a_truncated_pickle_is_a_read_error_naming_the_file(tmp_path):
    path = str(tmp_path / "model.pdparams")
    with open(path, "wb") as handle:
        pickle.dump({"w": np.arange(1000, dtype=np.float32)}, handle, protocol=4)
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CheckpointError, match=r"^%s: cannot be read \(" % path):
        weights.read_program_state(str(tmp_path / "model"))
