"""Outputs: every path a script writes is checked before the work starts, and every file appears complete or not at
all, even when the disk fills up half-way."""
import errno
import os

import numpy as np
import pytest

import eval as eval_script
import export_model
import infer
import train_elem
import train_pair
import utility
from core import predictor
from script_tools import TINY, error_line, run_main, train_flags


@pytest.fixture
def a_file(tmp_path):
    """A regular file: no directory can be made under it."""
    path = tmp_path / "a_file"
    path.write_text("not a directory\n")
    return path


def test_output_problem_tries_where_the_first_new_entry_goes(tmp_path, a_file):
    assert utility.output_problem(str(tmp_path / "new" / "deeper" / "features.npy"), "file") is None
    assert utility.output_problem(str(tmp_path / "new" / "save_dir"), "directory") is None
    assert utility.output_problem(str(tmp_path / "new" / "export"), "renamed directory") is None
    assert os.listdir(tmp_path) == ["a_file"]  # nothing created, the probe file removed
    assert utility.output_problem(str(a_file / "features.npy"), "file") == (
        "%s cannot be written: %s is not a directory" % (a_file / "features.npy", a_file))
    assert utility.output_problem(str(a_file), "directory") == "%s cannot be written: it is not a directory" % a_file
    assert utility.output_problem(str(tmp_path), "file") == "%s cannot be written: it is a directory" % tmp_path
    # Permission bits say nothing to root: /proc takes no new files, whoever asks.
    assert utility.output_problem("/proc/features.npy", "file").startswith(
        "/proc/features.npy cannot be written: cannot create files in /proc (")


@pytest.mark.parametrize("script, flag, kind", [
    (infer, "save_features", "features.npy"),
    (eval_script, "save_results", "results.json"),
    (eval_script, "save_vis", "pictures"),
    (train_pair, "model_save_dir", "output"),
    (train_elem, "vdl_log_dir", "vdl"),
    (export_model, "model_save_dir", "inference_model"),
])
def test_an_output_that_cannot_be_written_stops_the_script_before_it_starts(toy_root, tmp_path, a_file, capsys,
                                                                            script, flag, kind):
    flags = (train_flags(toy_root, tmp_path / "saved", "eml", 1) if script in (train_elem, train_pair)
             else TINY + ["--data_dir=%s" % toy_root, "--pretrained_model=%s" % a_file])
    path = a_file / kind
    code, out, err = run_main(script, flags + ["--%s=%s" % (flag, path)], capsys)
    assert code == 2 and out == ""  # not even the configuration was printed
    assert error_line(err) == "error: --%s: %s cannot be written: %s is not a directory" % (flag, path, a_file)


def test_the_paths_file_beside_the_features_is_checked_too(tmp_path, capsys):
    (tmp_path / "features.paths.txt").mkdir()
    code, out, err = run_main(infer, TINY + ["--save_features=%s" % (tmp_path / "features.npy")], capsys)
    assert code == 2 and error_line(err) == "error: --save_features: %s cannot be written: it is a directory" % (
        tmp_path / "features.paths.txt")


def test_atomic_output_replaces_the_file_whole_or_leaves_it(tmp_path):
    path = tmp_path / "results.json"
    with utility.atomic_output(str(path)) as handle:
        handle.write("first")
    with pytest.raises(utility.OutputError) as caught:
        with utility.atomic_output(str(path)) as handle:
            handle.write("half of the sec")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(caught.value) == "%s: cannot be written (OSError: [Errno 28] No space left on device)" % path
    with pytest.raises(utility.Interrupted):
        with utility.atomic_output(str(path)) as handle:
            handle.write("half of the third")
            raise utility.Interrupted(2)
    assert path.read_text() == "first" and os.listdir(tmp_path) == ["results.json"]


def test_a_full_disk_while_infer_saves_leaves_no_file_and_one_line(toy_root, tmp_path, monkeypatch, capsys):
    features = tmp_path / "features.npy"

    def disk_full_half_way(handle, array):
        handle.write(b"\x93NUMPY half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", disk_full_half_way)
    code, out, err = run_main(infer, TINY + ["--data_dir=%s" % toy_root, "--batch_size=16", "--num_workers=0",
                                             "--save_features=%s" % features], capsys)
    assert code == 1
    assert error_line(err) == "error: %s: cannot be written (OSError: [Errno 28] No space left on device)" % features
    assert os.listdir(tmp_path) == []


def test_a_failed_export_leaves_the_previous_one(tmp_path, monkeypatch, capsys, resnet18_weights):
    target = tmp_path / "inference_model"
    flags = TINY + ["--pretrained_model=%s" % resnet18_weights, "--model_save_dir=%s" % target]
    assert run_main(export_model, flags, capsys)[0] == 0
    before = {name: (target / name).read_bytes() for name in os.listdir(target)}

    def disk_full_half_way(path_prefix, *args, **kwargs):
        os.makedirs(os.path.dirname(path_prefix), exist_ok=True)
        with open(path_prefix + ".json", "w") as half_written:
            half_written.write("{")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(predictor.paddle.static, "save_inference_model", disk_full_half_way)
    code, out, err = run_main(export_model, flags, capsys)
    assert code == 1
    assert error_line(err) == "error: %s: cannot be written (OSError: [Errno 28] No space left on device)" % target
    assert {name: (target / name).read_bytes() for name in os.listdir(target)} == before
    assert os.listdir(tmp_path) == ["inference_model"]
