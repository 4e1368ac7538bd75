"""bench/amp_recall.py on a tiny data set: both runs train, the table's rows are their logged losses, the difference
is the arithmetic of the parsed figures."""
from bench_tools import load_bench, table_rows


def test_quick_run_compares_the_two_curves_and_recalls(tmp_path, capsys):
    bench = load_bench("amp_recall")
    curves, recalls = bench.main(["--quick", "--work_dir=%s" % tmp_path])
    output = capsys.readouterr().out
    table = table_rows(output, 4, "iteration")
    rows = [row for row in table if row[0].isdigit()]
    assert [int(row[0]) for row in rows] == [2, 4] == sorted(curves["float32"]) == sorted(curves["bfloat16"])
    for iteration, shown_float32, _, difference in rows:
        assert shown_float32 == "%.4f" % curves["float32"][int(iteration)]
        float32, bfloat16 = curves["float32"][int(iteration)], curves["bfloat16"][int(iteration)]
        assert difference == "%+.2f%%" % (100 * (bfloat16 - float32) / abs(float32))
    (summary,) = [row for row in table if row[0].startswith("Recall@1")]
    assert summary[3] == "%+.2f points" % (100 * (recalls["bfloat16"] - recalls["float32"]))
    assert 0 <= recalls["float32"] <= 1 and 0 <= recalls["bfloat16"] <= 1
