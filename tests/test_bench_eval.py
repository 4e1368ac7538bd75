"""bench/eval_speed.py: a tiny run times the metrics on both kinds of passes beside the bare product and the original's
argsort; every ranking agrees, and each ratio is to the product's row."""
import numpy as np

from bench_tools import load_bench, table_rows
from core import select_kernel


def test_tiny_run_prints_every_method_with_agreeing_results(capsys):
    bench = load_bench("eval_speed")
    bench.main(["--num_images=600", "--dims=16", "--argsort_size=200", "--use_faiss=False", "--repeat=2"])
    rows = table_rows(capsys.readouterr().out, 7, "method")
    names = [row[0] for row in rows]
    metrics_rows = (["metrics.retrieval_metrics, C selection pass", "metrics.retrieval_metrics, NumPy's passes"]
                    if select_kernel.load() is not None else ["metrics.retrieval_metrics, NumPy's passes"])
    assert names == (["bare blocked GEMM F @ F.T"] + metrics_rows
                     + ["original argsort, N=200 (measured)", "original argsort, N=600 (extrapolated)"])
    assert rows[0][2] == rows[0][4] == "1.00"
    assert all(row[6] == "" for row in rows[1:1 + len(metrics_rows)])  # the passes' results are the same
    assert rows[-2][6] == "Recall@K equal to ours"


def test_sop_like_features_are_unit_vectors_in_classes_of_2_to_12():
    bench = load_bench("eval_speed")
    features, labels = bench.sop_like(500, 8, 2.2, seed=0)
    assert features.shape == (500, 8)
    assert abs((features ** 2).sum(axis=1) - 1).max() < 1e-5
    sizes = np.bincount(labels)
    assert sizes[:-1].min() >= 2 and sizes.max() <= 12  # the last class may be cut short
    assert 4.5 < sizes[:-1].mean() < 6.2  # SOP's test split: 5.35
