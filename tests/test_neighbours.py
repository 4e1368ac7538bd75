"""neighbours.top_k / ExactIndex against a full sort of every row (similarity descending, then gallery index), on the
C selection pass and on NumPy's passes."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from core import neighbours, similarity

from test_metrics import tied

pytestmark = pytest.mark.usefixtures("selection_pass")


def brute_force(queries, gallery, k, exclude_self=False):
    s = similarity.l2_normalize(queries).astype(np.float64) @ similarity.l2_normalize(gallery).astype(np.float64).T
    if exclude_self:
        np.fill_diagonal(s, -np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(s.shape[1]), s.shape), -s), axis=1)
    k = min(k, s.shape[1] - exclude_self)
    return order[:, :k], np.take_along_axis(s, order[:, :k], axis=1)


@settings(max_examples=120, deadline=None)
@given(st.integers(1, 60), st.integers(1, 70), st.integers(1, 30), st.sampled_from([4, 16]), st.integers(1, 40),
       st.booleans(), st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_property_ties_broken_by_index_whatever_the_blocks(num_queries, num_gallery, k, dim, distinct, all_vs_all,
                                                           block, seed):
    rng = np.random.default_rng(seed)
    gallery = tied(rng, num_gallery, dim, distinct=distinct)
    queries = gallery if all_vs_all else tied(rng, num_queries, dim, distinct=distinct)
    if all_vs_all and num_gallery == 1:
        return
    got = neighbours.nearest(queries, gallery, k, exclude_self=all_vs_all, block_size=block)
    want = brute_force(queries, gallery, k, all_vs_all)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], atol=1e-6)


@pytest.mark.parametrize("cap", [(64, 4), (0, 0)])
def test_many_groups_and_the_exact_threshold_path(monkeypatch, cap):
    """A gallery of several group chunks; a zero cap sends every row to the exact K-th largest threshold."""
    monkeypatch.setattr(neighbours, "CAP_BASE", cap[0])
    monkeypatch.setattr(neighbours, "CAP_PER_K", cap[1])
    rng = np.random.default_rng(1)
    gallery = rng.standard_normal((3000, 8)).astype(np.float32)
    queries = rng.standard_normal((37, 8)).astype(np.float32)
    for k in (1, 10, 100, 200):  # 200: more than half the groups, so no group bound
        index, scores = neighbours.nearest(queries, gallery, k, block_size=16)
        want_index, want_scores = brute_force(queries, gallery, k)
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
        assert (index == want_index).mean() > 0.99  # float32 rounding may swap near-ties


def test_collapsed_features_return_the_first_items():
    gallery = np.ones((500, 4), np.float32)
    index, scores = neighbours.nearest(np.ones((3, 4)), gallery, 5)
    np.testing.assert_array_equal(index, np.tile(np.arange(5), (3, 1)))
    np.testing.assert_allclose(scores, 1.0, atol=1e-6)


def test_k_is_capped_at_the_gallery_and_memory_bounds_the_blocks():
    rng = np.random.default_rng(2)
    gallery = rng.standard_normal((7, 3))
    index, _ = neighbours.nearest(gallery, gallery, 50, exclude_self=True)
    assert index.shape == (7, 6) and not (index == np.arange(7)[:, None]).any()
    assert neighbours.block_rows(100000, 10, 1, 4) < neighbours.block_rows(100000, 10, 8, 4)
    assert neighbours.block_rows(100000, 10, 1, 4) * 100000 * 4 <= 2**20


def test_paddle_backend_gives_the_same_neighbours():
    rng = np.random.default_rng(3)
    gallery, queries = tied(rng, 300, 16, distinct=120), tied(rng, 20, 16, distinct=120)
    want = neighbours.nearest(queries, gallery, 12)
    got = neighbours.nearest(queries, gallery, 12, backend="paddle", block_size=7)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], atol=1e-6)
