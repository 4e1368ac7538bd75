"""Exact retrieval metrics: Recall@K, MAP@R and R-Precision from one blocked pass over the similarity matrix.

Rules (the original ``recall_topk``, made exact and extended):

* Features are L2-normalised here and items ranked by cosine similarity, which orders them as the original's
  Euclidean distance between normalised features does. An all-zero feature stays zero (similarity 0 to all).
* All-vs-all (no gallery given): each image queries all the others; the query itself is excluded by index, so
  a duplicate of it still counts. With a gallery: each query against the whole gallery, nothing excluded.
* Ties are pessimistic: a negative with the same similarity as a positive ranks before it. The result does not
  depend on the order of the data (the original left ties to ``np.argsort``).
* A query without positive (a class of one image; with a gallery, a label the gallery lacks) is a miss for
  Recall@K, as in the original, which divides by the number of images. MAP@R and R-Precision leave it out
  (R = 0 makes them undefined), as pytorch-metric-learning does. ``num_no_positive`` reports how many.
* Recall@K: share of queries with a positive among their K nearest. With R the number of positives of a query,
  R-Precision is the share of positives among its R nearest, and MAP@R = (1/R) * sum over ranks i <= R of
  precision@i where item i is a positive (Musgrave et al., "A Metric Learning Reality Check", 2020).

Method, per block S of query rows: the m-th best positive (similarity t_m, t_1 >= t_2 >= ...) has rank
m + #{negatives with similarity >= t_m}. Recall@K only needs m = 1 and MAP@R only ranks <= R, so:

1. gather the positives' similarities from S;
2. tau, a lower bound of the R-th largest similarity of the row: the R-th largest of the maxima of
   ``_GROUPS`` column groups (R groups give R items >= it; the groups cover a quarter of the row on NumPy's and
   Paddle's passes, all of it in the C pass, which reads the row anyway), at least t_R;
3. one comparison pass counts the items >= min(tau, t_1). If t_1 < tau, R negatives beat every positive:
   the count gives the best positive's rank and MAP@R = R-Precision = 0. Otherwise the few items >= tau hold
   every rank <= R and the best positive: they are extracted and ranked exactly;
4. a row with unusually many items >= tau (mass ties, collapsed features) is counted once per positive instead.

No row is sorted and no N x N matrix exists: memory is one block plus its candidates. The blocks themselves (the
product and its passes, on NumPy or Paddle) are core/similarity.py; steps 2 and 3 are their `select`, which on the
CPU is a C pass over each row (core/select_kernel.c) where it can be built.
"""
import math

import numpy as np

from core import similarity
from core.similarity import DEFAULT_MEMORY_MB, l2_normalize  # noqa: F401  (l2_normalize: part of this API)

DEFAULT_RECALL_KS = (1, 10, 100, 1000)
_GROUPS = 256                          # column groups for the bound tau (a multiple of 8)
_CAP_BASE, _CAP_PER_POSITIVE = 64, 8   # more candidates than this in a row: counted, not extracted
_CANDIDATE_BYTES = 96                  # host memory per extracted candidate (indices, values, sort keys)


def _group_width(max_positives):
    return max(_GROUPS, 8 * math.ceil(2 * max_positives / 8))


def block_rows(num_gallery, memory_mb=DEFAULT_MEMORY_MB, max_positives=1, bytes_per_element=4):
    """Query rows per block so that one block's working memory (similarities, mask, candidates) fits memory_mb.

    bytes_per_element: of the blocks' similarity matrix (the `bytes_per_element` of the blocks class). The
    normalised copy of the features (N x D float32) comes on top of that budget.
    """
    width = _group_width(max_positives)
    per_row = (similarity.padded_size(num_gallery, width) * bytes_per_element + width * 8 + (max_positives + 1) * 24
               + (_CAP_BASE + _CAP_PER_POSITIVE * max_positives) * _CANDIDATE_BYTES)
    return similarity.rows_per_block(memory_mb, per_row)


def retrieval_metrics(query_features, query_labels, gallery_features=None, gallery_labels=None,
                      recall_ks=DEFAULT_RECALL_KS, memory_mb=DEFAULT_MEMORY_MB, use_gpu=False,
                      backend=None, block_size=None, query_groups=None, rescore=None):
    """Exact Recall@K for each K in `recall_ks`, MAP@R and R-Precision (rules in the module docstring).

    query_features: N x D (any float type; reshaped to N x -1), query_labels: N labels of any comparable type.
    gallery_features, gallery_labels: None for all-vs-all (the query itself excluded), or the gallery to search.
    memory_mb: working-memory budget of one block; block_size (query rows) overrides it.
    use_gpu: run the blocks through Paddle on GPU 0. backend: 'numpy' (default on CPU) or 'paddle' (Paddle ops
    on the CPU, or on the GPU with use_gpu); the Paddle path also works while the caller's script is static.
    query_groups: N group ids (e.g. SOP super classes); the same metrics are then also given per group, over the
    queries of that group (each still searching the whole gallery).
    rescore: rank by other scores than the cosine similarity of the features, e.g. a rerank.KReciprocal of
    these queries and gallery: an object with `num_queries`, `num_gallery`, `bytes_per_element` and
    `open_blocks(width, rows)`, which returns blocks (similarity.NumpyBlocks) whose similarities are its scores,
    higher meaning nearer.
    Returns {'recall@K': float for each K, 'map@r': float, 'r_precision': float,
             'num_queries': int, 'num_no_positive': int}, and with query_groups 'by_group': {group: that dict}.
    """
    ks = sorted({int(k) for k in recall_ks})
    if not ks or ks[0] < 1:
        raise ValueError("recall_ks must be positive integers, got %r" % (recall_ks,))
    if (gallery_features is None) != (gallery_labels is None):
        raise ValueError("give both gallery_features and gallery_labels, or neither")
    similarity.check_backend(backend, use_gpu)
    same = gallery_features is None
    query_labels = np.asarray(query_labels).reshape(-1)
    gallery_labels = query_labels if same else np.asarray(gallery_labels).reshape(-1)
    query_features = np.asarray(query_features)
    gallery_features = query_features if same else np.asarray(gallery_features)
    for name, feats, labels in (("query", query_features, query_labels),
                                ("gallery", gallery_features, gallery_labels)):
        if len(feats) == 0 or len(feats) != len(labels):
            raise ValueError("%s: %d features but %d labels (need at least one)" % (name, len(feats), len(labels)))
    if query_groups is not None and len(query_groups) != len(query_labels):
        raise ValueError("%d query groups for %d queries" % (len(query_groups), len(query_labels)))

    positives = _Positives(gallery_labels, query_labels, exclude_self=same)
    max_positives = int(positives.num.max())
    width = _group_width(max_positives)
    num_gallery = len(gallery_labels)
    ranks = _Ranks(len(query_labels))
    if rescore is not None and (rescore.num_queries, rescore.num_gallery) != (len(query_labels), num_gallery):
        raise ValueError("rescore is of %d queries and %d gallery items, the labels of %d and %d"
                         % (rescore.num_queries, rescore.num_gallery, len(query_labels), num_gallery))
    if max_positives > 0 and rescore is not None:
        rows = block_size or block_rows(num_gallery, memory_mb, max_positives, rescore.bytes_per_element)
        rows = min(int(rows), len(query_labels))
        _scan(rescore.open_blocks(width, rows), positives, rows, width, ranks)
    elif max_positives > 0:
        gallery = similarity.padded_gallery(gallery_features, width)
        queries = gallery[:num_gallery] if same else l2_normalize(query_features)
        if queries.shape[1] != gallery.shape[1]:
            raise ValueError("query and gallery dimensions differ: %d vs %d" % (queries.shape[1], gallery.shape[1]))
        blocks_class = similarity.blocks_class(use_gpu, backend)
        rows = block_size or block_rows(num_gallery, memory_mb, max_positives, blocks_class.bytes_per_element)
        rows = min(int(rows), len(queries))
        with similarity.open_blocks(queries, gallery, num_gallery, rows, same, use_gpu, backend) as blocks:
            _scan(blocks, positives, rows, width, ranks)
    has_positive = positives.num > 0
    results = ranks.summary(has_positive, ks)
    if query_groups is not None:
        query_groups = np.asarray(query_groups).reshape(-1)
        results["by_group"] = {group.item(): ranks.summary(has_positive, ks, query_groups == group)
                               for group in np.unique(query_groups)}
    return results


def recall_topk(fea, lab, k=1):
    """Recall@k as the original's utility.recall_topk: L2-normalised features, Euclidean distance, the query itself
    excluded; computed exactly in blocks, ties between a positive and a negative counting against the positive."""
    return retrieval_metrics(fea, lab, recall_ks=(k,))["recall@%d" % k]


class _Positives:
    """Gallery items grouped by label: the positives of a query are one run of `order`."""

    def __init__(self, gallery_labels, query_labels, exclude_self):
        self.gallery_labels, self.query_labels = gallery_labels, query_labels
        self.order = np.argsort(gallery_labels, kind="stable")
        labels, first, counts = np.unique(gallery_labels[self.order], return_index=True, return_counts=True)
        at = np.searchsorted(labels, query_labels).clip(max=len(labels) - 1)
        self.first = first[at]
        self.count = np.where(labels[at] == query_labels, counts[at], 0)
        self.num = np.maximum(self.count - int(exclude_self), 0)  # R of each query

    def columns(self, r0, r1, pad_column):
        """Gallery columns of the positives of queries r0..r1-1 (self included), padded with pad_column."""
        count = self.count[r0:r1]
        j = np.arange(max(int(count.max()), 1))
        at = np.minimum(self.first[r0:r1, None] + j, len(self.order) - 1)
        return np.where(j < count[:, None], self.order[at], pad_column)

    def match(self, query, column):
        """True where gallery `column` has the label of `query` (self never gets here: its similarity is -inf)."""
        return self.gallery_labels[column] == self.query_labels[query]


class _Ranks:
    """Per query: negatives at or above the best positive (n1), AP@R and R-Precision."""

    def __init__(self, n):
        self.n1 = np.zeros(n, np.int64)
        self.ap = np.zeros(n)
        self.rp = np.zeros(n)

    def summary(self, has_positive, ks, chosen=slice(None)):
        """The metrics over the `chosen` queries (a boolean mask; default all)."""
        has_positive, n1, ap, rp = has_positive[chosen], self.n1[chosen], self.ap[chosen], self.rp[chosen]
        out = {"recall@%d" % k: float(np.mean(has_positive & (n1 < k))) for k in ks}
        counted = int(has_positive.sum())
        out["map@r"] = float(ap[has_positive].sum() / counted) if counted else 0.0
        out["r_precision"] = float(rp[has_positive].sum() / counted) if counted else 0.0
        out["num_queries"] = len(has_positive)
        out["num_no_positive"] = len(has_positive) - counted
        return out


def _scan(blocks, positives, rows, width, ranks):
    """Fill `ranks`: one similarity block of `rows` queries at a time."""
    num_queries = len(positives.num)
    for r0 in range(0, num_queries, rows):
        r1 = min(r0 + rows, num_queries)
        if positives.num[r0:r1].any():
            _rank_rows(blocks, blocks.similarities(r0, r1), r0, r1, width, positives, ranks)


def _rank_rows(blocks, s, r0, r1, width, positives, ranks):
    """Steps 1-4 of the module docstring for queries r0..r1-1, whose similarities are s."""
    num = positives.num[r0:r1]
    at = np.arange(r1 - r0)
    t = -np.sort(-blocks.take(s, positives.columns(r0, r1, blocks.padded - 1)), axis=1)  # best first
    caps = _CAP_BASE + _CAP_PER_POSITIVE * num
    tau, count, row, col, value = blocks.select(s, r0, r1, width, num, t[:, 0], t[at, np.maximum(num - 1, 0)], caps)
    theta = np.where(num > 0, np.minimum(tau, t[:, 0]), np.inf)
    ranked = (num > 0) & (t[:, 0] >= tau)  # the best positive is among the items >= tau
    ranks.n1[r0:r1] = np.where(ranked, 0, count - (t >= theta[:, None]).sum(axis=1))
    heavy = ranked & (count > caps)
    light = ranked & ~heavy
    if light.any():
        n1, ap, rp = _rank_candidates(row, value, positives.match(row + r0, col), num)
        ranks.n1[r0:r1][light] = n1[light]
        ranks.ap[r0:r1][light] = ap[light]
        ranks.rp[r0:r1][light] = rp[light]
    for i in np.flatnonzero(heavy):
        _count_row(blocks, s, i, t[i, :num[i]], tau[i], ranks, r0 + i)


def _rank_candidates(row, value, is_pos, num):
    """Exact ranks among the extracted items of each row: sort by (row, similarity desc, negatives first)."""
    b = len(num)
    order = np.lexsort((is_pos, -value, row))
    row, is_pos = row[order], is_pos[order]
    start = np.searchsorted(row, np.arange(b))
    rank = np.arange(1, len(row) + 1) - start[row]
    m = np.cumsum(is_pos)
    m = m - np.concatenate(([0], m))[start][row]  # 1-based index of each positive within its row
    row, rank, m = row[is_pos], rank[is_pos], m[is_pos]
    n1 = np.zeros(b, np.int64)
    n1[row[m == 1]] = rank[m == 1] - 1
    hit = rank <= num[row]
    r = np.maximum(num, 1)
    ap = np.bincount(row[hit], m[hit] / rank[hit], minlength=b) / r
    rp = np.bincount(row[hit], minlength=b) / r
    return n1, ap, rp


def _count_row(blocks, s, i, t, tau, ranks, query):
    """Ranks of one row's positives by counting the items >= each positive that can still rank <= R."""
    kept = t[t >= tau]  # positives below tau rank after R
    above = blocks.count_row(s, i, kept) - (t[None, :] >= kept[:, None]).sum(axis=1)
    m = np.arange(1, len(kept) + 1)
    rank = m + above
    hit = rank <= len(t)
    ranks.n1[query] = above[0]
    ranks.ap[query] = (m[hit] / rank[hit]).sum() / len(t)
    ranks.rp[query] = hit.sum() / len(t)
