"""metrics.retrieval_metrics against a brute-force NumPy ranking (a full sort of every row), on the C selection pass
and on NumPy's passes."""
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from core import metrics, similarity

KS = (1, 2, 5, 10, 1000)
pytestmark = pytest.mark.usefixtures("selection_pass")  # every test on the C pass and on NumPy's passes




def brute_force(features, labels, ks=KS, gallery_features=None, gallery_labels=None):
    """Sort every row: similarity descending, a negative before a positive of equal similarity."""
    queries = metrics.l2_normalize(features).astype(np.float64)
    same = gallery_features is None
    gallery = queries if same else metrics.l2_normalize(gallery_features).astype(np.float64)
    gallery_labels = labels if same else np.asarray(gallery_labels)
    hits, aps, rps, lonely = {k: 0 for k in ks}, [], [], 0
    for i, row in enumerate(queries @ gallery.T):
        keep = np.arange(len(gallery)) != i if same else np.ones(len(gallery), bool)
        sim, positive = row[keep], gallery_labels[keep] == labels[i]
        relevant = positive[np.lexsort((positive, -sim))]
        r = int(relevant.sum())
        if r == 0:
            lonely += 1
            continue
        first = int(np.argmax(relevant)) + 1
        for k in ks:
            hits[k] += first <= k
        top = relevant[:r]
        aps.append(np.sum(np.cumsum(top) / np.arange(1, r + 1) * top) / r)
        rps.append(top.mean())
    out = {"recall@%d" % k: hits[k] / len(queries) for k in ks}
    out.update({"map@r": float(np.mean(aps)) if aps else 0.0, "r_precision": float(np.mean(rps)) if rps else 0.0,
                "num_queries": len(queries), "num_no_positive": lonely})
    return out


def assert_same(got, want):
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def tied(rng, n, dim=16, distinct=None):
    """+-1 entries: unit vectors after dividing by sqrt(dim) exactly, so every similarity is exact and ties abound.

    With `distinct`, the n rows are drawn from that many distinct vectors (duplicates).
    """
    pool = rng.choice([-1.0, 1.0], size=(distinct or n, dim)).astype(np.float32)
    return pool[rng.integers(0, len(pool), n)] if distinct else pool


def labels_with_singletons(rng, n):
    labels = rng.integers(0, max(1, n // 3), n)
    labels[: n // 10] = np.arange(1000, 1000 + n // 10)  # classes of one image
    return labels


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_with_ties_and_singletons(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 150))
    for features in (tied(rng, n, 4), tied(rng, n, 16), tied(rng, n, 16, distinct=n // 4),
                     rng.standard_normal((n, 8)).astype(np.float32)):
        labels = labels_with_singletons(rng, n)
        want = brute_force(features, labels)
        assert want["num_no_positive"] >= n // 10
        assert_same(metrics.retrieval_metrics(features, labels, recall_ks=KS), want)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 40), st.sampled_from([4, 16]), st.integers(1, 40), st.integers(1, 20), st.integers(1, 40),
       st.booleans(), st.integers(0, 2**32 - 1))
def test_property_matches_brute_force(n, dim, distinct, num_labels, block, with_gallery, seed):
    rng = np.random.default_rng(seed)
    features, labels = tied(rng, n, dim, distinct=distinct), rng.integers(0, num_labels, n)
    gallery = gallery_labels = None
    if with_gallery:
        gallery, gallery_labels = tied(rng, n + 3, dim, distinct=distinct), rng.integers(0, num_labels, n + 3)
    got = metrics.retrieval_metrics(features, labels, gallery, gallery_labels, recall_ks=KS, block_size=block)
    assert_same(got, brute_force(features, labels, KS, gallery, gallery_labels))


def test_block_sizes_give_identical_results():
    rng = np.random.default_rng(7)
    features, labels = tied(rng, 97, 16, distinct=40), labels_with_singletons(rng, 97)
    results = [metrics.retrieval_metrics(features, labels, recall_ks=KS, block_size=b) for b in (1, 2, 5, 32, 97)]
    results.append(metrics.retrieval_metrics(features, labels, recall_ks=KS, memory_mb=0.01))
    assert all(r == results[0] for r in results)
    assert_same(results[0], brute_force(features, labels))


@pytest.mark.parametrize("groups,step,cap", [(8, 1, (64, 8)), (8, 3, (64, 8)), (16, 2, (0, 0)), (8, 4, (2, 1))])
def test_group_bound_and_counting_paths(monkeypatch, groups, step, cap):
    """Small column groups make tau come from many chunks; small caps send rows to the per-positive count."""
    monkeypatch.setattr(metrics, "_GROUPS", groups)
    monkeypatch.setattr(similarity, "GROUP_STEP", step)
    monkeypatch.setattr(metrics, "_CAP_BASE", cap[0])
    monkeypatch.setattr(metrics, "_CAP_PER_POSITIVE", cap[1])
    rng = np.random.default_rng(groups + step)
    for features in (tied(rng, 300, 16, distinct=120), rng.standard_normal((300, 6)).astype(np.float32)):
        labels = labels_with_singletons(rng, 300)
        assert_same(metrics.retrieval_metrics(features, labels, recall_ks=KS, block_size=64),
                    brute_force(features, labels))


def test_collapsed_features_rank_every_positive_last():
    features = np.ones((60, 8), np.float32)
    labels = np.repeat(np.arange(12), 5)
    got = metrics.retrieval_metrics(features, labels, recall_ks=(1, 54, 55, 59))
    assert_same(got, brute_force(features, labels, ks=(1, 54, 55, 59)))
    # all 59 others tie: the 55 negatives come first, so the best positive is 56th
    assert (got["recall@55"], got["recall@59"], got["map@r"]) == (0.0, 1.0, 0.0)


def test_tie_rule_is_pessimistic_and_self_is_excluded_by_index():
    features = np.array([[1, 0], [0, 1], [0, 1], [-1, 0]], np.float32)
    got = metrics.retrieval_metrics(features, [5, 5, 6, 7], recall_ks=(1, 2, 3))
    # query 0: positive 1 and negative 2 tie at similarity 0 -> the positive is 2nd
    # query 1: negative 2 (similarity 1), then positive 0 and negative 3 tie at 0 -> the positive is 3rd
    # queries 2 and 3 have no positive
    assert (got["recall@1"], got["recall@2"], got["recall@3"]) == (0.0, 0.25, 0.5)
    # the query itself is excluded by index, its duplicate is a neighbour like any other
    duplicates = np.array([[1, 0], [0, 1], [0, 1], [1, 0]], np.float32)
    assert metrics.retrieval_metrics(duplicates, [5, 8, 9, 5], recall_ks=(1,))["recall@1"] == 0.5


def test_queries_without_positive_are_misses_for_recall_and_left_out_of_map():
    features = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 0, 1], [0, 1, 0]], np.float32)
    got = metrics.retrieval_metrics(features, [0, 0, 1, 2], recall_ks=(1, 3))
    assert got["num_no_positive"] == 2 and got["num_queries"] == 4
    assert got["recall@1"] == got["recall@3"] == 0.5  # queries 2 and 3 can never hit
    assert got["map@r"] == 1.0 and got["r_precision"] == 1.0  # averaged over queries 0 and 1 only
    lonely = metrics.retrieval_metrics(features, [0, 1, 2, 3], recall_ks=(1,))
    assert lonely == {"recall@1": 0.0, "map@r": 0.0, "r_precision": 0.0, "num_queries": 4, "num_no_positive": 4}


def test_map_at_r_by_hand():
    # query 0 (class a, R = 2): ranking 1(a) 2(b) 3(a) -> AP@R = (1/1 + 0) / 2, R-Precision 1/2
    features = np.array([[1, 0], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [-1, 0]], np.float32)
    got = metrics.retrieval_metrics(features, ["a", "a", "b", "a", "c"], recall_ks=(1,))
    want = brute_force(features, np.array(["a", "a", "b", "a", "c"]), ks=(1,))
    assert_same(got, want)


def test_query_gallery_mode():
    rng = np.random.default_rng(3)
    for queries, gallery in ((tied(rng, 70, 16, 30), tied(rng, 90, 16, 30)),
                             (rng.standard_normal((70, 5)), rng.standard_normal((90, 5)))):
        query_labels, gallery_labels = rng.integers(0, 30, 70), rng.integers(0, 25, 90)
        want = brute_force(queries, query_labels, KS, gallery, gallery_labels)
        assert want["num_no_positive"] > 0  # labels 25..29 are absent from the gallery
        for block in (None, 8):
            got = metrics.retrieval_metrics(queries, query_labels, gallery, gallery_labels, recall_ks=KS,
                                            block_size=block)
            assert_same(got, want)
    # the query itself is not excluded when it is also in the gallery
    same = metrics.retrieval_metrics(queries, query_labels, queries, query_labels, recall_ks=(1,))
    assert same["recall@1"] == 1.0


def test_recall_matches_the_original_argsort():
    """The original: squared distances of normalised features, 1e8 on the diagonal, argsort, any of top k."""
    rng = np.random.default_rng(11)
    features = rng.standard_normal((300, 32)).astype(np.float32)
    labels = rng.integers(0, 60, 300)
    fea = features / np.sqrt(np.sum(features ** 2, 1)).reshape(-1, 1)
    sq = np.sum(fea ** 2, 1).reshape(-1, 1)
    order = np.argsort(sq + sq.T - 2 * fea @ fea.T + np.eye(300) * 1e8, 1)
    got = metrics.retrieval_metrics(features, labels, recall_ks=(1, 2, 5, 10))
    for k in (1, 2, 5, 10):
        original = np.mean([(labels[order[i, :k]] == labels[i]).any() for i in range(300)])
        assert got["recall@%d" % k] == pytest.approx(original, abs=1e-12)


def test_memory_stays_within_blocks():
    rng = np.random.default_rng(0)
    n = 4000
    features, labels = rng.standard_normal((n, 16)).astype(np.float32), rng.integers(0, 800, n)
    assert metrics.block_rows(n, memory_mb=1) < metrics.block_rows(n, memory_mb=4)
    tracemalloc.start()
    metrics.retrieval_metrics(features, labels, memory_mb=2)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < n * n * 4 / 8  # far below one N x N float32 matrix (64 MB)


def test_paddle_backend_on_cpu_matches_and_keeps_static_mode():
    paddle = pytest.importorskip("paddle")
    rng = np.random.default_rng(5)
    features, labels = tied(rng, 120, 16, distinct=50), labels_with_singletons(rng, 120)
    want = metrics.retrieval_metrics(features, labels, recall_ks=KS)
    was_dynamic = paddle.in_dynamic_mode()
    paddle.enable_static()
    try:
        assert metrics.retrieval_metrics(features, labels, recall_ks=KS, backend="paddle", block_size=7) == want
        assert not paddle.in_dynamic_mode()
    finally:
        paddle.disable_static()
    assert metrics.retrieval_metrics(features, labels, recall_ks=KS, backend="paddle") == want
    assert paddle.in_dynamic_mode()
    if not was_dynamic:
        paddle.enable_static()
    if not paddle.is_compiled_with_cuda():
        with pytest.raises(ValueError, match="CUDA"):
            metrics.retrieval_metrics(features, labels, use_gpu=True)


def test_bad_arguments():
    features = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError):
        metrics.retrieval_metrics(features, [0, 0, 1])
    with pytest.raises(ValueError):
        metrics.retrieval_metrics(features, [0, 0, 1, 1], recall_ks=(0,))
    with pytest.raises(ValueError):
        metrics.retrieval_metrics(features, [0, 0, 1, 1], gallery_features=features)
    with pytest.raises(ValueError):
        metrics.retrieval_metrics(features, [0, 0, 1, 1], np.ones((4, 2)), [0, 0, 1, 1])
    with pytest.raises(ValueError):
        metrics.retrieval_metrics(np.full((4, 3), np.nan), [0, 0, 1, 1])
    with pytest.raises(ValueError):
        metrics.retrieval_metrics(features, [0, 0, 1, 1], backend="torch")


def test_default_keys():
    got = metrics.retrieval_metrics(np.eye(3), [0, 0, 1])
    assert list(got) == ["recall@1", "recall@10", "recall@100", "recall@1000", "map@r", "r_precision",
                         "num_queries", "num_no_positive"]


def test_recall_topk_against_brute_force():
    rng = np.random.default_rng(4)
    features = rng.normal(size=(60, 5))
    labels = rng.integers(0, 12, size=60)
    normalised = features / np.linalg.norm(features, axis=1, keepdims=True)
    distances = ((normalised[:, None] - normalised[None]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    for k in (1, 3, 10):
        nearest = np.argsort(distances, axis=1)[:, :k]
        expected = np.mean([(labels[row] == labels[i]).any() for i, row in enumerate(nearest)])
        assert metrics.recall_topk(features, labels, k=k) == pytest.approx(expected)
