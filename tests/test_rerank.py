"""k-reciprocal re-ranking and query expansion against dense float64 NumPy versions written from the papers, on the C
selection pass and on NumPy's passes."""
import tracemalloc

import numpy as np
import pytest

from core import metrics, neighbours, rerank, similarity

from test_metrics import tied

pytestmark = pytest.mark.usefixtures("selection_pass")


def dense_k_reciprocal(queries, gallery, k1, k2, lambda_value):
    """Zhong et al. 2017 step by step on the full (Q + N) x (Q + N) matrices; returns the Q x N final distances."""
    items = np.concatenate([similarity.l2_normalize(queries), similarity.l2_normalize(gallery)]).astype(np.float64)
    n, num_queries = len(items), len(queries)
    distance = np.maximum(2 - 2 * items @ items.T, 0)
    distance /= distance.max(axis=1, keepdims=True)
    ranking_distance = 2 - 2 * items @ items.T
    np.fill_diagonal(ranking_distance, -np.inf)  # every item is its own first neighbour
    ranking = np.lexsort((np.broadcast_to(np.arange(n), (n, n)), ranking_distance), axis=1)

    def reciprocal(i, k):
        return {j for j in ranking[i, :k + 1] if i in ranking[j, :k + 1]}

    v = np.zeros((n, n))
    for i in range(n):
        r = reciprocal(i, k1)
        expanded = set(r)
        for j in r:
            r_half = reciprocal(j, int(np.around(k1 / 2.0)))
            if len(r_half & r) > 2.0 / 3.0 * len(r_half):
                expanded |= r_half
        members = sorted(expanded)
        v[i, members] = np.exp(-distance[i, members]) / np.exp(-distance[i, members]).sum()
    if k2 > 1:
        v = np.array([v[ranking[i, :k2]].mean(axis=0) for i in range(n)])
    final = np.empty((num_queries, n - num_queries))
    for i in range(num_queries):
        for j in range(num_queries, n):
            jaccard = 1 - np.minimum(v[i], v[j]).sum() / np.maximum(v[i], v[j]).sum()
            final[i, j - num_queries] = (1 - lambda_value) * jaccard + lambda_value * distance[i, j]
    return final


def first_positive_ranks(final, query_labels, gallery_labels, tolerance):
    """1-based rank of each query's best positive, negatives closer than `tolerance` to it first (the metrics' rule
    for ties) or last; a query without positive ranks at infinity."""
    pessimistic, optimistic = [], []
    for row, label in zip(final, query_labels):
        positive = gallery_labels == label
        best = row[positive].min() if positive.any() else np.nan
        pessimistic.append(1 + np.count_nonzero(row[~positive] <= best + tolerance) if positive.any() else np.inf)
        optimistic.append(1 + np.count_nonzero(row[~positive] < best - tolerance) if positive.any() else np.inf)
    return np.array(pessimistic), np.array(optimistic)


@pytest.mark.parametrize("seed, k1, k2, lambda_value", [(0, 20, 6, 0.3), (1, 5, 3, 0.5), (2, 7, 1, 0.0),
                                                         (3, 20, 6, 1.0), (4, 3, 4, 0.3)])
def test_k_reciprocal_matches_the_dense_algorithm(seed, k1, k2, lambda_value):
    rng = np.random.default_rng(seed)
    # clusters, so that reciprocal sets are rich; duplicates (tied) test the "itself first" rule
    centres = rng.standard_normal((6, 8))
    labels = rng.integers(0, 6, 70)
    features = (centres[labels] + 0.6 * rng.standard_normal((70, 8))).astype(np.float32)
    if seed % 2:
        features = tied(rng, 70, 16, distinct=40)
    queries, gallery = features[:15], features[15:]
    want = dense_k_reciprocal(queries, gallery, k1, k2, lambda_value)
    reranker = rerank.KReciprocal(queries, gallery, k1, k2, lambda_value, memory_mb=0.05)
    for block in (None, 4):
        index, scores = reranker.top_k(10, block_size=block)
        np.testing.assert_allclose(scores, 1 - np.take_along_axis(want, index, axis=1), atol=1e-5)
        np.testing.assert_allclose(np.sort(1 - scores, axis=1), np.sort(want, axis=1)[:, :10], atol=1e-5)
    if seed % 2:
        return  # exact ties of d* fall either way with float32 rounding: the ranking below is not defined
    # the metrics rank by the re-ranked distances exactly as a full sort of them would
    got = metrics.retrieval_metrics(queries, labels[:15], gallery, labels[15:], recall_ks=(1, 5), rescore=reranker)
    # d* is kept in float32 for ranking: values within rounding of each other rank as ties
    pessimistic, optimistic = first_positive_ranks(want, labels[:15], labels[15:], 1e-6)
    for k in (1, 5):
        assert np.mean(pessimistic <= k) <= got["recall@%d" % k] <= np.mean(optimistic <= k)


def test_reranked_metrics_memory_and_blocks_agree():
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((20, 16))
    labels = rng.integers(0, 20, 400)
    features = (centres[labels] + 0.8 * rng.standard_normal((400, 16))).astype(np.float32)
    reranker = rerank.KReciprocal(features[:100], features[100:], memory_mb=0.2)
    results = [metrics.retrieval_metrics(features[:100], labels[:100], features[100:], labels[100:],
                                         rescore=reranker, block_size=block) for block in (3, 100)]
    results.append(metrics.retrieval_metrics(features[:100], labels[:100], features[100:], labels[100:],
                                             rescore=reranker, memory_mb=0.3))
    assert results[0] == results[1] == results[2]
    plain = metrics.retrieval_metrics(features[:100], labels[:100], features[100:], labels[100:])
    assert results[0]["map@r"] > plain["map@r"]  # clustered data: re-ranking helps


def test_query_expansion_is_the_weighted_mean_of_the_query_and_its_neighbours():
    rng = np.random.default_rng(3)
    queries, gallery = rng.standard_normal((5, 6)), rng.standard_normal((40, 6))
    index, scores = neighbours.nearest(queries, gallery, 3)
    for alpha in (0.0, 3.0):
        got = rerank.expand_queries(queries, gallery, index, scores, alpha)
        q, g = similarity.l2_normalize(queries).astype(np.float64), similarity.l2_normalize(gallery)
        weights = np.ones((5, 3)) if alpha == 0 else np.maximum(scores, 0) ** alpha
        want = q + np.einsum("qk,qkd->qd", weights, g[index])
        np.testing.assert_allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(rerank.expand_queries(queries, gallery, index[:, :0], scores[:, :0]),
                               similarity.l2_normalize(queries))
    missing = index.copy()
    missing[:, 2] = -1  # what faiss returns when it finds fewer than k
    np.testing.assert_allclose(rerank.expand_queries(queries, gallery, missing, scores),
                               rerank.expand_queries(queries, gallery, index[:, :2], scores[:, :2]), atol=1e-6)


def test_query_expansion_and_k_reciprocal_lift_map_on_clustered_data():
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((30, 16))
    labels = rng.integers(0, 30, 900)
    features = (centres[labels] + 0.9 * rng.standard_normal((900, 16))).astype(np.float32)
    queries, gallery, query_labels, gallery_labels = features[:200], features[200:], labels[:200], labels[200:]
    plain = metrics.retrieval_metrics(queries, query_labels, gallery, gallery_labels)
    index, scores = neighbours.nearest(queries, gallery, 5)
    expanded = rerank.expand_queries(queries, gallery, index, scores)
    with_qe = metrics.retrieval_metrics(expanded, query_labels, gallery, gallery_labels)
    reranked = metrics.retrieval_metrics(queries, query_labels, gallery, gallery_labels,
                                         rescore=rerank.KReciprocal(queries, gallery))
    assert with_qe["map@r"] > plain["map@r"] and reranked["map@r"] > plain["map@r"]


def test_bad_parameters():
    with pytest.raises(ValueError, match="lambda"):
        rerank.KReciprocal(np.ones((2, 3)), np.ones((4, 3)), lambda_value=1.5)


def test_memory_stays_far_below_the_dense_matrices():
    rng = np.random.default_rng(9)
    centres = rng.standard_normal((500, 16))
    features = (centres[rng.integers(0, 500, 5000)] + 0.5 * rng.standard_normal((5000, 16))).astype(np.float32)
    tracemalloc.start()
    reranker = rerank.KReciprocal(features[:1000], features[1000:], memory_mb=4)
    reranker.top_k(10)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5000 * 5000 * 4 / 4  # a quarter of one dense (Q + N)^2 float32 matrix; the algorithm needs 3
