"""Flag parsing helpers."""
import argparse
import os
import re
import subprocess
import sys

import pytest

import utility


@pytest.mark.parametrize("text, value", [
    ("True", True), ("true", True), ("1", True), ("yes", True), ("Y", True), ("on", True),
    ("False", False), ("false", False), ("0", False), ("no", False), ("N", False), ("off", False),
])
def test_str2bool_accepts_the_usual_spellings(text, value):
    assert utility.str2bool(text) is value


def test_boolean_flags_in_the_originals_style():
    parser = argparse.ArgumentParser()
    utility.add_arguments("use_gpu", bool, False, "Whether to use GPU.", parser)
    utility.add_arguments("lr", float, 0.01, "Learning rate.", parser)
    assert parser.parse_args(["--use_gpu=True", "--lr=0.5"]).use_gpu is True
    assert parser.parse_args(["--use_gpu=no"]).use_gpu is False
    assert parser.parse_args([]).lr == 0.01
    assert "Default: 0.01." in parser.format_help()
    with pytest.raises(SystemExit) as caught:
        parser.parse_args(["--use_gpu=maybe"])
    assert caught.value.code == 2


def test_int_list_and_image_shape():
    assert utility.parse_int_list("15000,25000") == [15000, 25000]
    assert utility.parse_image_shape("3,64,48") == (3, 64, 48)
    for bad in ("3,64", "3,0,64", "a,b,c"):
        with pytest.raises(argparse.ArgumentTypeError):
            utility.parse_image_shape(bad)


def test_fmt_time_format():
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", utility.fmt_time())


def test_flag_error_exits_2_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as caught:
        utility.flag_error("lr_steps", "must increase")
    assert caught.value.code == 2
    assert capsys.readouterr().err == "error: --lr_steps: must increase\n"


def test_recall_topk_against_brute_force():
    import numpy as np
    rng = np.random.default_rng(4)
    features = rng.normal(size=(60, 5))
    labels = rng.integers(0, 12, size=60)
    normalised = features / np.linalg.norm(features, axis=1, keepdims=True)
    distances = ((normalised[:, None] - normalised[None]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    for k in (1, 3, 10):
        nearest = np.argsort(distances, axis=1)[:, :k]
        expected = np.mean([(labels[row] == labels[i]).any() for i, row in enumerate(nearest)])
        assert utility.recall_topk(features, labels, k=k) == pytest.approx(expected)


def test_scripts_start_without_paddles_thread_warning_and_with_all_cores():
    environment = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    result = subprocess.run([sys.executable, "-c", "import utility, os; print(os.environ['OMP_NUM_THREADS'])"],
                            cwd=os.path.dirname(os.path.abspath(utility.__file__)), env=environment,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(os.cpu_count())
    assert "OMP_NUM_THREADS" not in result.stderr
