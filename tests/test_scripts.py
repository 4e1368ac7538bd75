"""The four scripts and export_model.py end to end on a tiny toy data set: train, resume, evaluate, infer, export."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import paddle
import pytest

import eval as eval_script
import export_model
import infer
import losses
import reader
import train_elem
import train_pair
import utility
from core import samplers, weights

import script_tools
from script_tools import ROOT, train_flags

TINY = script_tools.TINY + ["--num_workers=1"]


def logged_losses(output):
    return [float(value) for value in re.findall(r"trainbatch \d+, lr [\d.]+, loss ([-\d.e]+)", output)]


@pytest.mark.parametrize("script, loss_name, extra", [
    (train_elem, "softmax", {"class_dim": 12}),
    (train_elem, "arcmargin", {"class_dim": 12, "arc_scale": 16}),
    (train_pair, "triplet", {}),
    (train_pair, "quadruplet", {}),
    (train_pair, "eml", {}),
    (train_pair, "npairs", {}),
    (train_pair, "multisimilarity", {"ms_epsilon": 2.5}),
    (train_elem, "cosface", {"class_dim": 12, "cos_scale": 16}),
    (train_elem, "proxyanchor", {"class_dim": 12}),
    (train_pair, "contrastive", {}),
    (train_pair, "circle", {}),
    (train_pair, "triplet", {"miner": "batch_hard"}),
])
def test_each_loss_trains_through_its_script(toy_root, tmp_path, capsys, script, loss_name, extra):
    script.main(train_flags(toy_root, tmp_path, loss_name, 2, test_iter_step=2, **extra))
    output = capsys.readouterr().out
    losses_seen = logged_losses(output)
    assert len(losses_seen) == 2 and all(np.isfinite(losses_seen))
    if script is train_elem:
        assert re.search(r"trainbatch 2, lr 0.010000, loss [\d.]+, acc1 [\d.]+, acc5 [\d.]+, time [\d.]+ sec", output)
    else:
        assert re.search(r"trainbatch 2, lr 0.010000, loss [\d.]+, recall [\d.]+, time [\d.]+ sec", output)
    assert re.search(r"test_img_num %d, trainbatch 2, test_recall [\d.]+" % num_test_images(toy_root), output)
    assert os.path.isfile(os.path.join(tmp_path, "ResNet18", "2", "model.pdparams"))


def num_test_images(toy_root):
    return len(reader.read_image_list(os.path.join(toy_root, reader.TEST_LIST)).paths)


def test_resume_continues_the_same_loss_sequence(toy_root, tmp_path, capsys):
    train_pair.main(train_flags(toy_root, tmp_path / "straight", "eml", 4, rotate=True))
    straight = logged_losses(capsys.readouterr().out)
    train_pair.main(train_flags(toy_root, tmp_path / "split", "eml", 2, rotate=True))
    first_half = logged_losses(capsys.readouterr().out)
    train_pair.main(train_flags(toy_root, tmp_path / "split", "eml", 4, rotate=True,
                                checkpoint=tmp_path / "split" / "ResNet18" / "2"))
    output = capsys.readouterr().out
    assert "resumed from" in output and "at iteration 2" in output
    assert first_half + logged_losses(output) == straight
    state = json.load(open(tmp_path / "split" / "ResNet18" / "4" / "trainer_state.json"))
    assert state["iteration"] == 4 and state["lr_scheduler"]["last_epoch"] == 4


def test_resume_with_the_cross_batch_memory_continues_the_same_loss_sequence(toy_root, tmp_path, capsys):
    """The memory (two batches, filled from iteration 2 on) is in the checkpoint and comes back exactly."""
    memory = dict(loss_name="contrastive", xbm_size=12, xbm_start_iter=1, contrastive_neg_margin=0.0)
    train_pair.main(train_flags(toy_root, tmp_path / "straight", iterations=4, **memory))
    straight = logged_losses(capsys.readouterr().out)
    train_pair.main(train_flags(toy_root, tmp_path / "split", iterations=2, **memory))
    first_half = logged_losses(capsys.readouterr().out)
    saved = weights.read_program_state(str(tmp_path / "split" / "ResNet18" / "2" / "model"))
    assert (saved["xbm_labels"] >= 0).sum() == 6 and saved["xbm_step"].tolist() == [2]  # iteration 2's batch
    train_pair.main(train_flags(toy_root, tmp_path / "split", iterations=4,
                                checkpoint=tmp_path / "split" / "ResNet18" / "2", **memory))
    assert first_half + logged_losses(capsys.readouterr().out) == straight


def logged_learning_rates(output):
    return [float(value) for value in re.findall(r"trainbatch \d+, lr ([\d.]+),", output)]


def test_resume_inside_the_warm_up_continues_the_cosine_schedule(toy_root, tmp_path, capsys):
    schedule = dict(class_dim=12, lr=0.04, lr_strategy="cosine_decay", warmup_iter_num=2, num_workers=0)
    train_elem.main(train_flags(toy_root, tmp_path / "straight", "softmax", 5, save_iter_step=1, **schedule))
    straight = capsys.readouterr().out
    train_elem.main(train_flags(toy_root, tmp_path / "resumed", "softmax", 5,
                                checkpoint=tmp_path / "straight" / "ResNet18" / "1", **schedule))
    resumed = capsys.readouterr().out
    assert logged_learning_rates(straight) == pytest.approx([0.0, 0.02, 0.04, 0.03, 0.01], abs=1e-6)
    assert logged_learning_rates(resumed) == logged_learning_rates(straight)[1:]
    assert logged_losses(resumed) == logged_losses(straight)[1:]
    without_warm_up = dict(schedule, warmup_iter_num=0)
    with pytest.raises(SystemExit) as caught:
        train_elem.main(train_flags(toy_root, tmp_path / "resumed", "softmax", 5,
                                    checkpoint=tmp_path / "straight" / "ResNet18" / "1", **without_warm_up))
    assert caught.value.code == 2
    assert "was saved by a run with a warm-up; resume with the flags" in capsys.readouterr().err


def test_the_best_test_recall_keeps_its_checkpoint_and_eval_scores_it_the_same(toy_root, tmp_path, capsys):
    flags = train_flags(toy_root, tmp_path, "softmax", 5, class_dim=12, lr=0.05, test_iter_step=1, save_iter_step=2,
                        num_workers=0)
    train_elem.main(flags[:-1] + ["--total_iter_num=3"])
    train_elem.main(flags + ["--checkpoint=%s" % (tmp_path / "ResNet18" / "2")])
    output = capsys.readouterr().out
    recalls = [float(value) for value in re.findall(r"trainbatch \d+, test_recall ([\d.]+)", output)]
    assert len(recalls) == 6  # iterations 1, 2, 3, then 3, 4, 5 again after resuming at 2
    first_run, resumed = recalls[:3], recalls[3:]
    assert resumed[0] == first_run[2]  # the resumed run repeats iteration 3 exactly
    improvements = [recall for index, recall in enumerate(first_run) if recall > max(first_run[:index], default=-1)]
    best_before_resume = max(first_run[:2])  # what the checkpoint of iteration 2 knew
    improvements += [recall for index, recall in enumerate(resumed)
                     if recall > max([best_before_resume] + resumed[:index])]
    assert output.count("saved best checkpoint") == len(improvements)
    state = json.load(open(tmp_path / "ResNet18" / "best" / "trainer_state.json"))
    best = max([best_before_resume] + resumed)
    assert state["test_recall"] == pytest.approx(best, abs=1e-5) == state["best_test_recall"]
    by_iteration = {int(iteration): float(recall) for iteration, recall in
                    re.findall(r"trainbatch (\d+), test_recall ([\d.]+)", output)}  # the resumed run's last
    assert by_iteration[state["iteration"]] == pytest.approx(best, abs=1e-5)
    eval_script.main(TINY + ["--data_dir=%s" % toy_root, "--pretrained_model=%s" % (tmp_path / "ResNet18" / "best"),
                             "--batch_size=16", "--recall_k=1"])
    assert "| Recall@1 | %.4f |" % best in capsys.readouterr().out
    train_elem.main(train_flags(toy_root, tmp_path / "none", "softmax", 1, class_dim=12, test_iter_step=1,
                                save_best=False, num_workers=0))
    assert "saved best" not in capsys.readouterr().out and not os.path.exists(tmp_path / "none" / "ResNet18" / "best")


def test_the_periodic_test_scores_the_test_list_it_is_given(toy_root, tmp_path, capsys):
    lines = open(os.path.join(toy_root, reader.TEST_LIST)).read().splitlines()
    validation = tmp_path / "validation.txt"  # paths inside the list stay relative to --data_dir
    validation.write_text("\n".join(lines[:11]) + "\n")
    train_elem.main(train_flags(toy_root, tmp_path, "softmax", 1, class_dim=12, test_iter_step=1, num_workers=0,
                                test_list=validation))
    assert "test_img_num 10, trainbatch 1," in capsys.readouterr().out
    code, _, err = script_tools.run_main(train_elem, train_flags(toy_root, tmp_path / "missing", "softmax", 1,
                                                                 class_dim=12, test_list="Ebay_val.txt"), capsys)
    assert code == 1 and script_tools.error_line(err).startswith("error: %s: cannot read the list file"
                                                                 % os.path.join(toy_root, "Ebay_val.txt"))
    assert not os.path.exists(tmp_path / "missing" / "ResNet18" / "1")  # stopped before training


def test_pair_training_starts_from_the_elem_checkpoint(toy_root, tmp_path, capsys):
    train_elem.main(train_flags(toy_root, tmp_path / "elem", "arcmargin", 1, class_dim=12, embedding_size=16))
    capsys.readouterr()
    # --checkpoint=auto with --pretrained_model: what a supervisor restarts; the first run starts from the weights
    pair_flags = train_flags(toy_root, tmp_path / "pair", "eml", 1, embedding_size=16, checkpoint="auto",
                             pretrained_model=tmp_path / "elem" / "ResNet18" / "1")
    train_pair.main(pair_flags)
    output = capsys.readouterr().out
    assert "--checkpoint=auto: no checkpoint in %s yet: starting from --pretrained_model" % (
        tmp_path / "pair" / "ResNet18") in output
    # every backbone and embedding variable loads; the arcmargin class weights are the one unused entry
    assert re.search(r"loaded \d+, missing 0, shape-mismatched 0, unused 1", output)
    train_pair.main(pair_flags + ["--total_iter_num=2"])  # a restart resumes instead
    output = capsys.readouterr().out
    assert "resumed from %s at iteration 1" % (tmp_path / "pair" / "ResNet18" / "1") in output
    assert not re.search(r"loaded \d+, missing", output) and "trainbatch 2," in output
    train_pair.main(pair_flags + ["--total_iter_num=2"])  # once more: the training is complete, nothing to do
    output = capsys.readouterr().out
    assert "resumed from %s at iteration 2" % (tmp_path / "pair" / "ResNet18" / "2") in output
    assert "trainbatch" not in output and "saved checkpoint" not in output


@pytest.fixture(scope="module")
def trained_checkpoint(toy_root, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("trained")
    train_elem.main(train_flags(toy_root, save_dir, "softmax", 2, class_dim=12, embedding_size=8))
    return str(save_dir / "ResNet18" / "2")


def feature_flags(toy_root, checkpoint_dir, batch_size):
    return TINY + ["--embedding_size=8", "--data_dir=%s" % toy_root, "--pretrained_model=%s" % checkpoint_dir,
                   "--batch_size=%d" % batch_size]


def brute_force_recall(features, labels, k):
    normalised = features / np.linalg.norm(features, axis=1, keepdims=True)
    distances = ((normalised[:, None, :] - normalised[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    nearest = np.argsort(distances, axis=1)[:, :k]
    return np.mean([(labels[row] == labels[i]).any() for i, row in enumerate(nearest)])


def test_eval_recall_matches_brute_force_on_infer_features(toy_root, trained_checkpoint, tmp_path, capsys):
    features_path = str(tmp_path / "features.npy")
    infer.main(feature_flags(toy_root, trained_checkpoint, 5) + ["--save_features=%s" % features_path])
    output = capsys.readouterr().out
    assert re.search(r"Test-0-feature: \[[-\d. e]+\]", output)
    features = np.load(features_path)
    paths = open(features_path[:-4] + ".paths.txt").read().split("\n")[:-1]
    test_list = reader.read_image_list(os.path.join(toy_root, reader.TEST_LIST))
    assert features.shape == (len(test_list.paths), 8) and paths == test_list.paths

    results = eval_script.main(feature_flags(toy_root, trained_checkpoint, 7) + ["--recall_k=1,2,5,100"])
    output = capsys.readouterr().out
    for k in (1, 2, 5, 100):
        assert results["recall@%d" % k] == pytest.approx(brute_force_recall(features, test_list.class_ids, k))
    assert re.search(r"End test %d, test_recall %.5f" % (len(features), results["recall@1"]), output)
    assert "| Recall@5 | %.4f |" % results["recall@5"] in output and "| MAP@R |" in output
    # 100 reaches past the other test images: marked, with a note that says why it is (nearly) 1
    assert "| Recall@100 | %.4f * |" % results["recall@100"] in output
    assert "* K is at least the %d images each query searches" % (len(features) - 1) in output


def test_without_weights_eval_scores_the_same_random_network_every_run(toy_root, capsys):
    flags = TINY + ["--embedding_size=8", "--data_dir=%s" % toy_root, "--batch_size=16", "--recall_k=1,4"]
    eval_script.main(flags)
    first = capsys.readouterr().out
    eval_script.main(flags)
    second = capsys.readouterr().out
    assert "no --pretrained_model: using randomly initialised weights" in first
    table = [line for line in first.splitlines() if line.startswith("| Recall@")]
    assert len(table) == 2 and table == [line for line in second.splitlines() if line.startswith("| Recall@")]


def test_exported_model_gives_infer_features(toy_root, trained_checkpoint, tmp_path, capsys):
    features_path = str(tmp_path / "features.npy")
    # The exported program runs on Paddle's default kernels here: infer.py uses them too, for the same rounding.
    infer.main(feature_flags(toy_root, trained_checkpoint, 4) + ["--save_features=%s" % features_path,
                                                                 "--use_mkldnn=False"])
    export_dir = str(tmp_path / "exported")
    export_model.main(feature_flags(toy_root, trained_checkpoint, 1) + ["--model_save_dir=%s" % export_dir])
    assert sorted(os.listdir(export_dir)) == ["inference.json", "inference.pdiparams"]
    paddle.enable_static()
    executor = paddle.static.Executor(paddle.CPUPlace())
    program, feed_names, fetch_targets = paddle.static.load_inference_model(os.path.join(export_dir, "inference"),
                                                                            executor)
    exported = [np.asarray(executor.run(program, feed={feed_names[0]: images}, fetch_list=fetch_targets)[0])
                for images, _ in reader.eval_batches(reader.read_list(toy_root, reader.TEST_LIST), 9, (3, 32, 32),
                                                            num_workers=0)]
    np.testing.assert_allclose(np.concatenate(exported), np.load(features_path), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("script, flags", [
    ("train_elem.py", ["--loss_name", "--arc_margin", "--class_dim", "--lr_steps", "--checkpoint", "--cos_margin",
                       "--proxy_lr_mult"]),
    ("train_pair.py", ["--loss_name", "--samples_each_class", "--margin", "--npairs_reg_lambda", "--miner",
                       "--xbm_size", "--xbm_start_iter", "--contrastive_neg_margin", "--circle_gamma"]),
    ("eval.py", ["--batch_size", "--recall_k", "--pretrained_model"]),
    ("infer.py", ["--batch_size", "--save_features"]),
    ("export_model.py", ["--model_save_dir", "--pretrained_model"]),
])
def test_every_script_has_help(script, flags):
    result = subprocess.run([sys.executable, os.path.join(ROOT, script), "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0
    for flag in flags + ["--model", "--use_gpu"]:
        assert flag in result.stdout


@pytest.mark.parametrize("script, flags, message", [
    (train_elem, ["--loss_name=eml"], "--loss_name: 'eml' is not one of softmax, arcmargin"),
    (train_pair, ["--loss_name=softmax"], "--loss_name: 'softmax' is not one of triplet"),
    (train_elem, ["--model=ResNet51"], "--model: 'ResNet51' is not one of"),
    (train_elem, ["--lr_steps=300,200"], "--lr_steps: must be strictly increasing"),
    (train_elem, ["--train_batch_size=0"], "--train_batch_size: must be positive"),
    (train_elem, ["--lr_strategy=step"], "--lr_strategy: 'step' is not one of piecewise_decay, cosine_decay"),
    (train_elem, ["--warmup_iter_num=30000"], "--warmup_iter_num: must be in [0, --total_iter_num=30000)"),
    (train_elem, ["--warmup_iter_num=15000"], "--lr_steps: the learning rate cannot decay during the warm-up"),
    (train_pair, ["--loss_name=npairs", "--samples_each_class=3", "--train_batch_size=6"],
     "--samples_each_class=3: npairs needs --samples_each_class=2"),
    (train_pair, ["--loss_name=eml", "--train_batch_size=7"], "--train_batch_size=7 is not divisible"),
    (train_pair, ["--loss_name=triplet", "--train_batch_size=8"], "--train_batch_size=8 is not divisible by 3"),
    (eval_script, ["--recall_k=0"], "--recall_k: needs positive integers"),
    (train_elem, ["--loss_name=proxyanchor", "--proxy_lr_mult=0"], "--proxy_lr_mult: must be positive"),
    (train_elem, ["--loss_name=cosface", "--cos_margin=-0.1"], "--cos_margin: must not be negative"),
    (train_pair, ["--loss_name=circle", "--circle_margin=1.5"], "--circle_margin: must be in [0, 1)"),
    (train_pair, ["--loss_name=contrastive", "--contrastive_neg_margin=2"], "--contrastive_neg_margin: must be a "
                                                                             "cosine similarity in [-1, 1]"),
    (train_pair, ["--loss_name=triplet", "--miner=hardest"], "--miner: 'hardest' is not one of none, batch_hard"),
    (train_pair, ["--loss_name=contrastive", "--miner=all"], "--miner=all: not a flag of the contrastive loss"),
    (train_pair, ["--loss_name=eml", "--xbm_size=512"], "--xbm_size=512: not a flag of the eml loss; it works with "
                                                        "triplet, multisimilarity, contrastive, circle"),
    (train_pair, ["--loss_name=circle", "--xbm_size=100"], "--xbm_size=100 is smaller than --train_batch_size=120"),
    (train_pair, ["--loss_name=triplet", "--xbm_size=1200"], "--xbm_size=1200: the triplet loss keeps a memory only "
                                                             "with --miner="),
    (train_pair, ["--loss_name=multisimilarity", "--xbm_weight=0"], "--xbm_weight: must be positive"),
])
def test_invalid_flags_exit_2_naming_the_flag(capsys, script, flags, message):
    with pytest.raises(SystemExit) as caught:
        script.main(TINY + flags)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_class_dim_below_the_data_is_a_flag_error(toy_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        train_elem.main(train_flags(toy_root, tmp_path, "softmax", 1, class_dim=5))
    assert caught.value.code == 2
    assert "--class_dim=5 is too small" in capsys.readouterr().err


def child_pids(pid):
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open("/proc/%s/stat" % entry).read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry))
    return children


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(toy_root, tmp_path):
    command = [sys.executable, os.path.join(ROOT, "train_pair.py")] + train_flags(
        toy_root, tmp_path, "eml", 100000) + ["--num_workers=2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "trainbatch 2," in line:
            break
    workers = child_pids(process.pid)
    assert len(workers) >= 2, "the reader's worker processes"
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=60)
    output = "".join(lines) + rest
    assert process.returncode == 128 + signal.SIGINT, output
    assert "Traceback" not in output
    match = re.search(r"stopped by SIGINT at iteration (\d+); resume with --checkpoint=(\S+)", output)
    assert match, output
    assert os.path.isfile(os.path.join(match.group(2), "trainer_state.json"))
    assert json.load(open(os.path.join(match.group(2), "trainer_state.json")))["iteration"] == int(match.group(1))
    deadline = time.monotonic() + 60  # a bound for a loaded machine: workers normally go within a second
    while [pid for pid in workers if os.path.exists("/proc/%d" % pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if os.path.exists("/proc/%d" % pid)]


def test_the_originals_command_lines_and_log_lines(toy_root, tmp_path, capsys):
    """train_pair.py takes --class_dim (and leaves it unused), train_elem.py --enable_ce prints the original's kpis
    lines, and test passes not on a terminal log `testbatch N, time T sec` every 20 batches."""
    train_elem.main(train_flags(toy_root, tmp_path / "elem", "softmax", 2, class_dim=12, enable_ce=True,
                                test_batch_size=1, test_iter_step=2))
    output = capsys.readouterr().out
    losses_seen = logged_losses(output)
    kpis_cost = float(re.search(r"^kpis\ttrain_cost\t([\d.]+)$", output, re.MULTILINE).group(1))
    assert kpis_cost == pytest.approx(losses_seen[-1], abs=5e-7)  # the last logged loss, as the original's
    recall = float(re.search(r"test_img_num \d+, trainbatch 2, test_recall ([\d.]+)", output).group(1))
    kpis_recall = float(re.search(r"^kpis\ttest_recall\t([\d.]+)$", output, re.MULTILINE).group(1))
    assert kpis_recall == pytest.approx(recall, abs=5e-6)
    tested = [int(batch) for batch in re.findall(r"\] testbatch (\d+), time [\d.]+ sec", output)]
    assert tested == list(range(0, num_test_images(toy_root), 20))  # one line per 20 batches of one image
    train_pair.main(train_flags(toy_root, tmp_path / "pair", "eml", 1, class_dim=11318))
    assert len(logged_losses(capsys.readouterr().out)) == 1


class MeanGapLoss(losses.Loss):
    """A throw-away loss registered by one test: mean distance to the batch's positives minus a scaled mean distance
    to its negatives. It exists to show that a loss is one class plus one registry entry."""

    name = "mean_gap"
    batch_layout = samplers.CLASS_BALANCED
    flags = (losses.SAMPLES_EACH_CLASS,
             utility.Flag("gap_weight", float, 1.0, "mean_gap: weight of the negatives' term.", utility.positive))

    def __init__(self, samples_each_class, gap_weight):
        self.samples_each_class = samples_each_class
        self.gap_weight = gap_weight

    @classmethod
    def from_flags(cls, args, batch_size):
        return cls(args.samples_each_class, args.gap_weight)

    def loss(self, input, label):
        from losses import commonfunc
        distance = commonfunc.pairwise_squared_distance(commonfunc.l2_normalize(input))
        return (commonfunc.masked_mean(distance, commonfunc.positive_mask(label))
                - self.gap_weight * commonfunc.masked_mean(distance, commonfunc.negative_mask(label)))


def test_a_loss_is_one_class_and_one_registry_entry(toy_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(losses.LOSSES, MeanGapLoss.name, MeanGapLoss)
    assert "--gap_weight" in train_pair.make_parser().format_help()
    assert "mean_gap" not in train_elem.make_parser().format_help()  # no classifier head: not train_elem's
    train_pair.main(train_flags(toy_root, tmp_path, "mean_gap", 2, gap_weight=0.5, samples_each_class=3))
    output = capsys.readouterr().out
    assert len(logged_losses(output)) == 2 and all(np.isfinite(logged_losses(output)))
    assert re.search(r"trainbatch 2, lr [\d.]+, loss [-\d.]+, recall [\d.]+", output)
    with pytest.raises(SystemExit) as caught:
        train_pair.main(train_flags(toy_root, tmp_path, "mean_gap", 2, gap_weight=0))
    assert caught.value.code == 2 and "--gap_weight: must be positive, got 0.0" in capsys.readouterr().err


def test_flags_that_do_not_fit_the_data_stop_before_anything_is_written(toy_root, tmp_path, capsys):
    """train_pair.py's default batch (60 classes of 2) on 12 classes, and a test step past the last iteration: one
    line, exit 2, and no save directory, lock or run configuration left behind."""
    for flags, message in [
            (["--loss_name=eml", "--train_batch_size=120"], "--train_batch_size=120 / --samples_each_class=2 needs "
                                                            "60 classes per batch, but only 12 classes have at least "
                                                            "2 images (classes of %s/Ebay_train.txt)" % toy_root),
            (["--test_iter_step=5"], "--test_iter_step: 5 is more than --total_iter_num=2: no test would run and no "
                                     "best/ be kept; pass --test_iter_step=2 or less, or 0 to train without testing")]:
        code, out, err = script_tools.run_main(train_pair, train_flags(toy_root, tmp_path / "out", "eml", 2) + flags,
                                               capsys)
        assert code == 2 and script_tools.error_line(err) == "error: " + message
        assert not os.path.exists(tmp_path / "out")


def test_a_class_dim_far_above_the_classes_is_a_warning(toy_root, tmp_path, capsys):
    train_elem.main(train_flags(toy_root, tmp_path, "softmax", 1, class_dim=11318))
    assert ("warning: --class_dim=11318, but the training labels need only 12 outputs: 11306 of the classifier's are "
            "never a target; pass --class_dim=12 (classes of %s/Ebay_train.txt)" % toy_root) in capsys.readouterr().err


def test_infer_takes_any_list_or_folder_of_images(toy_root, trained_checkpoint, tmp_path, capsys):
    """--list (SOP format or plain paths, relative to the list) and --image_dir give the test list's features of the
    same images; with --save_features the per-batch line is printed every 20 batches only."""
    everything = str(tmp_path / "all.npy")
    infer.main(feature_flags(toy_root, trained_checkpoint, 1) + ["--save_features=%s" % everything])
    output = capsys.readouterr().out
    test_paths = reader.read_list(toy_root, reader.TEST_LIST).paths
    assert [int(batch) for batch in re.findall(r"Test-(\d+)-feature", output)] == list(range(0, len(test_paths), 20))
    by_path = dict(zip(test_paths, np.load(everything)))
    folder = tmp_path / "my_photos"
    copies = {}
    for index, path in enumerate(test_paths[:6]):  # a folder with sub-folders and a file that is no image
        copies[str(folder / ("shelf_%d" % (index % 2)) / ("photo_%d.jpg" % index))] = path
        os.makedirs(os.path.dirname(list(copies)[-1]), exist_ok=True)
        shutil.copy(path, list(copies)[-1])
    (folder / "notes.txt").write_text("not an image")
    by_path.update({copy: by_path[path] for copy, path in copies.items()})
    plain = tmp_path / "mine.txt"
    plain.write_text("".join(os.path.relpath(path, str(tmp_path)) + "\n" for path in test_paths[5:12]))
    for flag, expected in [("--image_dir=%s" % folder, sorted(copies)), ("--list=%s" % plain, test_paths[5:12]),
                           ("--list=%s" % os.path.join(toy_root, reader.TEST_LIST), test_paths)]:
        saved = str(tmp_path / "some.npy")
        infer.main(feature_flags(toy_root, trained_checkpoint, 4) + [flag, "--save_features=%s" % saved])
        assert open(saved[:-4] + ".paths.txt").read().split("\n")[:-1] == expected, flag
        np.testing.assert_allclose(np.load(saved), [by_path[path] for path in expected], rtol=1e-5, atol=1e-6)
    code, _, err = script_tools.run_main(infer, TINY + ["--list=%s" % plain, "--image_dir=%s" % folder], capsys)
    assert code == 2 and script_tools.error_line(err) == "error: --list: give --list or --image_dir, not both"
