"""The blocked similarity matrix: one block of query rows against the whole gallery at a time, never all of it.

The engine behind the retrieval metrics (core/metrics.py), top-k search (core/neighbours.py) and re-ranking
(core/rerank.py). Features are L2-normalised, so a similarity is the cosine s = q . g, which orders items as the
suite's squared Euclidean distance between normalised features, d = 2 - 2 s, does.

The gallery is laid out once as a padded float32 matrix whose row count is a multiple of a group width, with at
least one padding row whose similarity is always -inf: a block of similarities then splits into column groups of
equal width, whose maxima bound the K-th largest similarity of a row (`group_max`). A block object owns its
buffers and offers the few passes the callers combine: the product, gathering columns, group maxima, counting and
extracting the items at or above a per-row threshold. NumPy blocks go through the BLAS on the CPU; Paddle blocks
run the same passes as Paddle ops on the CPU or a GPU. The selection that the retrieval metrics and top-k search
share (`select`) combines them; on NumPy blocks a C pass (select_kernel.py) does it in one reading of each row.
"""
import contextlib
import math

import numpy as np

from core import select_kernel

DEFAULT_MEMORY_MB = 256
BACKENDS = ("numpy", "paddle")
GROUP_STEP = 4  # the passes' bound tau reads every 4th chunk of group-width columns: a quarter of each row


def l2_normalize(features, out=None):
    """Rows of `features` (N x ...) as float32 unit vectors; all-zero rows stay zero. Writes into `out` if given."""
    features = np.asarray(features)
    flat = features.reshape(len(features), -1)
    if out is None:
        out = np.empty(flat.shape, np.float32)
    out[...] = flat
    if not np.isfinite(out).all():
        raise ValueError("features contain NaN or infinity")
    norms = np.sqrt(np.einsum("ij,ij->i", out, out))
    out /= np.where(norms > 0, norms, 1)[:, None]
    return out


def padded_size(num_gallery, width):
    """Rows of the padded gallery: a multiple of `width` with at least one padding row."""
    return width * math.ceil((num_gallery + 1) / width)


def padded_gallery(features, width):
    """The normalised gallery in a zero-padded float32 matrix of padded_size(N, width) rows."""
    features = np.asarray(features)
    gallery = np.zeros((padded_size(len(features), width), int(np.prod(features.shape[1:]))), np.float32)
    l2_normalize(features, out=gallery[:len(features)])
    return gallery


def rows_per_block(memory_mb, bytes_per_row):
    """Query rows per block so that one block's working memory, `bytes_per_row` a row, fits memory_mb."""
    return max(1, int(memory_mb * 2**20 // bytes_per_row))


def check_backend(backend, use_gpu):
    if backend not in (None,) + BACKENDS or (use_gpu and backend == "numpy"):
        raise ValueError("backend must be 'numpy' or 'paddle' (use_gpu needs 'paddle'), got %r" % (backend,))


def blocks_class(use_gpu=False, backend=None):
    return PaddleBlocks if use_gpu or backend == "paddle" else NumpyBlocks


@contextlib.contextmanager
def open_blocks(queries, gallery, num_gallery, rows, exclude_self=False, use_gpu=False, backend=None):
    """Blocks of `rows` normalised `queries` against the padded `gallery` (its first num_gallery rows are items).

    exclude_self: query i is gallery item i (all-vs-all), whose similarity is -inf. use_gpu and backend as in
    metrics.retrieval_metrics; the Paddle path also works while the caller's script is in static mode.
    """
    check_backend(backend, use_gpu)
    if blocks_class(use_gpu, backend) is NumpyBlocks:
        yield NumpyBlocks(queries, gallery, num_gallery, rows, exclude_self)
        return
    with dygraph() as paddle:
        if use_gpu and not paddle.is_compiled_with_cuda():
            raise ValueError("use_gpu=True needs a CUDA build of PaddlePaddle")
        place = paddle.CUDAPlace(0) if use_gpu else paddle.CPUPlace()
        yield PaddleBlocks(paddle, place, queries, gallery, num_gallery, exclude_self)


def row_passes(blocks, s, r0, r1):
    """The passes over `s`, the similarities of queries r0..r1-1: (c0, c1, the rows of queries c0..c1-1), in slices
    of `blocks.pass_rows` rows that stay in the cache (the whole block where pass_rows is None)."""
    step = blocks.pass_rows or r1 - r0
    for c0 in range(r0, r1, step):
        c1 = min(c0 + step, r1)
        yield c0, c1, s if c1 - c0 == r1 - r0 else s[c0 - r0:c1 - r0]


def select_by_passes(blocks, s, r0, r1, width, num, t_first, t_last, caps):
    """The items of each row that can rank among its first `num`, from the blocks' passes: steps 2 and 3 of the
    retrieval metrics (core/metrics.py; num: R, t_first and t_last: the best and the R-th best positive's
    similarity) and steps 1 and 2 of top-k search (core/neighbours.py; num: k, t_first +inf, t_last -inf).

    s: the similarities of queries r0..r1-1; caps: the most items a row may extract. tau bounds the num-th largest
    similarity of a row from below: the num-th largest of the maxima of `width` column groups over a quarter of the
    row, raised to t_last (an item of the row, or -inf). The items >= theta = min(tau, t_first) are counted; where
    t_first >= tau and the count is at most the cap, they are extracted.
    Returns (tau (inf where num is 0), count, row (0-based in the block), col, value) of the extracted items.
    """
    at = np.arange(r1 - r0)
    maxima = -np.sort(-blocks.group_max(s, width, GROUP_STEP), axis=1)
    tau = np.where(num > 0, np.maximum(maxima[at, np.maximum(num - 1, 0)], t_last), np.inf).astype(np.float32)
    theta = np.where(num > 0, np.minimum(tau, t_first), np.inf).astype(np.float32)
    count, found = np.empty(r1 - r0, np.int64), []
    for c0, c1, part in row_passes(blocks, s, r0, r1):
        rows = slice(c0 - r0, c1 - r0)
        count[rows] = blocks.count_ge(part, theta[rows])
        extract = (t_first[rows] >= tau[rows]) & (count[rows] <= caps[rows])
        if extract.any():
            row, col, value = blocks.candidates(part, theta[rows], extract)
            found.append((row + rows.start, col, value))
    row, col, value = (np.concatenate(parts) for parts in zip(*found)) if found else (np.empty(0, np.int64),) * 3
    return tau, count, row, col, value


class NumpyBlocks:
    """Blocks on the CPU: the product through NumPy's BLAS; the passes over slices that stay in the cache."""

    bytes_per_element = 4  # float32 similarity (the mask of one slice is a few MB)
    cache_bytes = 2 << 20  # bool mask of one slice of rows

    def __init__(self, queries, gallery, num_gallery, rows, exclude_self=False):
        self.queries, self.gallery, self.num_gallery, self.padded = queries, gallery, num_gallery, len(gallery)
        self.exclude_self = exclude_self
        self.pass_rows = max(1, self.cache_bytes // self.padded)
        self._s = np.empty((rows, self.padded), np.float32)
        self._mask = np.empty((min(rows, self.pass_rows), self.padded), bool)

    def similarities(self, r0, r1):
        """The block of queries r0..r1-1: padding columns (and each query's own column, if excluded) at -inf."""
        s = self._s[:r1 - r0]
        np.matmul(self.queries[r0:r1], self.gallery.T, out=s)
        self.mask_block(s, r0, r1)
        return s

    def mask_block(self, s, r0, r1):
        s[:, self.num_gallery:] = -np.inf
        if self.exclude_self:
            s[np.arange(r1 - r0), np.arange(r0, r1)] = -np.inf

    def take(self, s, columns):
        return np.take_along_axis(s, columns, axis=1)

    def group_max(self, s, width, step):
        """Maxima of `width` column groups: group j is column j of every `step`-th chunk of `width` columns."""
        acc = s[:, :width].copy()
        for c in range(step * width, s.shape[1], step * width):
            np.maximum(acc, s[:, c:c + width], out=acc)
        return acc

    def kth_largest(self, s, k):
        return -np.partition(-s, k - 1, axis=1)[:, k - 1]

    def count_ge(self, s, theta):
        mask = self._mask[:len(s)]
        np.greater_equal(s, theta[:, None], out=mask)
        if hasattr(np, "bitwise_count"):  # NumPy >= 2: popcount of 8 mask bytes at a time
            return np.bitwise_count(mask.view(np.uint64)).sum(axis=1, dtype=np.int64)
        return np.count_nonzero(mask, axis=1).astype(np.int64)

    def candidates(self, s, theta, rows):
        """(row, column, similarity) of the items >= theta in the chosen rows; follows count_ge(s, theta)."""
        mask = self._mask[:len(s)]
        mask[~rows] = False
        flat = np.flatnonzero(mask)
        row, col = np.divmod(flat, self.padded)
        return row, col, s.reshape(-1)[flat]

    def count_row(self, s, i, thresholds):
        return np.array([np.count_nonzero(s[i] >= x) for x in thresholds], np.int64)

    def select(self, s, r0, r1, width, num, t_first, t_last, caps):
        """select_by_passes, by the C pass where it is built (plain float32 blocks; the same results)."""
        plain = s.dtype == np.float32 and s.flags.c_contiguous
        found = select_kernel.select(s, width, num, t_first, t_last, caps) if plain else None
        return select_by_passes(self, s, r0, r1, width, num, t_first, t_last, caps) if found is None else found


class PaddleBlocks:
    """The same blocks as Paddle tensors on `place`: only counts and candidates come back to the host."""

    bytes_per_element = 10  # float32 similarity, bool mask, int32 temporary
    pass_rows = None        # rank whole blocks: fewer, larger device ops

    def __init__(self, paddle, place, queries, gallery, num_gallery, exclude_self=False):
        self.paddle, self.place = paddle, place
        self.queries = queries
        self.gallery = paddle.to_tensor(gallery, place=place)
        self.num_gallery, self.padded = num_gallery, len(gallery)
        self.exclude_self = exclude_self

    def _tensor(self, x):
        return self.paddle.to_tensor(x, place=self.place)

    def similarities(self, r0, r1):
        s = self.paddle.matmul(self._tensor(self.queries[r0:r1]), self.gallery, transpose_y=True)
        s[:, self.num_gallery:] = -np.inf
        if self.exclude_self:
            at = self._tensor(np.arange(r1 - r0))
            s[at, at + r0] = -np.inf
        return s

    def take(self, s, columns):
        return self.paddle.index_sample(s, self._tensor(columns)).numpy()

    def group_max(self, s, width, step):
        return s.reshape([s.shape[0], -1, width])[:, ::step, :].max(axis=1).numpy()

    def kth_largest(self, s, k):
        return self.paddle.topk(s, k, axis=1)[0][:, k - 1].numpy()

    def count_ge(self, s, theta):
        return (s >= self._tensor(theta[:, None])).astype("int32").sum(axis=1).numpy().astype(np.int64)

    def candidates(self, s, theta, rows):
        mask = self.paddle.logical_and(s >= self._tensor(theta[:, None]), self._tensor(rows[:, None]))
        at = self.paddle.nonzero(mask)
        value = self.paddle.gather_nd(s, at).numpy()
        at = at.numpy()
        return at[:, 0], at[:, 1], value

    def count_row(self, s, i, thresholds):
        above = s[int(i)].unsqueeze(0) >= self._tensor(thresholds[:, None])
        return above.astype("int32").sum(axis=1).numpy().astype(np.int64)

    def select(self, s, r0, r1, width, num, t_first, t_last, caps):
        return select_by_passes(self, s, r0, r1, width, num, t_first, t_last, caps)


@contextlib.contextmanager
def dygraph():
    """Paddle in dynamic mode inside, whatever mode the calling script is in; that mode is restored after."""
    import paddle
    static = not paddle.in_dynamic_mode()
    if static:
        paddle.disable_static()
    try:
        yield paddle
    finally:
        if static:
            paddle.enable_static()
