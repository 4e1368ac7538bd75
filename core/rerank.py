"""Re-ranking a query's results: k-reciprocal encoding (Zhong et al., CVPR 2017) and query expansion (alpha-QE).

k-reciprocal re-ranking, on the Q queries and N gallery items together (n = Q + N items, features normalised):

* d(i, j) = ||x_i - x_j||^2 = 2 - 2 x_i . x_j (the paper's Mahalanobis distance with M = I), divided by the
  largest d(i, .) of the row, as the authors' code does;
* N(i, k): i itself, then its k nearest items (ties by index); the k-reciprocal set
  R(i, k) = {j in N(i, k) : i in N(j, k)};
* R*(i) = R(i, k1), plus R(j, round(k1 / 2)) for each j in R(i, k1) sharing more than 2/3 of its items with
  R(i, k1);
* V_i[j] = exp(-d(i, j)) / sum over R*(i) of exp(-d(i, .)) for j in R*(i), else 0; local query expansion
  replaces V_i by the mean of V over N(i, k2 - 1) (the k2 nearest, i included);
* Jaccard distance d_J(i, j) = 1 - sum_c min(V_ic, V_jc) / sum_c max(V_ic, V_jc) = 1 - m / (2 - m), with
  m = sum_c min(V_ic, V_jc) (rows of V sum to 1);
* final distance d*(i, j) = (1 - lambda) d_J(i, j) + lambda d(i, j), for query i and gallery item j.

Memory: everything but the features is sparse or per block. The neighbour table is n x (k1 + 1); V holds at most
|R*(i)| entries a row and its expanded version about k2 times that; the Jaccard sums of a block of query rows are
accumulated through an inverted index (the gallery rows of V by column) into one rows x N array, next to the
similarity block, both within memory_mb. The cost the paper's method cannot avoid: N(j, k1) of every gallery item j
is over all Q + N items, so one exact k-NN pass over n x n similarities (blocked, memory-bounded) comes first.

Query expansion (Radenovic et al., 2018; alpha = 0 is the average query expansion of Chum et al., 2007): a query
becomes normalise(q + sum over its k nearest g_i of max(q . g_i, 0)^alpha g_i), and is searched again.
"""
import numpy as np
import scipy.sparse

from core import neighbours, similarity

DEFAULT_K1, DEFAULT_K2, DEFAULT_LAMBDA = 20, 6, 0.3
_CHUNK_ITEMS = 512      # items whose reciprocal sets are found together (about 6 MB of temporaries at k1 = 20)


def expand_queries(query_features, gallery_features, indices, scores, alpha=0.0):
    """alpha-QE (module docstring) from each query's nearest gallery items `indices` (-1: none) and their
    similarities."""
    queries = similarity.l2_normalize(query_features)
    if indices.shape[1] == 0:
        return queries
    found = indices >= 0  # an approximate index may return fewer than k (index -1)
    weights = np.where(found, np.maximum(scores, 0) ** alpha if alpha else 1.0, 0.0).astype(np.float32)
    for column in range(indices.shape[1]):
        neighbour = similarity.l2_normalize(gallery_features[np.maximum(indices[:, column], 0)])
        queries += weights[:, column:column + 1] * neighbour
    return similarity.l2_normalize(queries)


class _MinimaBlocks(similarity.NumpyBlocks):
    """Blocks that also keep each row's smallest similarity (its largest distance) on the way."""

    def similarities(self, r0, r1):
        s = super().similarities(r0, r1)
        self.minima[r0:r1] = s[:, :self.num_gallery].min(axis=1)
        return s


def _reciprocal(table, k, chunk):
    """R(i, k) of the items `chunk` as a padded array (-1 pads), from `table`, each row N(i, k1) itself first."""
    forward = table[chunk, :k + 1]
    backward = table[forward, :k + 1]
    return np.where((backward == chunk[:, None, None]).any(axis=2), forward, -1)


class KReciprocal:
    """k-reciprocal re-ranking of the queries against the gallery (module docstring); scores are 1 - d*.

    Use it as `rescore` of metrics.retrieval_metrics, or call top_k for each query's best gallery items.
    """

    bytes_per_element = 4 + 3 * 8  # the similarity block, the Jaccard sums and two float64 temporaries

    def __init__(self, query_features, gallery_features, k1=DEFAULT_K1, k2=DEFAULT_K2, lambda_value=DEFAULT_LAMBDA,
                 memory_mb=similarity.DEFAULT_MEMORY_MB):
        if k1 < 1 or k2 < 1 or not 0 <= lambda_value <= 1:
            raise ValueError("k1 and k2 must be positive and lambda in [0, 1], got %s, %s, %s"
                             % (k1, k2, lambda_value))
        self.num_queries, self.num_gallery = len(query_features), len(gallery_features)
        self.lambda_value, self.memory_mb = lambda_value, memory_mb
        # Queries and gallery normalised once, in the padded matrix the neighbourhoods are searched in.
        padded = similarity.padded_gallery(np.concatenate([np.asarray(query_features), np.asarray(gallery_features)]),
                                           neighbours.GROUPS)
        items = padded[:self.num_queries + self.num_gallery]
        self.queries, self.gallery = items[:self.num_queries], items[self.num_queries:]
        k1 = min(k1, len(items) - 1)
        table, self.max_distance = self._neighbour_table(padded, len(items), k1)
        self.v_query, self.v_gallery_by_column = self._encode(items, table, k1, min(k2, k1 + 1))

    def _neighbour_table(self, padded, n, k1):
        """N(i, k1) of every item (the first n rows of `padded`), itself first, and the largest distance of each
        row."""
        rows = min(neighbours.block_rows(len(padded), k1 + 1, self.memory_mb, 4), n)
        blocks = _MinimaBlocks(padded[:n], padded, n, rows)
        blocks.minima = np.empty(n, np.float32)
        table, _ = neighbours.top_k(blocks, n, k1 + 1, rows)
        # Itself first: a duplicate (or rounding) may tie with or beat an item's own similarity.
        itself = np.arange(n)[:, None]
        keep = np.argsort(table == itself, axis=1, kind="stable")[:, :k1]  # the first k1 that are not itself
        table = np.concatenate([itself, np.take_along_axis(table, keep, axis=1)], axis=1).astype(np.int32)
        return table, np.maximum(2 - 2 * blocks.minima.astype(np.float64), 1e-12)

    def _distances(self, items, i, j):
        """Row-normalised d(i, j) for index arrays i, j."""
        d = 2 - 2 * np.einsum("ij,ij->i", items[i], items[j]).astype(np.float64)
        return np.maximum(d, 0) / self.max_distance[i]

    def _encode(self, items, table, k1, k2):
        """V with local query expansion: the query rows (CSR) and the gallery rows by column (CSC)."""
        n = len(items)
        half = int(np.around(k1 / 2.0))
        rows, cols, values = [], [], []
        for start in range(0, n, _CHUNK_ITEMS):
            chunk = np.arange(start, min(start + _CHUNK_ITEMS, n))
            reciprocal = _reciprocal(table, k1, chunk)                              # chunk x (k1 + 1)
            candidates = np.maximum(reciprocal, 0)
            half_sets = _reciprocal(table, half, candidates.reshape(-1)).reshape(len(chunk), k1 + 1, half + 1)
            shared = (half_sets[..., None] == reciprocal[:, None, None, :]).any(axis=3) & (half_sets >= 0)
            size = (half_sets >= 0).sum(axis=2)
            expand = (reciprocal >= 0) & (shared.sum(axis=2) > 2.0 / 3.0 * size)
            union = np.concatenate([reciprocal, np.where(expand[..., None], half_sets, -1).reshape(len(chunk), -1)],
                                   axis=1)
            union.sort(axis=1)
            first = np.ones(union.shape, bool)
            first[:, 1:] = union[:, 1:] != union[:, :-1]
            row, position = np.nonzero(first & (union >= 0))
            row += start
            col = union[row - start, position]
            weight = np.exp(-self._distances(items, row, col))
            weight /= np.bincount(row - start, weight, minlength=len(chunk))[row - start]
            rows.append(row), cols.append(col), values.append(weight)
        v = scipy.sparse.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
                                    shape=(n, n))
        if k2 > 1:
            expansion = scipy.sparse.csr_matrix((np.full(n * k2, 1.0 / k2), table[:, :k2].reshape(-1),
                                                 np.arange(0, n * k2 + 1, k2)), shape=(n, n))
            v = expansion @ v
        return v[:self.num_queries].tocsr(), v[self.num_queries:].tocsc()

    def jaccard_sums(self, r0, r1):
        """m(i, j) = sum_c min(V_ic, V_jc) for queries r0..r1-1 and every gallery item j (rows x N float64)."""
        block = self.v_query[r0:r1].tocoo()
        by_column = self.v_gallery_by_column
        starts, ends = by_column.indptr[block.col], by_column.indptr[block.col + 1]
        counts = ends - starts
        total = int(counts.sum())
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        position = np.repeat(starts, counts) + offsets
        minimum = np.minimum(np.repeat(block.data, counts), by_column.data[position])
        flat = np.repeat(block.row.astype(np.int64), counts) * self.num_gallery + by_column.indices[position]
        return np.bincount(flat, minimum, minlength=(r1 - r0) * self.num_gallery).reshape(r1 - r0, -1)

    def open_blocks(self, width, rows):
        """Blocks of query rows whose similarities are the scores -d* (metrics.retrieval_metrics' rescore)."""
        return _RerankedBlocks(self, similarity.padded_gallery(self.gallery, width), rows)

    def top_k(self, k, block_size=None):
        """Each query's k best gallery items after re-ranking and their scores 1 - d*, best first."""
        k = min(int(k), self.num_gallery)
        padded = similarity.padded_size(self.num_gallery, neighbours.GROUPS)
        rows = block_size or neighbours.block_rows(padded, k, self.memory_mb, self.bytes_per_element)
        rows = min(rows, self.num_queries)
        blocks = self.open_blocks(neighbours.GROUPS, rows)
        indices, scores = neighbours.top_k(blocks, self.num_queries, k, rows)
        return indices, 1 + scores


class _RerankedBlocks(similarity.NumpyBlocks):
    def __init__(self, reranker, gallery, rows):
        super().__init__(reranker.queries, gallery, reranker.num_gallery, rows)
        self.reranker = reranker

    def similarities(self, r0, r1):
        s = super().similarities(r0, r1)
        real = s[:, :self.num_gallery]
        m = self.reranker.jaccard_sums(r0, r1)
        jaccard = 1 - m / (2 - m)
        distance = np.maximum(2 - 2 * real.astype(np.float64), 0) / self.reranker.max_distance[r0:r1, None]
        lam = self.reranker.lambda_value
        real[...] = -((1 - lam) * jaccard + lam * distance)
        return s
