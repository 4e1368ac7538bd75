"""bench/train_throughput.py --quick end to end: every configuration gets a row of positive rates and its ratios.

The ratios are checked against the unrounded medians the benchmark measured, never against its rounded columns:
at low rates the rounding alone moves a ratio of rounded figures past any tolerance."""
import pytest

from bench_tools import load_bench, table_rows
from script_tools import CPU_BFLOAT16


def test_quick_run_prints_a_row_per_loss_and_a_feature_row(tmp_path, capsys):
    bench = load_bench("train_throughput")
    (group,), torch_rates = bench.main(["--quick", "--torch=False", "--work_dir=%s" % tmp_path])
    output = capsys.readouterr().out
    assert torch_rates == {}
    training = table_rows(output, 13, "model")
    assert [(row[0], row[1], row[3]) for row in training] == [("ResNet18", "3x32x32", "arcmargin"),
                                                              ("ResNet18", "3x32x32", "eml")]
    for row in training:
        loss = row[3]
        fast, e2e = group.median((loss, "oneDNN")), group.median((loss, "end to end"))
        default, dynamic = group.median((loss, "default")), group.median((loss, "dynamic"))
        assert min(fast, e2e, default, dynamic) > 0
        assert row[4:11] == ["%.1f" % fast, "%.1f" % e2e, "%.2f" % (e2e / fast), "%.1f" % default,
                             "%.1f" % (fast / default), "%.1f" % dynamic, "%.1f" % (fast / dynamic)]
        assert row[11:] == ["-", "-"]  # no PyTorch asked for
    bfloat16 = table_rows(output, 10, "model")
    if not CPU_BFLOAT16:
        assert bfloat16 == [] and "bfloat16 AMP: not timed (--bf16=False, the default where" in output
    else:
        assert [row[3] for row in bfloat16] == ["arcmargin", "eml"]
    for row in bfloat16:
        fast, low = group.median((row[3], "oneDNN")), group.median((row[3], "bfloat16"))
        assert low > 0 and row[4:7] == ["%.1f" % fast, "%.1f" % low, "%.2f" % (low / fast)]
        assert row[7:] == ["-", "-", "-"]
    (features,) = table_rows(output, 8, "model")
    assert features[:3] == ["ResNet18", "3x32x32", "4"] and min(float(value) for value in features[3:6]) > 0


@pytest.mark.skipif(CPU_BFLOAT16, reason="this CPU runs bfloat16")
def test_bf16_asked_for_on_a_cpu_without_it_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        load_bench("train_throughput").main(["--quick", "--bf16=True", "--work_dir=%s" % tmp_path])
    assert stopped.value.code == 2
    assert "--bf16: bfloat16 on CPU needs AVX512, which this CPU lacks" in capsys.readouterr().err


def test_sides_and_batch_sizes_must_pair_up(tmp_path, capsys):
    bench = load_bench("train_throughput")
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--sides=64,224", "--batch_sizes=8", "--work_dir=%s" % tmp_path])
    assert stopped.value.code == 2
    assert "--batch_sizes" in capsys.readouterr().err
