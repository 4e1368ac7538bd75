"""bench/search_speed.py on a tiny gallery: one row per method, its arithmetic, the table's shape."""
import pytest

from bench_tools import load_bench, table_rows
from core import faiss_search, select_kernel

TINY = ["--num_gallery=3000", "--dim=16", "--num_queries=40", "--num_classes=50", "--top_k=5", "--nlist=8",
        "--nprobe=2,8", "--ef_construction=16", "--ef_search=16", "--hnsw_m=8", "--check_queries=10", "--repeat=1"]


@pytest.mark.parametrize("use_faiss", [False, True])
def test_tiny_run_prints_one_row_per_method(capsys, use_faiss):
    if use_faiss:
        pytest.importorskip("faiss")
    bench = load_bench("search_speed")
    rows = bench.main(TINY + ["--use_faiss=%s" % use_faiss])
    output = capsys.readouterr().out
    printed = table_rows(output, 6, "method")
    assert [row[0] for row in printed] == [row[0] for row in rows]
    names = [row[0].split(" (")[0] for row in rows]
    passes = ["C selection pass", "NumPy's passes"] if select_kernel.load() is not None else ["NumPy's passes"]
    exact = len(passes)
    assert names[:1 + exact] == ["bare blocked product Q @ G.T"] + ["exact blocked search"] * exact
    assert [row[0].split(", ")[-1] for row in rows[1:1 + exact]] == [name + ")" for name in passes]
    assert names[1 + exact:] == (["faiss IndexFlatIP"] + ["faiss IndexIVFFlat"] * 2 + ["faiss IndexHNSWFlat"]
                                 if use_faiss else [])
    if use_faiss:  # one build, searched with each --nprobe
        ivf = rows[2 + exact:4 + exact]
        assert ivf[0][1] == ivf[1][1] and "nprobe 2)" in ivf[0][0] and "nprobe 8)" in ivf[1][0]
    bare_ms = rows[0][2]
    for (name, build, ms, memory, recall, ratio), cells in zip(rows, printed):
        assert cells[2] == "%.2f" % ms and cells[3] == "%.0f" % memory
        assert cells[1] == ("-" if build is None else "%.1f" % build)
        assert cells[4] == ("-" if recall is None else "%.4f" % recall)
        assert (ratio is None) == (not name.startswith("exact blocked search"))
    for row in rows[1:1 + exact]:
        assert row[5] == pytest.approx(row[2] / bare_ms) and row[4] == 1.0
    assert "gallery 3000 x 16" in output


def test_row_arithmetic():
    bench = load_bench("search_speed")
    name, build, ms, memory, recall, ratio = bench.row("x", 1.5, 2.0, 1000, 30.0, 0.9, bare_ms=1.6)
    assert (ms, ratio) == (pytest.approx(2.0), pytest.approx(1.25))
    assert bench.format_table([("x", None, 1.0, 2.0, None, None)], 10).splitlines()[2] == "| x | - | 1.00 | 2 | - | - |"
    assert faiss_search.recall_against([[1, 2, 3], [4, 5, -1]], [[3, 2, 9], [4, 5, 6]]) == pytest.approx(2 / 3)
