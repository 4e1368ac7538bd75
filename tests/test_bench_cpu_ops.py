"""bench/cpu_ops_speed.py: a tiny run builds the four programs and prints one row from the rounds it timed; the
summary is the medians of each program's rates and of the rounds' ratios."""
import pytest

from bench_tools import load_bench, table_rows
from core import cpu_ops

pytestmark = pytest.mark.skipif(cpu_ops.load() is None, reason="the suite's CPU kernels could not be built here")


def test_summary_takes_the_medians_of_the_rounds_ratios_not_the_ratios_of_medians():
    bench = load_bench("cpu_ops_speed")
    rates = {"suite": [2.0, 4.0, 9.0], "without_conv": [1.0, 8.0, 3.0], "without_join": [4.0, 2.0, 3.0],
             "paddle": [1.0, 4.0, 3.0]}
    # Ratios by round: to Paddle 2, 1, 3; to all but the convolution 2, 0.5, 3; to all but the joins 0.5, 2, 3.
    assert bench.summary(rates) == (4.0, 3.0, 3.0, 3.0, 2.0, 2.0, 2.0)


def test_quick_run_prints_a_row_of_the_rounds_it_timed(capsys):
    bench = load_bench("cpu_ops_speed")
    results = bench.main(["--quick"])
    rows = table_rows(capsys.readouterr().out, 11, "model")
    rates = results[("ResNet18", 32, 4, "arcmargin")]
    assert sorted(rates) == sorted(bench.VARIANTS)
    assert all(len(rounds) == 2 and min(rounds) > 0 for rounds in rates.values())
    figures = bench.summary(rates)
    assert rows == [["ResNet18", "3x32x32", "4", "arcmargin"] + ["%.1f" % rate for rate in figures[:4]]
                    + ["%.3f" % ratio for ratio in figures[4:]]]


def test_the_variants_differ_in_the_kernels_their_programs_use():
    bench = load_bench("cpu_ops_speed")
    counts = {}
    for variant in bench.VARIANTS:
        program = bench.training_step("ResNet18", 32, 4, "arcmargin", variant).program
        names = [op.name() for op in program.global_block().ops]
        counts[variant] = tuple(names.count("custom_op." + op)
                                for op in ("conv2d_training", "batch_norm_relu_", "batch_norm_add_relu_"))
    # ResNet18 at 3x32x32: 10 few-pixel convolutions; 20 batch norms, 8 of them ending a residual block.
    assert counts == {"suite": (10, 12, 8), "without_conv": (0, 12, 8), "without_join": (10, 20, 0),
                      "paddle": (0, 0, 0)}
    # the module's settings are restored after each build
    assert (cpu_ops.CONV_MAX_OUTPUT_PIXELS, cpu_ops.FUSE_RESIDUAL_JOINS) == bench.VARIANTS["suite"][1:]
