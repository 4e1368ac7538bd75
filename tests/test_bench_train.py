"""bench/train_throughput.py --quick end to end: every configuration gets a row of positive rates and its ratios."""
import pytest

from bench_tools import load_bench, table_rows


def test_quick_run_prints_a_row_per_loss_and_a_feature_row(tmp_path, capsys):
    bench = load_bench("train_throughput")
    bench.main(["--quick", "--torch=False", "--work_dir=%s" % tmp_path])
    output = capsys.readouterr().out
    training = table_rows(output, 13, "model")
    assert [(row[0], row[1], row[3]) for row in training] == [("ResNet18", "3x32x32", "arcmargin"),
                                                              ("ResNet18", "3x32x32", "eml")]
    for row in training:
        fast, e2e, ratio, default, speedup, dynamic = (float(value) for value in row[4:10])
        assert min(fast, e2e, default, dynamic) > 0
        assert ratio == pytest.approx(e2e / fast, abs=0.01) and speedup == pytest.approx(fast / default, abs=0.1)
        assert row[11:] == ["-", "-"]  # no PyTorch asked for
    (features,) = table_rows(output, 8, "model")
    assert features[:3] == ["ResNet18", "3x32x32", "4"] and min(float(value) for value in features[3:6]) > 0


def test_sides_and_batch_sizes_must_pair_up(tmp_path, capsys):
    bench = load_bench("train_throughput")
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--sides=64,224", "--batch_sizes=8", "--work_dir=%s" % tmp_path])
    assert stopped.value.code == 2
    assert "--batch_sizes" in capsys.readouterr().err
