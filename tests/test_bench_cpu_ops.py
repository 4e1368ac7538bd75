"""bench/cpu_ops_speed.py: a tiny run builds the three programs and prints one row from the rounds it timed; the
summary is the medians of each program's rates and of the rounds' ratios."""
import pytest

from bench_tools import load_bench, table_rows
from core import cpu_ops

pytestmark = pytest.mark.skipif(cpu_ops.load() is None, reason="the suite's CPU kernels could not be built here")


def test_summary_takes_the_medians_of_the_rounds_ratios_not_the_ratios_of_medians():
    bench = load_bench("cpu_ops_speed")
    rates = {"suite": [2.0, 4.0, 9.0], "without_conv": [1.0, 8.0, 3.0], "paddle": [1.0, 4.0, 3.0]}
    assert bench.summary(rates) == (4.0, 3.0, 3.0, 2.0, 2.0)


def test_quick_run_prints_a_row_of_the_rounds_it_timed(capsys):
    bench = load_bench("cpu_ops_speed")
    results = bench.main(["--quick"])
    rows = table_rows(capsys.readouterr().out, 9, "model")
    rates = results[("ResNet18", 32, 4, "arcmargin")]
    assert sorted(rates) == sorted(bench.VARIANTS)
    assert all(len(rounds) == 2 and min(rounds) > 0 for rounds in rates.values())
    suite, without_conv, paddle, ratio, conv_gain = bench.summary(rates)
    assert rows == [["ResNet18", "3x32x32", "4", "arcmargin", "%.1f" % suite, "%.1f" % without_conv, "%.1f" % paddle,
                     "%.3f" % ratio, "%.3f" % conv_gain]]


def test_the_variants_differ_in_the_kernels_their_programs_use():
    bench = load_bench("cpu_ops_speed")
    counts = {}
    for variant in bench.VARIANTS:
        program = bench.training_step("ResNet18", 32, 4, "arcmargin", variant).program
        names = [op.name() for op in program.global_block().ops]
        counts[variant] = (names.count("custom_op.conv2d_training"), names.count("custom_op.batch_norm_relu_"))
    assert counts == {"suite": (10, 20), "without_conv": (0, 20), "paddle": (0, 0)}
    assert cpu_ops.CONV_MAX_OUTPUT_PIXELS == bench.VARIANTS["suite"][1]  # restored after each build
