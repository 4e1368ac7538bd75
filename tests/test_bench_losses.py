"""bench/loss_speed.py and bench/loss_recall.py: their runs, their arithmetic and their tables' shape."""
import statistics

import pytest

from bench_tools import load_bench, table_rows


def test_speed_configurations_pair_each_memory_run_with_its_plain_run():
    bench = load_bench("loss_speed")
    runs = bench.configurations(["softmax", "triplet", "eml", "circle"], 64)
    assert [name for name, _, _ in runs] == [
        "softmax", "triplet", "triplet --miner=all", "triplet --miner=all + XBM", "triplet --miner=batch_hard",
        "triplet --miner=batch_hard + XBM", "triplet --miner=semi_hard", "triplet --miner=semi_hard + XBM", "eml",
        "circle", "circle + XBM"]
    plain = {name: flags for name, flags, _ in runs}
    for name, flags, without in runs:
        if without is not None:
            assert flags == dict(plain[without], xbm_size=64, xbm_start_iter=0)
    assert bench.overhead(1.15, 1.0) == pytest.approx(0.15) and bench.overhead(0.9, 1.2) == pytest.approx(-0.25)


def test_speed_quick_run_prints_a_row_per_configuration(tmp_path, capsys):
    """Every cell against the unrounded step and loss times the run measured: at a few milliseconds a step, a
    figure recomputed from the rounded columns can miss the printed one by more than any fixed tolerance."""
    step_times, loss_times = load_bench("loss_speed").main(["--quick", "--work_dir=%s" % tmp_path])
    rows = table_rows(capsys.readouterr().out, 7, "loss")
    assert [row[0] for row in rows] == ["softmax", "contrastive", "contrastive + XBM"]
    step_ms = {name: 1000 * statistics.median(times) for name, times in step_times.items()}
    alone_ms = {name: 1000 * statistics.median(times) for name, times in loss_times.items()}
    images_per_second = {name: 6 / statistics.median(times) for name, times in step_times.items()}  # batch 6
    for name, milliseconds, rate, overhead, alone, own, share in rows:
        assert min(step_ms[name], alone_ms[name]) > 0
        assert [milliseconds, rate, alone] == ["%.1f" % step_ms[name], "%.1f" % images_per_second[name],
                                               "%.1f" % alone_ms[name]]
        assert (overhead == "-") == (own == "-") == (share == "-") == (name != "contrastive + XBM")
    memory, plain = "contrastive + XBM", "contrastive"
    paired = [with_memory / without - 1 for with_memory, without in zip(step_times[memory], step_times[plain])]
    own_ms = alone_ms[memory] - alone_ms[plain]
    assert rows[2][3:] == ["%+.1f%%" % (100 * statistics.median(paired)), "%.1f" % alone_ms[memory],
                           "%.1f" % own_ms, "%.1f%%" % (100 * own_ms / step_ms[plain])]
    assert float(rows[2][3][:-1]) > -100


def test_speed_flags_are_checked(tmp_path, capsys):
    bench = load_bench("loss_speed")
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--batch_size=8", "--work_dir=%s" % tmp_path])
    assert stopped.value.code == 2 and "--batch_size: must be divisible by 6" in capsys.readouterr().err


def test_recall_runs_start_pair_losses_from_arcmargin():
    bench = load_bench("loss_recall")
    runs = bench.runs(["softmax", "npairs", "multisimilarity"], 600, 40)
    assert [(name, script, from_start) for name, script, _, from_start in runs] == [
        ("arcmargin", "train_elem.py", False), ("softmax", "train_elem.py", False),
        ("npairs", "train_pair.py", True), ("multisimilarity", "train_pair.py", True),
        ("multisimilarity + XBM", "train_pair.py", True)]
    assert runs[0][2] == {"loss_name": "arcmargin", "arc_scale": 30}  # the toy budget's scale
    assert bench.shown_flags(runs[-1][2]) == "--xbm_size=600 --xbm_start_iter=40"
    args = bench.parse_args(["--work_dir=/unused"])
    command, iterations = bench.run_flags(args, "train_pair.py", runs[-1][2], 3, "/out", "/start")
    assert iterations == args.pair_iters and "--pretrained_model=/start" in command and "--seed=3" in command
    assert "--xbm_size=600" in command and "--samples_each_class=3" in command
    command, _ = bench.run_flags(args, "train_pair.py", runs[2][2], 0, "/out", "/start")
    assert "--samples_each_class=2" in command  # npairs: an anchor and its positive


def test_recall_quick_run_scores_its_run(tmp_path, capsys):
    """The classifier run alone (train_elem.py, then eval.py): the pair runs are the scripts' own, tested there."""
    rows = load_bench("loss_recall").main(["--quick", "--losses=arcmargin", "--work_dir=%s" % tmp_path])
    table = table_rows(capsys.readouterr().out, 6, "loss")
    assert [row[:4] for row in table] == [["arcmargin", "train_elem.py", "--arc_scale=30", "0"]]
    (_, _, _, _, results), row = rows[0], table[0]
    assert row[4] == "%.1f%%" % (100 * results["recall@1"]) and row[5] == "%.1f%%" % (100 * results["recall@10"])
    assert 0 <= results["recall@1"] <= results["recall@10"] <= 1
