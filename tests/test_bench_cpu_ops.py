"""bench/cpu_ops_speed.py: a tiny run builds both programs and prints one row from the rounds it timed; the summary is
the medians of each program's rates and of the rounds' ratios."""
import pytest

from bench_tools import load_bench, table_rows
from core import cpu_ops

pytestmark = pytest.mark.skipif(cpu_ops.load() is None, reason="the suite's CPU kernels could not be built here")


def test_summary_takes_the_median_of_the_rounds_ratios_not_the_ratio_of_medians():
    bench = load_bench("cpu_ops_speed")
    assert bench.summary({True: [2.0, 4.0, 9.0], False: [1.0, 4.0, 3.0]}) == (4.0, 3.0, 2.0)


def test_quick_run_prints_a_row_of_the_rounds_it_timed(capsys):
    bench = load_bench("cpu_ops_speed")
    results = bench.main(["--quick"])
    rows = table_rows(capsys.readouterr().out, 7, "model")
    rates = results[("ResNet18", 32, 4, "arcmargin")]
    assert len(rates[True]) == len(rates[False]) == 2 and min(rates[True] + rates[False]) > 0
    on, off, ratio = bench.summary(rates)
    assert rows == [["ResNet18", "3x32x32", "4", "arcmargin", "%.1f" % on, "%.1f" % off, "%.3f" % ratio]]
