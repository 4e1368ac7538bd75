"""Faults injected into real training runs: killed workers and runs, signals, a second run on the same directory,
non-finite numbers, invalid flags.

Each test breaks one thing in a tiny real run (ResNet18 at 3×32×32 on the toy data set) and checks what the user
gets: a one-line error naming the cause and the right exit code, no traceback, no leftover worker processes, and
checkpoints on disk that load. Images: test_image_faults.py; checkpoints and disks: test_checkpoint_faults.py.
"""
import json
import os
import re
import signal

import numpy as np
import paddle
import pytest

from core import checkpoint
import eval as eval_script
import infer
import train_elem
import train_pair
from script_tools import TINY, ScriptProcess, assert_gone, error_line, run_main, train_flags


# ---------------------------------------------------------------- processes and signals

def test_a_killed_reader_worker_stops_training_within_seconds(toy_root, tmp_path):
    run = ScriptProcess("train_pair.py", train_flags(toy_root, tmp_path, "eml", 100000, num_workers=2))
    run.wait_for(r"trainbatch 2,")
    workers = run.workers()
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    code, output = run.finish(timeout=300)  # it stops by itself; a hang would run into this bound
    assert code == 1, output
    assert re.search(r"reader worker reader-worker-\d \(pid %d\) was killed by signal SIGKILL" % workers[0],
                     error_line(output))
    match = re.search(r"the reader failed at iteration (\d+); resume with --checkpoint=(\S+)", output)
    assert match, output
    assert checkpoint.find_checkpoint(match.group(2)) == match.group(2)
    with open(os.path.join(match.group(2), "trainer_state.json")) as state:
        assert json.load(state)["iteration"] == int(match.group(1))
    assert_gone(workers)


def test_sigterm_to_the_whole_job_saves_and_exits_while_a_second_run_is_locked_out(toy_root, tmp_path, capsys):
    flags = train_flags(toy_root, tmp_path, "eml", 100000, num_workers=2)
    run = ScriptProcess("train_pair.py", flags)
    run.wait_for(r"trainbatch 2,")
    second = train_flags(toy_root, tmp_path, "eml", 1, num_workers=0)
    code, out, err = run_main(train_pair, second, capsys)
    assert code == 1
    assert re.search(r"train\.lock: training run pid %d is saving checkpoints into this directory; .* --force"
                     % run.process.pid, error_line(err))
    code, out, err = run_main(train_pair, second + ["--force=True"], capsys)
    assert code == 0, err
    assert "warning: --force: saving into %s" % (tmp_path / "ResNet18") in out

    workers = run.workers()
    os.killpg(run.process.pid, signal.SIGTERM)  # as a batch scheduler does: every process of the job
    code, output = run.finish(timeout=300)
    assert code == 128 + signal.SIGTERM, output
    assert "Traceback" not in output
    match = re.search(r"stopped by SIGTERM at iteration (\d+); resume with --checkpoint=(\S+)", output)
    assert match, output
    assert checkpoint.load_checkpoint(paddle.static.Program(), match.group(2))["iteration"] == int(match.group(1))
    assert_gone(workers)
    with open(tmp_path / "ResNet18" / checkpoint.LOCK_FILE) as lock:
        assert lock.read() == ""  # released


def test_a_run_restarted_at_once_after_kill_9_takes_the_lock_over_and_resumes(toy_root, tmp_path, capsys):
    """What a job supervisor does: the same command again, with --checkpoint=auto, the moment the last one died."""
    save_dir = tmp_path / "ResNet18"
    run = ScriptProcess("train_pair.py", train_flags(toy_root, tmp_path, "eml", 100000, num_workers=2, save_iter_step=1,
                                                     checkpoint="auto"))
    run.wait_for(r"saved checkpoint .*/2$")
    assert "--checkpoint=auto: no checkpoint in %s yet: starting from scratch" % save_dir in "".join(run.lines)
    workers = run.workers()
    run.process.kill()
    run.process.wait()
    assert [pid for pid in workers if os.path.exists("/proc/%d" % pid)], "the workers outlive their parent a while"
    newest = checkpoint.newest_checkpoint(str(save_dir))
    iteration = int(os.path.basename(newest))
    code, out, err = run_main(train_pair, train_flags(toy_root, tmp_path, "eml", iteration + 1, num_workers=0,
                                                      save_iter_step=1, checkpoint="auto"), capsys)
    assert code == 0, err
    assert "warning: taking over %s from training run pid %d, which ended without releasing it" % (
        save_dir / checkpoint.LOCK_FILE, run.process.pid) in out
    assert "resumed from %s at iteration %d" % (newest, iteration) in out
    assert checkpoint.newest_checkpoint(str(save_dir)) == str(save_dir / str(iteration + 1))
    run.finish(timeout=300)
    assert_gone(workers)


# ---------------------------------------------------------------- numerics

def assert_all_finite(checkpoint_dir):
    paddle.enable_static()
    state = paddle.static.load_program_state(os.path.join(checkpoint_dir, "model"))
    assert all(np.isfinite(value).all() for value in state.values()), checkpoint_dir


@pytest.mark.parametrize("save_iter_step", [1, 1000])
def test_nan_check_stops_at_the_first_non_finite_number_and_keeps_the_last_good_checkpoint(
        toy_root, tmp_path, capsys, save_iter_step):
    flags = train_flags(toy_root, tmp_path, "softmax", 8, class_dim=12, lr=1e30, save_iter_step=save_iter_step,
                        num_workers=0)
    code, out, err = run_main(train_elem, flags, capsys)
    assert code == 1
    saved = sorted(int(name) for name in os.listdir(tmp_path / "ResNet18") if name.isdigit())
    last_good = os.path.join(str(tmp_path), "ResNet18", str(saved[-1])) if saved else "none saved yet"
    if save_iter_step == 1:  # parameters go non-finite one iteration before the loss does: the save catches them
        match = re.fullmatch(r"error: (\S+) is not finite after iteration (\d+) \(--nan_check\); not saved. "
                             r"Last good checkpoint: (.+)", error_line(err))
        assert match and saved == list(range(1, int(match.group(2))))
    else:
        match = re.fullmatch(r"error: non-finite loss (nan|inf|-inf) at iteration (\d+) \(--nan_check\). Last good "
                             r"checkpoint: (.+)", error_line(err))
        assert match and saved == []
    assert match.group(3) == last_good
    for iteration in saved:
        assert_all_finite(tmp_path / "ResNet18" / str(iteration))


# ---------------------------------------------------------------- flags

@pytest.mark.parametrize("script, flags, flag", [
    (train_pair, ["--train_batch_size=-6"], "--train_batch_size"),
    (train_pair, ["--test_batch_size=0"], "--test_batch_size"),
    (train_pair, ["--embedding_size=-8"], "--embedding_size"),
    (train_pair, ["--num_workers=-1"], "--num_workers"),
    (train_pair, ["--max_bad_images=-1"], "--max_bad_images"),
    (train_pair, ["--save_iter_step=-1"], "--save_iter_step"),
    (train_pair, ["--loss_name=triplet", "--samples_each_class=-2"], "--samples_each_class"),
    (train_elem, ["--class_dim=0"], "--class_dim"),
    (train_elem, ["--image_shape=3,32"], "--image_shape"),
    (train_elem, ["--image_shape=3,0,32"], "--image_shape"),
    (train_elem, ["--image_shape=1,32,32"], "--image_shape"),
    (train_elem, ["--image_shape=a,b,c"], "--image_shape"),
    (train_elem, ["--lr_steps=-5,10"], "--lr_steps"),
    (train_elem, ["--lr_steps=10,10"], "--lr_steps"),
    (train_elem, ["--lr=0"], "--lr"),
    (train_elem, ["--crop_scale_min=0"], "--crop_scale_min"),
    (train_elem, ["--loss_name=arcmargin", "--arc_scale=0"], "--arc_scale"),
    (train_elem, ["--loss_name=arcmargin", "--arc_margin=2"], "--arc_margin"),
    (train_elem, ["--loss_name=contrastive"], "--loss_name"),
    (train_elem, ["--checkpoint=/nonexistent/ResNet18/10"], "--checkpoint"),
    (train_elem, ["--pretrained_model=/nonexistent/weights.pdparams"], "--pretrained_model"),
    (train_elem, ["--use_gpu=maybe"], "--use_gpu"),
    (train_elem, ["--modle=ResNet18"], "--modle"),
    (eval_script, ["--image_shape=1,32,32"], "--image_shape"),
    (infer, ["--image_shape=3,32"], "--image_shape"),
    (infer, ["--batch_size=-1"], "--batch_size"),
])
def test_invalid_flags_are_one_line_naming_the_flag_before_any_work(tmp_path, capsys, script, flags, flag):
    save_flags = ["--model_save_dir=%s" % (tmp_path / "out")] if script in (train_elem, train_pair) else []
    code, out, err = run_main(script, TINY + save_flags + flags, capsys)
    assert code == 2
    assert re.fullmatch(r"error: [^\n]*%s\b[^\n]*\n" % flag, err), err
    assert out == "" and not os.path.exists(tmp_path / "out")  # not even the configuration was printed
