"""Data-parallel training: real processes from `python -m paddle.distributed.launch` on CPU, talking through gloo."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import infer
import reader
import search
import train_pair
from core import checkpoint, gallery_index, image_ops, samplers, trainer
from core.flags import check_training
from script_tools import CPU_BFLOAT16

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "data_parallel_worker.py")
LAUNCH_TIMEOUT_SECONDS = 240


def worker_command(dump_dir, script_name, flags, processes):
    """The worker under the launcher with `processes` > 1, else alone (a plain single-process run)."""
    os.makedirs(dump_dir, exist_ok=True)
    launcher = [] if processes == 1 else ["-m", "paddle.distributed.launch", "--nproc_per_node=%d" % processes,
                                          "--log_dir=%s" % os.path.join(dump_dir, "log")]
    return [sys.executable] + launcher + [WORKER, str(dump_dir), script_name] + flags


def run_worker(dump_dir, script_name, flags, processes):
    completed = subprocess.run(worker_command(dump_dir, script_name, flags, processes), cwd=ROOT,
                               capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_SECONDS)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:] + worker_logs(dump_dir)
    return completed.stdout


def worker_logs(dump_dir):
    log_dir = os.path.join(dump_dir, "log")
    if not os.path.isdir(log_dir):
        return ""
    return "".join(open(os.path.join(log_dir, name), errors="replace").read()[-3000:]
                   for name in sorted(os.listdir(log_dir)) if name.startswith("workerlog"))


def rank_log(dump_dir, rank):
    return open(os.path.join(dump_dir, "log", "workerlog.%d" % rank), errors="replace").read()


def dumped(dump_dir, rank):
    with np.load(os.path.join(dump_dir, "rank%d.npz" % rank)) as variables:
        return dict(variables)


def logged_losses(output):
    return [float(value) for value in re.findall(r"trainbatch \d+, lr [\d.]+, loss ([-\d.e]+)", output)]


def run_flags(toy_root, save_dir, **flags):
    defaults = dict(image_shape="3,32,32", use_gpu=False, num_workers=0, data_dir=toy_root, model_save_dir=save_dir,
                    test_batch_size=16, display_iter_step=1, test_iter_step=0, save_iter_step=1000, lr=0.05,
                    rotate=True)
    defaults.update(flags)
    return ["--%s=%s" % item for item in defaults.items()]


def test_two_processes_take_the_step_one_process_takes_on_the_whole_batch(toy_root, tmp_path):
    flags = run_flags(toy_root, tmp_path / "saved", model="TinyNet", loss_name="softmax", class_dim=12,
                           train_batch_size=8, total_iter_num=2)
    single_output = run_worker(tmp_path / "single", "train_elem", flags, processes=1)
    run_worker(tmp_path / "pair", "train_elem", flags, processes=2)

    single, rank0, rank1 = dumped(tmp_path / "single", 0), dumped(tmp_path / "pair", 0), dumped(tmp_path / "pair", 1)
    assert set(rank0) == set(single) and "tiny_conv_weights_velocity_0" in rank0
    for name in single:
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)
        np.testing.assert_allclose(rank0[name], single[name], rtol=1e-5, atol=1e-7, err_msg=name)
    assert np.abs(rank0["softmax_fc_weights_velocity_0"]).max() > 1e-3  # two real updates were made
    # Rank 0 logs the loss averaged over both processes: the loss of the whole batch.
    distributed_losses = logged_losses(rank_log(tmp_path / "pair", 0))
    assert len(distributed_losses) == 2
    np.testing.assert_allclose(distributed_losses, logged_losses(single_output), rtol=1e-5)
    assert "trainbatch" not in rank_log(tmp_path / "pair", 1)


def test_the_cross_batch_memory_holds_every_process_embeddings_the_same_on_each(toy_root, tmp_path):
    """Two steps of 8 images, 4 per process, into a memory of 16: both processes hold the whole global batches in
    rank order, and the first one as one process computes it (TinyNet has no batch norm)."""
    flags = run_flags(toy_root, tmp_path / "saved", model="TinyNet", loss_name="contrastive", samples_each_class=2,
                      train_batch_size=8, total_iter_num=2, xbm_size=16, xbm_start_iter=0)
    run_worker(tmp_path / "single", "train_pair", flags, processes=1)
    run_worker(tmp_path / "pair", "train_pair", flags, processes=2)

    single, rank0, rank1 = dumped(tmp_path / "single", 0), dumped(tmp_path / "pair", 0), dumped(tmp_path / "pair", 1)
    for name in ("xbm_embeddings", "xbm_labels", "xbm_position", "xbm_step"):
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)
    assert rank0["xbm_step"].tolist() == [2] and rank0["xbm_position"].tolist() == [0]
    np.testing.assert_array_equal(rank0["xbm_labels"], single["xbm_labels"])
    assert (rank0["xbm_labels"] >= 0).all() and len(np.unique(rank0["xbm_labels"][:8])) == 4
    # The first batch was embedded by the initial weights, the same in both runs.
    np.testing.assert_allclose(rank0["xbm_embeddings"][:8], single["xbm_embeddings"][:8], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(rank0["xbm_embeddings"], axis=1), 1.0, rtol=1e-5)


def start_and_wait_for_iteration(dump_dir, script_name, flags, iteration):
    """Launches 2 processes and returns the launcher once the first one has logged `iteration`."""
    launcher = subprocess.Popen(worker_command(dump_dir, script_name, flags, processes=2), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + LAUNCH_TIMEOUT_SECONDS
    while not re.search(r"trainbatch %d," % iteration, read_if_exists(os.path.join(dump_dir, "log", "workerlog.0"))):
        if launcher.poll() is not None or time.time() > deadline:
            stop_launch(launcher, dump_dir)
            pytest.fail("no iteration %d logged:\n%s" % (iteration, worker_logs(dump_dir)))
        time.sleep(0.5)
    return launcher


def stop_launch(launcher, dump_dir):
    """Ends a launch whose test failed: the workers run in sessions of their own, so each is killed by its id."""
    if launcher.poll() is None:
        for rank in (0, 1):
            kill_if_running(worker_pid(dump_dir, rank))
        launcher.kill()


def assert_stopped_with_one_checkpoint(dump_dir, save_dir, model):
    """Rank 0 logged a stop by SIGTERM and saved exactly that iteration; returns the iteration."""
    log0 = rank_log(dump_dir, 0)
    stopped = re.search(r"stopped by SIGTERM at iteration (\d+); resume with --checkpoint=(\S+)", log0)
    assert stopped, log0[-3000:]
    iteration, checkpoint_dir = int(stopped.group(1)), stopped.group(2)
    assert json.load(open(os.path.join(checkpoint_dir, "trainer_state.json")))["iteration"] == iteration
    written = [name for name in os.listdir(os.path.join(save_dir, model)) if name[0].isdigit() or name[0] == "."]
    assert written == [str(iteration)]
    return iteration


def test_pair_loss_processes_get_their_own_class_balanced_share_and_stop_together(toy_root, tmp_path):
    """eml on ResNet18 in bfloat16 AMP (float32 on a CPU without bfloat16); a SIGTERM to the second process only stops
    both after the same iteration."""
    save_dir = tmp_path / "saved"
    amp = {"use_amp": True, "amp_dtype": "bfloat16"} if CPU_BFLOAT16 else {}
    flags = run_flags(toy_root, save_dir, model="ResNet18", loss_name="eml", samples_each_class=2,
                      train_batch_size=8, total_iter_num=10000, lr=0.001, **amp)
    launcher = start_and_wait_for_iteration(tmp_path, "train_pair", flags, 2)
    try:
        os.kill(worker_pid(tmp_path, 1), signal.SIGTERM)
        launcher.wait(timeout=LAUNCH_TIMEOUT_SECONDS)
    finally:
        stop_launch(launcher, tmp_path)

    assert_stopped_with_one_checkpoint(tmp_path, save_dir, "ResNet18")
    log1 = rank_log(tmp_path, 1)
    assert "data parallel over 2 processes, 4 images each per batch" in rank_log(tmp_path, 0)
    assert "SIGTERM received" in log1 and "trainbatch" not in log1 and "saved checkpoint" not in log1
    rank0, rank1 = dumped(tmp_path, 0), dumped(tmp_path, 1)
    statistics = [name for name in rank0 if name.endswith(("_mean", "_variance"))]
    assert len(statistics) == 40  # 20 batch norms in ResNet18
    for name in set(rank0) - set(statistics):
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)
    # Batch-norm statistics stay per process; they differ because the processes read different images.
    assert all(not np.allclose(rank0[name], rank1[name]) for name in statistics)


def test_ctrl_c_to_the_launcher_stops_both_processes_after_one_saved_iteration(toy_root, tmp_path):
    """The launcher turns Ctrl-C into a SIGTERM to each process, repeated 0.2 s later: still one graceful stop."""
    save_dir = tmp_path / "saved"
    flags = run_flags(toy_root, save_dir, model="ResNet18", loss_name="softmax", class_dim=12,
                           train_batch_size=8, total_iter_num=10000, lr=0.001)
    launcher = start_and_wait_for_iteration(tmp_path, "train_elem", flags, 2)
    try:
        launcher.send_signal(signal.SIGINT)
        launcher.wait(timeout=LAUNCH_TIMEOUT_SECONDS)
    finally:
        stop_launch(launcher, tmp_path)

    assert_stopped_with_one_checkpoint(tmp_path, save_dir, "ResNet18")
    rank0, rank1 = dumped(tmp_path, 0), dumped(tmp_path, 1)
    for name in rank0:
        if not name.endswith(("_mean", "_variance")):
            np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)


def read_if_exists(path):
    return open(path, errors="replace").read() if os.path.exists(path) else ""


def worker_pid(dump_dir, rank):
    return int(read_if_exists(os.path.join(dump_dir, "pid%d" % rank)) or 0)


def kill_if_running(pid):
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_rank_shares_put_together_are_the_single_process_batches(toy_root):
    def stream(rank, world_size):
        image_list = reader.read_train_list(toy_root)
        sampler = samplers.make_sampler(samplers.CLASS_BALANCED, reader.train_labels(image_list), 8, 2, seed=3)
        return reader.train_batches(image_list, sampler, (3, 16, 16), image_ops.Augmentation(0.08, True, True),
                                    num_workers=0, seed=3, rank=rank, world_size=world_size)

    whole, halves = stream(0, 1), [stream(rank, 2) for rank in (0, 1)]
    for _ in range(3):
        images, labels = next(whole)
        shares = [next(half) for half in halves]
        np.testing.assert_array_equal(np.concatenate([share[0] for share in shares]), images)
        np.testing.assert_array_equal(np.concatenate([share[1] for share in shares]), labels)
        assert all(len(np.unique(share[1])) == 2 for share in shares)  # two whole classes of two images each


def parse_pair_flags(*argv):
    args = train_pair.make_parser().parse_args(["--data_dir=unused"] + list(argv))
    check_training(args)
    return args


def test_batch_that_does_not_split_into_whole_shares_is_a_flag_error(monkeypatch, capsys):
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    with pytest.raises(SystemExit) as stopped:
        parse_pair_flags("--train_batch_size=7")
    assert stopped.value.code == 2
    assert "--train_batch_size: 7 does not split evenly over the 2 processes" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        trainer.build_loss(parse_pair_flags("--loss_name=eml", "--train_batch_size=6", "--samples_each_class=2"))
    message = capsys.readouterr().err
    assert "--train_batch_size=3 is not divisible by --samples_each_class=2" in message
    assert "the share of each of 2 processes of --train_batch_size=6" in message

    loss = trainer.build_loss(parse_pair_flags("--loss_name=quadruplet", "--train_batch_size=8",
                                               "--samples_each_class=2"))
    assert loss.train_batch_size == 4


def test_two_processes_extract_the_features_one_process_extracts(toy_root, tmp_path, capsys):
    """Each process extracts a contiguous share of the test list; process 0 writes them all, in list order."""
    flags = ["--model=ResNet18", "--image_shape=3,32,32", "--use_gpu=False", "--num_workers=1", "--batch_size=4",
             "--embedding_size=8", "--data_dir=%s" % toy_root]
    infer.main(flags + ["--save_features=%s" % (tmp_path / "single.npy")])
    launch = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node=2",
              "--log_dir=%s" % (tmp_path / "log"), os.path.join(ROOT, "infer.py")]
    completed = subprocess.run(launch + flags + ["--save_features=%s" % (tmp_path / "pair.npy")], cwd=ROOT,
                               capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_SECONDS)
    assert completed.returncode == 0, completed.stderr[-3000:] + worker_logs(tmp_path)

    single, pair = np.load(tmp_path / "single.npy"), np.load(tmp_path / "pair.npy")
    assert pair.shape == single.shape == (len(reader.read_list(toy_root, reader.TEST_LIST).paths), 8)
    np.testing.assert_allclose(pair, single, rtol=0, atol=1e-6)
    assert open(tmp_path / "pair.paths.txt").read() == open(tmp_path / "single.paths.txt").read()
    shares = [re.search(r"process %d of 2: images (\d+) to (\d+) of (\d+)" % rank, rank_log(tmp_path, rank))
              for rank in (0, 1)]
    assert [int(shares[0].group(1)), int(shares[0].group(2)) + 1] == [0, int(shares[1].group(1))]
    assert "saved %d features" % len(single) in rank_log(tmp_path, 0) and "saved" not in rank_log(tmp_path, 1)


def test_two_processes_build_the_index_one_process_builds(toy_root, tmp_path):
    flags = ["build", "--model=ResNet18", "--image_shape=3,32,32", "--use_gpu=False", "--num_workers=0",
             "--batch_size=4", "--embedding_size=8", "--images=%s" % os.path.join(toy_root, reader.TEST_LIST)]
    search.main(flags + ["--index_dir=%s" % (tmp_path / "single")])
    launch = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node=2",
              "--log_dir=%s" % (tmp_path / "log"), os.path.join(ROOT, "search.py")]
    completed = subprocess.run(launch + flags + ["--index_dir=%s" % (tmp_path / "pair")], cwd=ROOT,
                               capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_SECONDS)
    assert completed.returncode == 0, completed.stderr[-3000:] + worker_logs(tmp_path)

    single, pair = gallery_index.load(str(tmp_path / "single")), gallery_index.load(str(tmp_path / "pair"))
    np.testing.assert_allclose(pair.features, single.features, rtol=0, atol=1e-6)
    assert pair.paths == single.paths and pair.labels == single.labels and pair.model == single.model
    assert "indexed %d images" % len(single.paths) in rank_log(tmp_path, 0)
    assert "process 1 of 2: images" in rank_log(tmp_path, 1) and "indexed" not in rank_log(tmp_path, 1)


def rank_pids(launcher_pid):
    """{rank: pid} of the training processes a launcher started (its children with PADDLE_TRAINER_ID set)."""
    ranks = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/stat" % entry) as stat:
                if int(stat.read().rsplit(")", 1)[1].split()[1]) != launcher_pid:
                    continue
            with open("/proc/%s/environ" % entry, "rb") as environ:
                variables = dict(item.split(b"=", 1) for item in environ.read().split(b"\0") if b"=" in item)
        except (OSError, ValueError, IndexError):
            continue
        if b"PADDLE_TRAINER_ID" in variables:
            ranks[int(variables[b"PADDLE_TRAINER_ID"])] = int(entry)
    return ranks


def launch(command, output_path):
    """Starts the launch; returns (launcher process, its output file)."""
    output = open(output_path, "w")
    return subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT), output


def test_a_killed_process_ends_the_whole_launch_and_the_same_command_resumes(toy_root, tmp_path):
    """kill -9 of one process (the out-of-memory killer, a failed node) must not leave the other one waiting in an
    all-reduce for the 30 minutes of gloo's time-out: the launch ends within seconds, naming the dead rank, and the
    same command line, restarted, resumes from the last checkpoint."""
    save_dir, log_dir = tmp_path / "saved", tmp_path / "log"
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node=2", "--log_dir=%s" % log_dir,
               os.path.join(ROOT, "train_elem.py")] + run_flags(
        toy_root, save_dir, model="ResNet18", loss_name="softmax", class_dim=12, train_batch_size=8,
        total_iter_num=6, save_iter_step=1, lr=0.001, checkpoint="auto")
    launcher, output = launch(command, tmp_path / "first.txt")
    try:
        deadline = time.time() + LAUNCH_TIMEOUT_SECONDS
        while "saved checkpoint %s" % (save_dir / "ResNet18" / "2") not in read_if_exists(log_dir / "workerlog.0"):
            assert launcher.poll() is None and time.time() < deadline, worker_logs(tmp_path)
            time.sleep(0.1)
        ranks = rank_pids(launcher.pid)
        os.kill(ranks[1], signal.SIGKILL)
        killed = time.monotonic()
        launcher.wait(timeout=LAUNCH_TIMEOUT_SECONDS)
        ended_after = time.monotonic() - killed
    finally:
        for pid in rank_pids(launcher.pid).values():
            kill_if_running(pid)
        launcher.kill()
        output.close()
    assert ended_after < 60 and launcher.returncode != 0
    log0 = read_if_exists(log_dir / "workerlog.0")
    assert "--checkpoint=auto: no checkpoint in %s yet: starting from scratch" % (save_dir / "ResNet18") in log0
    # Rank 0 ends with one line naming the dead rank when gloo fails its all-reduce, unless the launcher's SIGKILL
    # came first; the launcher reports rank 1's death, or rank 0's failure with that line.
    errors = [line for line in log0.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in log0 and len(errors) <= 1, log0[-3000:]
    dead = r"rank 1 \(pid %d\) died" % ranks[1]
    assert all(re.fullmatch(r"error: rank 0: a step exchanging data with the other processes failed \(.*\): " + dead,
                            line) for line in errors)
    assert re.search(r"Container rank 1 status failed .* code -9|" + dead, (tmp_path / "first.txt").read_text())
    newest = checkpoint.newest_checkpoint(str(save_dir / "ResNet18"))
    assert int(os.path.basename(newest)) >= 2

    launcher, output = launch(command, tmp_path / "second.txt")
    try:
        launcher.wait(timeout=LAUNCH_TIMEOUT_SECONDS)
    finally:
        launcher.kill()
        output.close()
    log0 = read_if_exists(log_dir / "workerlog.0")
    assert launcher.returncode == 0, log0[-3000:]
    assert "resumed from %s at iteration %s" % (newest, os.path.basename(newest)) in log0
    assert checkpoint.newest_checkpoint(str(save_dir / "ResNet18")) == str(save_dir / "ResNet18" / "6")
