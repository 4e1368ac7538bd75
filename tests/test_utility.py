"""Flag parsing helpers."""
import argparse
import re

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


def test_flags_are_checked_on_parsing_and_added_once(capsys):
    count = utility.Flag("count", int, 1, "How many.", utility.positive)
    parser = utility.ArgumentParser()
    parser.add_flags([count, count], count=3)  # a flag two groups share is added once
    assert parser.parse_args([]).count == 3
    with pytest.raises(SystemExit) as caught:
        parser.parse_args(["--count=0"])
    assert caught.value.code == 2
    assert capsys.readouterr().err == "error: --count: must be positive, got 0\n"
    with pytest.raises(ValueError, match="--count is declared twice"):
        parser.add_flags([utility.Flag("count", int, 2, "Another.")])
    with pytest.raises(ValueError, match="does not take: size"):
        utility.ArgumentParser().add_flags([count], size=4)
