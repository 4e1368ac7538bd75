"""What a training run records: its configuration as JSON next to the checkpoints, and VisualDL scalars."""
import json
import os
import re
import sys

import paddle
import pytest

from core import run_log
import train_elem
from script_tools import train_flags

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as text_file:
        text_file.write(text)


def test_git_commit_of_a_branch_in_a_loose_ref(tmp_path):
    write(str(tmp_path / ".git" / "HEAD"), "ref: refs/heads/feature/vis\n")
    write(str(tmp_path / ".git" / "refs" / "heads" / "feature" / "vis"), COMMIT + "\n")
    os.makedirs(tmp_path / "deeper" / "still")
    assert run_log.git_commit(str(tmp_path / "deeper" / "still")) == COMMIT


def test_git_commit_of_a_branch_in_packed_refs(tmp_path):
    write(str(tmp_path / ".git" / "HEAD"), "ref: refs/heads/main\n")
    write(str(tmp_path / ".git" / "packed-refs"), "# pack-refs with: peeled fully-peeled sorted\n%s refs/heads/dev\n"
          "%s refs/heads/main\n" % (OTHER_COMMIT, COMMIT))
    assert run_log.git_commit(str(tmp_path)) == COMMIT


def test_git_commit_of_a_detached_head_and_of_a_worktree(tmp_path):
    write(str(tmp_path / "repo" / ".git" / "HEAD"), COMMIT + "\n")
    assert run_log.git_commit(str(tmp_path / "repo")) == COMMIT
    write(str(tmp_path / "worktree" / ".git"), "gitdir: ../repo/.git\n")
    assert run_log.git_commit(str(tmp_path / "worktree")) == COMMIT


def test_no_git_commit_outside_a_repository(tmp_path):
    assert run_log.git_commit(str(tmp_path)) is None


def softmax_flags(toy_root, save_dir, iterations, *extra):
    return train_flags(toy_root, save_dir, "softmax", iterations, num_workers=0, class_dim=12, test_iter_step=2,
                       save_iter_step=2, lr=0.02) + list(extra)


def test_each_run_writes_its_configuration_next_to_its_checkpoints(toy_root, tmp_path, capsys):
    train_elem.main(softmax_flags(toy_root, tmp_path, 2))
    train_elem.main(softmax_flags(toy_root, tmp_path, 3, "--checkpoint=%s" % (tmp_path / "ResNet18" / "2")))
    output = capsys.readouterr().out
    run_dir = tmp_path / "ResNet18"
    assert {"2", "3", "run_config_0.json", "run_config_2.json"} <= set(os.listdir(run_dir))
    assert "run configuration written to %s" % (run_dir / "run_config_0.json") in output
    first = json.load(open(run_dir / "run_config_0.json"))
    resumed = json.load(open(run_dir / "run_config_2.json"))
    assert first["start_iteration"] == 0 and resumed["start_iteration"] == 2
    assert first["flags"]["checkpoint"] is None and resumed["flags"]["checkpoint"] == str(run_dir / "2")
    assert first["flags"]["total_iter_num"] == 2 and resumed["flags"]["total_iter_num"] == 3
    assert first["flags"]["lr"] == 0.02 and first["flags"]["image_shape"] == [3, 32, 32]
    assert sorted(first["flags"]) == sorted(vars(train_elem.make_parser().parse_args([])))
    assert first["paddle_version"] == paddle.__version__ == "3.3.1"
    assert first["git_commit"] == run_log.git_commit()
    assert first["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", first["git_commit"])


def logged(output, pattern):
    return [tuple(float(value) for value in match) for match in re.findall(pattern, output)]


def printed_precision(decimals):
    """How far a value printed with `decimals` decimals may be from the float32 VisualDL stored."""
    return 0.5 * 10 ** -decimals + 1e-6


def test_vdl_log_dir_records_loss_lr_and_test_recall(toy_root, tmp_path, capsys):
    pytest.importorskip("visualdl")
    from visualdl import LogReader
    vdl_dir = str(tmp_path / "vdl")
    train_elem.main(softmax_flags(toy_root, tmp_path, 2, "--vdl_log_dir=%s" % vdl_dir))
    output = capsys.readouterr().out
    (record_file,) = os.listdir(vdl_dir)
    records = LogReader(file_path=os.path.join(vdl_dir, record_file))

    def series(tag):
        return [(entry.id, entry.value) for entry in records.get_data("scalar", tag)]

    steps = logged(output, r"trainbatch (\d+), lr ([\d.]+), loss ([\d.]+), acc1 ([\d.]+), acc5 ([\d.]+)")
    assert [step[0] for step in steps] == [1, 2]
    for tag, column, decimals in (("train/lr", 1, 6), ("train/loss", 2, 6), ("train/acc1", 3, 4),
                                  ("train/acc5", 4, 4)):
        assert [step for step, _ in series(tag)] == [1, 2]
        assert [value for _, value in series(tag)] == pytest.approx([step[column] for step in steps],
                                                                    abs=printed_precision(decimals))
    (test_step,) = logged(output, r"trainbatch (\d+), test_recall ([\d.]+)")
    assert series("test/recall@1") == [(2, pytest.approx(test_step[1], abs=printed_precision(5)))]


def test_vdl_log_dir_without_visualdl_is_a_clear_flag_error(toy_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "visualdl", None)  # as if not installed, whether it is or not
    with pytest.raises(SystemExit) as caught:
        train_elem.main(softmax_flags(toy_root, tmp_path, 2, "--vdl_log_dir=%s" % (tmp_path / "vdl")))
    assert caught.value.code == 2
    assert ("--vdl_log_dir: needs VisualDL, which is not installed: pip install visualdl"
            in capsys.readouterr().err)
    assert not os.path.exists(tmp_path / "ResNet18" / "run_config_0.json") and not os.path.exists(tmp_path / "vdl")
