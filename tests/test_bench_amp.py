"""bench/amp_recall.py on a tiny data set with two seeds: every run trains, the loss table's rows are the seeds'
mean logged losses, the Recall@1 table's rows each seed's final figures and their mean, all recomputed here from
the parsed figures."""
import shutil

import numpy as np
import pytest

from bench_tools import load_bench, table_rows
from script_tools import CPU_BFLOAT16, needs_cpu_bfloat16


@needs_cpu_bfloat16
def test_quick_run_compares_the_curves_and_recalls_of_each_seed(tmp_path, capsys):
    bench = load_bench("amp_recall")
    curves, recalls = bench.main(["--quick", "--work_dir=%s" % tmp_path])
    output = capsys.readouterr().out
    assert sorted(curves["float32"]) == sorted(curves["bfloat16"]) == [0, 1]
    for dtype in ("float32", "bfloat16"):
        for seed in (0, 1):
            assert sorted(curves[dtype][seed]) == [2, 4]
            assert (tmp_path / ("%s_seed%d.log" % (dtype, seed))).is_file()
            assert 0 <= recalls[dtype][seed] <= 1

    loss_table, recall_table = output.split("Recall@1 after")
    loss_rows = [row for row in table_rows(loss_table, 4, "iteration") if row[0].isdigit()]
    assert [int(row[0]) for row in loss_rows] == [2, 4]
    for iteration, shown_float32, shown_bfloat16, difference in loss_rows:
        float32, bfloat16 = ((curves[dtype][0][int(iteration)] + curves[dtype][1][int(iteration)]) / 2
                             for dtype in ("float32", "bfloat16"))
        assert (shown_float32, shown_bfloat16) == ("%.4f" % float32, "%.4f" % bfloat16)
        assert difference == "%+.2f%%" % (100 * (bfloat16 - float32) / abs(float32))

    recall_rows = table_rows(recall_table, 4, "seed")
    assert [row[0] for row in recall_rows] == ["0", "1", "mean"]
    for seed, shown_float32, shown_bfloat16, points in recall_rows[:2]:
        float32, bfloat16 = recalls["float32"][int(seed)], recalls["bfloat16"][int(seed)]
        assert (shown_float32, shown_bfloat16) == ("%.2f%%" % (100 * float32), "%.2f%%" % (100 * bfloat16))
        assert points == "%+.2f points" % (100 * (bfloat16 - float32))
    float32, bfloat16 = ((recalls[dtype][0] + recalls[dtype][1]) / 2 for dtype in ("float32", "bfloat16"))
    assert recall_rows[2][1:] == ["%.2f%%" % (100 * float32), "%.2f%%" % (100 * bfloat16),
                                  "%+.2f points" % (100 * (bfloat16 - float32))]
    assert "bf16 - fp32 over 2 seeds: %+.2f points" % (100 * (bfloat16 - float32)) in output

    # Resumed with one more seed: the four finished runs are read back from their logs (their checkpoints, removed
    # here, are not made again), only seed 2 trains, and the tables cover all three seeds.
    for dtype in ("float32", "bfloat16"):
        for seed in (0, 1):
            shutil.rmtree(tmp_path / ("%s_seed%d" % (dtype, seed)))
    resumed_curves, resumed_recalls = bench.main(["--quick", "--seeds=0,1,2", "--reuse_logs=True",
                                                  "--work_dir=%s" % tmp_path])
    assert "bf16 - fp32 over 3 seeds" in capsys.readouterr().out
    for dtype in ("float32", "bfloat16"):
        assert {seed: resumed_curves[dtype][seed] for seed in (0, 1)} == curves[dtype]
        assert {seed: resumed_recalls[dtype][seed] for seed in (0, 1)} == recalls[dtype]
        assert sorted(resumed_curves[dtype][2]) == [2, 4]
        assert [(tmp_path / ("%s_seed%d" % (dtype, seed))).is_dir() for seed in (0, 1, 2)] == [False, False, True]


def test_only_the_log_of_a_finished_run_of_the_same_command_is_read_back(tmp_path):
    bench = load_bench("amp_recall")
    log_path, header = str(tmp_path / "float32_seed0.log"), "$ python train_elem.py --seed=0\n"
    assert bench.finished_run_output(log_path, header) is None  # no log yet
    output = "trainbatch 4, lr 0.05, loss 9.5\ntest_img_num 8, trainbatch 4, test_recall 0.25\n"
    for kept, read_back in [(header + output + "exit status: 0\n", output),
                            (header + output + "exit status: 1\n", None),  # a failed run
                            ("$ python train_elem.py --seed=1\n" + output + "exit status: 0\n", None),  # other flags
                            (output, None),  # a log of the version of the script that kept no header
                            (header + output, None)]:  # cut short
        with open(log_path, "w") as log_file:
            log_file.write(kept)
        assert bench.finished_run_output(log_path, header) == read_back


def test_the_difference_summary_is_the_seeds_mean_and_its_standard_error():
    """Last stop's 6 published seeds: differences +4.46, -5.29, +3.47, -4.13, +0.06, +0.50 points."""
    bench = load_bench("amp_recall")
    differences = [4.46, -5.29, 3.47, -4.13, 0.06, 0.50]
    rows = [(str(seed), 0.3, 0.3 + points / 100, points) for seed, points in enumerate(differences)]
    mean_difference, deviation, error, (low, high) = bench.difference_summary(rows + [("mean", 0.3, 0.3, -0.155)])
    centred = np.array(differences) - np.mean(differences)
    assert mean_difference == pytest.approx(-0.155)
    assert deviation == pytest.approx(np.sqrt(np.sum(centred ** 2) / 5))  # 3.92, as docs/benchmarks.md has it
    assert error == pytest.approx(deviation / np.sqrt(6))  # 1.60
    assert (low, high) == pytest.approx((-0.155 - 1.96 * error, -0.155 + 1.96 * error))
    assert bench.difference_summary(rows[:1]) == (4.46, None, None, None)


@pytest.mark.skipif(CPU_BFLOAT16, reason="this CPU runs bfloat16 (test_quick_run_compares_...)")
def test_a_cpu_without_bfloat16_stops_before_training(tmp_path):
    with pytest.raises(SystemExit) as stopped:
        load_bench("amp_recall").main(["--quick", "--work_dir=%s" % tmp_path])
    assert stopped.value.code == ("amp_recall.py: bfloat16 on CPU needs AVX512, which this CPU lacks "
                                  "(paddle.amp.is_bfloat16_supported('cpu') is False), so there is nothing to compare")
    assert list(tmp_path.iterdir()) == []
