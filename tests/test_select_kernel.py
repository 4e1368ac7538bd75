"""select_kernel.py: the C selection pass against NumPy on blocks full of ties, on several threads, and switched off
(its fallback without a compiler: test_native_build.py)."""
import numpy as np
import pytest

from core import metrics, native_build, select_kernel, similarity

pytestmark = pytest.mark.skipif(select_kernel.load() is None, reason="the C selection pass could not be built here")


def numpy_selection(s, width, num, t_first, t_last, caps):
    """What the C pass must return: tau from the maxima of `width` column groups over the whole row, the count of
    items >= theta, and the items of the rows that extract, in column order."""
    rows, padded = s.shape
    maxima = s.reshape(rows, padded // width, width).max(axis=1)
    kth = -np.sort(-maxima, axis=1)[np.arange(rows), np.maximum(num - 1, 0)]
    tau = np.where(num > 0, np.maximum(kth, t_last), np.inf).astype(np.float32)
    theta = np.where(num > 0, np.minimum(tau, t_first), np.inf)
    above = s >= theta[:, None]
    count = above.sum(axis=1)
    above &= ((t_first >= tau) & (count <= caps))[:, None]
    row, col = np.nonzero(above)
    return tau, count, row, col, s[row, col]


def tied_block(rng, rows, padded, width):
    """Even rows from a few values (ties everywhere), odd rows without ties; -inf padding at the end; positives
    drawn from the row, and in every third row made the nearest items (so that the row extracts)."""
    s = rng.random((rows, padded), dtype=np.float32)
    s[::2] = rng.choice(np.float32([-0.5, 0.0, 0.25, 0.5, 0.75, 1.0]), size=(len(s[::2]), padded))
    s[:, padded - width // 2:] = -np.inf
    num = rng.integers(0, 6, rows)
    columns = rng.integers(0, padded - width, (rows, 6))
    s[np.arange(0, rows, 3)[:, None], columns[::3]] = 2.0
    positives = -np.sort(-s[np.arange(rows)[:, None], columns], axis=1)  # best first
    return s, num, positives[:, 0], positives[np.arange(rows), np.maximum(num - 1, 0)]


@pytest.mark.parametrize("padded,width,cap", [(256, 8, (64, 8)), (264, 8, (4, 2)), (1024, 256, (64, 8)),
                                              (72, 24, (0, 1))])
def test_c_pass_matches_numpy_on_tied_blocks(padded, width, cap):
    """Widths and caps that make rows extract, overflow their cap and leave a tail shorter than the C pass's
    32-column chunks."""
    rng = np.random.default_rng(padded + width)
    s, num, t_first, t_last = tied_block(rng, 50, padded, width)
    caps = cap[0] + cap[1] * num
    got = select_kernel.select(s, width, num, t_first, t_last, caps)
    want = numpy_selection(s, width, num, t_first, t_last, caps)
    for name, a, b in zip(("tau", "count", "row", "col", "value"), got, want):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert 0 < len(np.unique(got[2])) < (num > 0).sum()  # some rows extract, some do not


def test_threads_split_rows_without_changing_anything(monkeypatch):
    rng = np.random.default_rng(3)
    s, num, t_first, t_last = tied_block(rng, 37, 512, 16)
    caps = 64 + 8 * num
    monkeypatch.setattr(select_kernel, "threads", lambda: 1)
    one = select_kernel.select(s, 16, num, t_first, t_last, caps)
    for count in (2, 3, 64):
        monkeypatch.setattr(select_kernel, "threads", lambda: count)
        for a, b in zip(select_kernel.select(s, 16, num, t_first, t_last, caps), one):
            np.testing.assert_array_equal(a, b)


def test_switched_off_the_metrics_run_on_numpys_passes(monkeypatch):
    rng = np.random.default_rng(4)
    features, labels = rng.standard_normal((300, 8)).astype(np.float32), rng.integers(0, 60, 300)
    on = metrics.retrieval_metrics(features, labels)
    calls, select_by_passes = [], similarity.select_by_passes
    monkeypatch.setattr(similarity, "select_by_passes", lambda *args: calls.append(1) or select_by_passes(*args))
    assert metrics.retrieval_metrics(features, labels) == on and not calls  # the C pass
    monkeypatch.setenv(native_build.SWITCH, "0")
    assert select_kernel.load() is None
    assert metrics.retrieval_metrics(features, labels) == on and calls


def test_more_items_a_row_than_groups_is_refused():
    s = np.zeros((2, 64), np.float32)
    with pytest.raises(ValueError, match="64 columns in groups of 8, for up to 9 items a row"):
        select_kernel.select(s, 8, np.array([1, 9]), np.zeros(2), np.zeros(2), np.full(2, 64))
    with pytest.raises(ValueError, match="64 columns in groups of 24"):
        select_kernel.select(s, 24, np.array([1, 1]), np.zeros(2), np.zeros(2), np.full(2, 64))
