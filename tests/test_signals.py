"""Every script stopped by Ctrl-C (SIGINT) or a scheduler's SIGTERM while it works: one line saying so, exit code 130
or 143, reader workers gone, shared memory freed, no traceback (Python's or Paddle's C++ one), no warning, and no
output file left half-written under its name.

Each script runs in a process of its own, as a user or a scheduler starts it, and is signalled at a point where it is
busy: decoding and extracting (eval.py, infer.py), building its program (export_model.py), training or starting up
(train_elem.py, train_pair.py).
"""
import os
import re
import signal
import time

import pytest

import reader
from core import checkpoint
from script_tools import TINY, ScriptProcess, assert_gone, train_flags

CONFIGURATION_END = r"^-{48}$"  # the line under utility.print_arguments' flag listing


@pytest.fixture(scope="module")
def long_test_set(toy_root, tmp_path_factory):
    """The toy data set with a test list 200 times as long (its images again under new ids), so that eval.py and
    infer.py are still extracting when the signal comes."""
    root = tmp_path_factory.mktemp("long_test_set")
    for name in os.listdir(toy_root):
        if os.path.isdir(os.path.join(toy_root, name)):
            os.symlink(os.path.join(toy_root, name), root / name)
    test_list = reader.read_image_list(os.path.join(toy_root, reader.TEST_LIST))
    rows = list(zip(test_list.class_ids, test_list.super_class_ids, test_list.paths)) * 200
    with open(root / reader.TEST_LIST, "w") as list_file:
        list_file.write(" ".join(reader.LIST_HEADER) + "\n")
        for image_id, (class_id, super_class_id, path) in enumerate(rows, start=1):
            list_file.write("%d %d %d %s\n" % (image_id, class_id, super_class_id, os.path.relpath(path, toy_root)))
    return str(root)


def assert_stopped_cleanly(run, signum, workers=(), shared_memory=()):
    """The exit code and output of a script stopped by `signum`: one line saying so, nothing alarming, nothing left."""
    code, output = run.finish(timeout=60)
    name = signal.Signals(signum).name
    assert code == 128 + signum, output
    assert len(re.findall(r"\] stopped by %s\b" % name, output)) == 1, output
    assert not re.search(r"Traceback|FatalError|Error Message Summary|resource_tracker|[Ww]arning|error:", output), \
        output
    assert_gone(workers)
    assert not [path for path in shared_memory if os.path.exists(path)], "shared memory left behind"
    return output


def test_eval_stopped_by_ctrl_c_while_extracting_writes_nothing(long_test_set, tmp_path):
    results, pictures = tmp_path / "results.json", tmp_path / "pictures"
    run = ScriptProcess("eval.py", TINY + ["--data_dir=%s" % long_test_set, "--batch_size=4", "--num_workers=2",
                                           "--save_results=%s" % results, "--save_vis=%s" % pictures])
    workers = run.wait_for_workers(2)
    shared_memory = run.shared_memory()
    assert shared_memory
    run.process.send_signal(signal.SIGINT)
    assert_stopped_cleanly(run, signal.SIGINT, workers, shared_memory)
    assert os.listdir(tmp_path) == []


def test_infer_stopped_by_sigterm_while_extracting_writes_nothing(long_test_set, tmp_path):
    features = tmp_path / "out" / "features.npy"
    run = ScriptProcess("infer.py", TINY + ["--data_dir=%s" % long_test_set, "--batch_size=2", "--num_workers=2",
                                            "--save_features=%s" % features])
    run.wait_for(r"^Test-0-feature")  # extracting (with --save_features, every 20th batch prints its line)
    workers, shared_memory = run.workers(), run.shared_memory()
    assert len(workers) == 2 and shared_memory
    os.killpg(run.process.pid, signal.SIGTERM)  # as a scheduler does: the script and its workers
    assert_stopped_cleanly(run, signal.SIGTERM, workers, shared_memory)
    assert not os.path.exists(tmp_path / "out")


def test_export_stopped_by_sigterm_leaves_no_export(resnet18_weights, tmp_path):
    target = tmp_path / "inference_model"
    run = ScriptProcess("export_model.py", TINY + ["--pretrained_model=%s" % resnet18_weights,
                                                   "--model_save_dir=%s" % target])
    run.wait_for(CONFIGURATION_END)
    run.process.send_signal(signal.SIGTERM)
    output = assert_stopped_cleanly(run, signal.SIGTERM)
    assert "exported" not in output and os.listdir(tmp_path) == []


def test_train_elem_stopped_by_sigterm_saves_then_ends_cleanly(toy_root, tmp_path):
    run = ScriptProcess("train_elem.py", train_flags(toy_root, tmp_path, "softmax", 100000, class_dim=12,
                                                     num_workers=2))
    run.wait_for(r"trainbatch 2,")
    workers, shared_memory = run.workers(), run.shared_memory()
    assert len(workers) == 2 and shared_memory
    run.process.send_signal(signal.SIGTERM)  # the training process alone: its workers are left to it
    output = assert_stopped_cleanly(run, signal.SIGTERM, workers, shared_memory)
    stopped = re.search(r"stopped by SIGTERM at iteration (\d+); resume with --checkpoint=(\S+)", output)
    assert stopped and checkpoint.newest_checkpoint(str(tmp_path / "ResNet18")) == stopped.group(2)
    assert int(os.path.basename(stopped.group(2))) == int(stopped.group(1))


def test_train_pair_stopped_by_ctrl_c_while_starting_up_leaves_the_directory_unlocked(toy_root, tmp_path):
    run = ScriptProcess("train_pair.py", train_flags(toy_root, tmp_path, "eml", 100000, num_workers=2))
    run.wait_for(CONFIGURATION_END)
    run.process.send_signal(signal.SIGINT)
    output = assert_stopped_cleanly(run, signal.SIGINT)
    assert "trainbatch" not in output and checkpoint.newest_checkpoint(str(tmp_path / "ResNet18")) is None
    lock = tmp_path / "ResNet18" / checkpoint.LOCK_FILE
    assert not lock.exists() or lock.read_text() == ""


def test_a_command_stopped_while_it_imports_paddle_says_so_in_one_line(toy_root):
    run = ScriptProcess("eval.py", TINY + ["--data_dir=%s" % toy_root])
    deadline = time.monotonic() + 60
    while "libpaddle" not in open("/proc/%d/maps" % run.process.pid).read():  # importing Paddle, nothing printed
        assert time.monotonic() < deadline and run.process.poll() is None
        time.sleep(0.01)
    run.process.send_signal(signal.SIGINT)
    output = assert_stopped_cleanly(run, signal.SIGINT)
    assert "Configuration Arguments" not in output
