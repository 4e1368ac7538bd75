"""faiss structures for search.py, when faiss is installed (pip install faiss-cpu): never required.

Vectors are L2-normalised, so inner product is the cosine similarity the exact search ranks by.
* flat: IndexFlatIP, exact search with faiss's own kernels;
* ivf: IndexIVFFlat, the items in `nlist` k-means cells (trained on at most 256 items a cell, seeded); a query
  searches its `nprobe` nearest cells;
* hnsw: IndexHNSWFlat, a navigable small-world graph with `hnsw_m` links an item, built with a candidate list of
  `ef_construction`; a query explores `ef_search` candidates.
"""
import math
import os

import numpy as np

from core import similarity

INDEX_TYPES = ("flat", "ivf", "hnsw")
TRAINING_ITEMS_PER_CELL = 256  # faiss's own cap on k-means training data per centroid
ADD_CHUNK_ROWS = 65536         # rows normalised and added at a time: bounds the float32 copies


def available():
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def default_nlist(num_items):
    """4 sqrt(N) cells, the usual starting point, at most one per item."""
    return max(1, min(num_items, int(round(4 * math.sqrt(num_items)))))


def _normalised_chunks(features):
    for r0 in range(0, len(features), ADD_CHUNK_ROWS):
        yield similarity.l2_normalize(features[r0:r0 + ADD_CHUNK_ROWS])


def build(index_type, features, nlist=0, hnsw_m=32, ef_construction=40, seed=0):
    """A structure of `index_type` over `features` (N x D); returns (index, the parameters to keep)."""
    import faiss
    dim = features.shape[1]
    if index_type == "flat":
        index, parameters = faiss.IndexFlatIP(dim), {}
    elif index_type == "ivf":
        nlist = nlist or default_nlist(len(features))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        sample = np.random.default_rng(seed).permutation(len(features))[:TRAINING_ITEMS_PER_CELL * nlist]
        index.train(similarity.l2_normalize(features[np.sort(sample)]))
        parameters = {"nlist": nlist}
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        parameters = {"hnsw_m": hnsw_m, "ef_construction": ef_construction}
    else:
        raise ValueError("index type must be one of %s, got %r" % (", ".join(INDEX_TYPES), index_type))
    add(index, features)
    return index, parameters


def add(index, features):
    for chunk in _normalised_chunks(features):
        index.add(chunk)


def search(index, queries, k, nprobe=16, ef_search=64):
    """The k best items of each query and their cosine similarities, best first (faiss's order)."""
    import faiss
    if isinstance(index, faiss.IndexIVF):
        index.nprobe = nprobe
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = max(ef_search, k)
    scores, indices = index.search(similarity.l2_normalize(queries), min(k, index.ntotal))
    return indices.astype(np.int64), scores


def save(index, handle):
    """Writes `index` into an open binary file."""
    import faiss
    handle.write(faiss.serialize_index(index).tobytes())


def load(path):
    import faiss
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    return faiss.read_index(path)


def recall_against(approximate, exact):
    """Recall@k of approximate results against exact ones: the share of each query's exact k found, averaged."""
    approximate, exact = np.asarray(approximate), np.asarray(exact)
    k = exact.shape[1]
    found = [len(np.intersect1d(a[a >= 0], e)) / k for a, e in zip(approximate, exact)]
    return float(np.mean(found)) if found else 1.0
