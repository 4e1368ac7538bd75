"""Exact top-K search in bounded memory, on the blocks of core/similarity.py that the retrieval metrics use.

A query's K nearest gallery items are those of largest cosine similarity, ties broken by the smaller gallery index,
so results never depend on how the work was blocked. Per block of query rows:

1. tau, a lower bound of each row's K-th largest similarity: the K-th largest of the maxima of column groups
   (K groups whose maxima are >= tau hold K items >= tau);
2. one comparison pass extracts the items >= tau, usually a few times K of them, which are sorted exactly.
   Steps 1 and 2 are the blocks' `select`, which the retrieval metrics use too (on the CPU a C pass over each row,
   core/select_kernel.c, where it can be built);
3. a row with unusually many items >= tau (ties, collapsed features), or a K above half the group count, takes
   its exact K-th largest similarity as the threshold instead.

No row is sorted and no Q x N matrix exists: memory is one block of similarities plus its candidates.
"""
import numpy as np

from core import similarity

GROUPS = 256                        # column groups of the bound tau (the metrics' default width)
CAP_BASE, CAP_PER_K = 64, 4         # more candidates than this in a row: the exact K-th largest is the threshold
CANDIDATE_BYTES = 64                # host memory per extracted candidate (indices, values, sort keys)


def candidate_cap(k):
    return CAP_BASE + CAP_PER_K * k


def block_rows(padded, k, memory_mb, bytes_per_element):
    """Query rows per block: the similarity block, the group maxima and the candidates of a row fit memory_mb."""
    per_row = padded * bytes_per_element + GROUPS * 8 + candidate_cap(k) * CANDIDATE_BYTES
    return similarity.rows_per_block(memory_mb, per_row)


def top_k(blocks, num_queries, k, rows):
    """The k best columns of every query row of `blocks` (rows queries a block) and their scores, best first.

    blocks: similarity.NumpyBlocks / PaddleBlocks (or a subclass with other scores) over a gallery padded to a
    multiple of GROUPS columns; k must not exceed the number of finite scores of any row.
    Returns (indices int64 Q x k, scores float32 Q x k).
    """
    indices = np.empty((num_queries, k), np.int64)
    scores = np.empty((num_queries, k), np.float32)
    for r0 in range(0, num_queries, rows):
        r1 = min(r0 + rows, num_queries)
        indices[r0:r1], scores[r0:r1] = _select(blocks, blocks.similarities(r0, r1), r0, r1, k)
    return indices, scores


def _select(blocks, s, r0, r1, k):
    """Steps 1-3 of the module docstring for queries r0..r1-1, whose scores are s."""
    n = r1 - r0
    exact, found = np.ones(n, bool), []
    if 2 * k <= GROUPS:  # steps 1-2: the blocks' selection, as the metrics' with k for R and no positive
        caps = np.full(n, candidate_cap(k))
        tau, count, row, col, value = blocks.select(s, r0, r1, GROUPS, np.full(n, k), np.full(n, np.inf, np.float32),
                                                    np.full(n, -np.inf, np.float32), caps)
        exact = (count > caps) | ~np.isfinite(tau)
        kept = ~exact[row]
        found.append((row[kept], col[kept], value[kept]))
    if exact.any():  # step 3
        for c0, c1, part in similarity.row_passes(blocks, s, r0, r1):
            chosen = exact[c0 - r0:c1 - r0]
            if chosen.any():
                kth = blocks.kth_largest(part, k).astype(np.float32)
                blocks.count_ge(part, kth)
                row, col, value = blocks.candidates(part, kth, chosen)
                found.append((row + (c0 - r0), col, value))
    row, col, value = (np.concatenate(parts) for parts in zip(*found))
    order = np.lexsort((col, -value, row))
    row, col, value = row[order], col[order], value[order]
    take = np.searchsorted(row, np.arange(n))[:, None] + np.arange(k)
    return col[take], value[take]


class ExactIndex:
    """A gallery searched exactly by cosine similarity: normalised and padded once, then queried in blocks.

    features: N x D; memory_mb bounds one block's working memory (the N x D float32 copy comes on top).
    use_gpu, backend: as metrics.retrieval_metrics.
    """

    def __init__(self, features, memory_mb=similarity.DEFAULT_MEMORY_MB, use_gpu=False, backend=None):
        similarity.check_backend(backend, use_gpu)
        self.num_items = len(features)
        self.gallery = similarity.padded_gallery(features, GROUPS)
        self.memory_mb, self.use_gpu, self.backend = memory_mb, use_gpu, backend

    def search(self, queries, k, exclude_self=False, block_size=None):
        """The k nearest items of each query (its own row excluded when exclude_self: queries are the gallery),
        nearest first: (indices Q x k, cosine similarities Q x k); k is capped at the items there are."""
        queries = self.gallery[:self.num_items] if exclude_self else similarity.l2_normalize(queries)
        if queries.shape[1] != self.gallery.shape[1]:
            raise ValueError("query and gallery dimensions differ: %d vs %d"
                             % (queries.shape[1], self.gallery.shape[1]))
        k = min(int(k), self.num_items - int(exclude_self))
        if k < 1 or len(queries) == 0:
            return np.empty((len(queries), max(k, 0)), np.int64), np.empty((len(queries), max(k, 0)), np.float32)
        per_element = similarity.blocks_class(self.use_gpu, self.backend).bytes_per_element
        rows = min(block_size or block_rows(len(self.gallery), k, self.memory_mb, per_element), len(queries))
        with similarity.open_blocks(queries, self.gallery, self.num_items, rows, exclude_self, self.use_gpu,
                                    self.backend) as blocks:
            return top_k(blocks, len(queries), k, rows)


def nearest(queries, gallery, k, memory_mb=similarity.DEFAULT_MEMORY_MB, exclude_self=False, block_size=None,
            use_gpu=False, backend=None):
    """ExactIndex(gallery).search(queries, k): with exclude_self, queries are the gallery and skip themselves."""
    return ExactIndex(gallery, memory_mb, use_gpu, backend).search(queries, k, exclude_self, block_size)
