"""Clustering quality of features, as the CUB-200-2011 and Cars196 metric-learning papers report it.

The L2-normalised features are clustered by k-means into as many clusters as there are classes, then compared with
the classes (Song et al., "Deep Metric Learning via Lifted Structured Feature Embedding", 2016):

* NMI = 2 I(clusters; classes) / (H(clusters) + H(classes)), entropies and mutual information of the empirical
  distributions (natural logarithms; 1 when both entropies are 0);
* F1 over pairs of items: a pair is predicted to match when its items share a cluster and matches when they share
  a class; precision P = TP / (pairs sharing a cluster), recall R = TP / (pairs sharing a class), F1 = 2PR / (P + R).

k-means (Lloyd's algorithm on squared Euclidean distance) starts from `num_clusters` distinct items drawn with the
seed. faiss's implementation runs when faiss is installed; otherwise the NumPy one here, which assigns items to
centres in blocks of bounded memory and re-seeds an empty cluster with the item farthest from its centre. The two
draw different starting items, so their results differ slightly; the result says which one ran.
"""
import numpy as np
import scipy.sparse

from core import faiss_search, similarity

DEFAULT_ITERATIONS = 20
KMEANS_BACKENDS = ("auto", "numpy", "faiss")


def contingency(clusters, labels):
    """Counts n_kj of items in cluster k with label j: (table, cluster sizes, class sizes)."""
    _, cluster_index = np.unique(clusters, return_inverse=True)
    _, label_index = np.unique(labels, return_inverse=True)
    table = np.zeros((cluster_index.max() + 1, label_index.max() + 1), np.int64)
    np.add.at(table, (cluster_index.ravel(), label_index.ravel()), 1)
    return table, table.sum(axis=1), table.sum(axis=0)


def _entropy(counts, n):
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum())


def nmi(clusters, labels):
    """Normalised mutual information 2 I / (H_clusters + H_classes) (module docstring)."""
    table, cluster_sizes, class_sizes = contingency(clusters, labels)
    n = table.sum()
    k, j = np.nonzero(table)
    joint = table[k, j] / n
    mutual = float((joint * np.log(joint * n * n / (cluster_sizes[k] * class_sizes[j]))).sum())
    entropies = _entropy(cluster_sizes, n) + _entropy(class_sizes, n)
    return 1.0 if entropies == 0 else 2 * mutual / entropies


def pair_f1(clusters, labels):
    """F1 of 'same cluster' as a prediction of 'same class' over all pairs of items (module docstring)."""
    table, cluster_sizes, class_sizes = contingency(clusters, labels)

    def pairs(counts):
        return float((counts * (counts - 1) // 2).sum())

    true_positives = pairs(table)
    predicted, actual = pairs(cluster_sizes), pairs(class_sizes)
    if true_positives == 0:
        return 0.0
    precision, recall = true_positives / predicted, true_positives / actual
    return 2 * precision * recall / (precision + recall)


def _assign(points, centres, memory_mb):
    """Nearest centre of each point and the squared distance to it, in blocks of rows."""
    half_norms = 0.5 * np.einsum("ij,ij->i", centres, centres)
    rows = similarity.rows_per_block(memory_mb, len(centres) * 4)
    nearest = np.empty(len(points), np.int64)
    distance = np.empty(len(points), np.float64)
    for r0 in range(0, len(points), rows):
        block = points[r0:r0 + rows] @ centres.T - half_norms  # argmax of x.c - |c|^2 / 2 is the nearest centre
        nearest[r0:r0 + rows] = block.argmax(axis=1)
        best = block[np.arange(len(block)), nearest[r0:r0 + rows]]
        distance[r0:r0 + rows] = np.einsum("ij,ij->i", points[r0:r0 + rows], points[r0:r0 + rows]) - 2 * best
    return nearest, distance


def _numpy_kmeans(points, num_clusters, seed, iterations, memory_mb):
    rng = np.random.default_rng(seed)
    centres = points[np.sort(rng.choice(len(points), num_clusters, replace=False))].astype(np.float64)
    assignment = None
    for _ in range(iterations):
        nearest, distance = _assign(points, centres.astype(np.float32), memory_mb)
        if assignment is not None and np.array_equal(nearest, assignment):
            break
        assignment = nearest
        members = scipy.sparse.csr_matrix((np.ones(len(points)), (assignment, np.arange(len(points)))),
                                          shape=(num_clusters, len(points)))
        sums = members @ points.astype(np.float64)
        sizes = np.bincount(assignment, minlength=num_clusters)
        empty = np.flatnonzero(sizes == 0)
        centres[sizes > 0] = sums[sizes > 0] / sizes[sizes > 0, None]
        centres[empty] = points[np.argsort(-distance, kind="stable")[:len(empty)]]
    return assignment


def _faiss_kmeans(points, num_clusters, seed, iterations):
    import faiss
    kmeans = faiss.Kmeans(points.shape[1], num_clusters, niter=iterations, seed=seed, verbose=False)
    kmeans.train(points)
    return kmeans.index.search(points, 1)[1].ravel().astype(np.int64)


def kmeans(features, num_clusters, seed=0, iterations=DEFAULT_ITERATIONS, backend="auto",
           memory_mb=similarity.DEFAULT_MEMORY_MB):
    """Cluster index of each L2-normalised feature and the implementation that ran ('faiss' or 'numpy')."""
    if backend not in KMEANS_BACKENDS:
        raise ValueError("k-means backend must be one of %s, got %r" % (", ".join(KMEANS_BACKENDS), backend))
    points = similarity.l2_normalize(features)
    num_clusters = min(int(num_clusters), len(points))
    if backend == "faiss" or (backend == "auto" and faiss_search.available()):
        return _faiss_kmeans(points, num_clusters, seed, iterations), "faiss"
    return _numpy_kmeans(points, num_clusters, seed, iterations, memory_mb), "numpy"


def clustering_metrics(features, labels, seed=0, backend="auto", memory_mb=similarity.DEFAULT_MEMORY_MB):
    """k-means into as many clusters as classes, then {'nmi', 'f1', 'num_clusters', 'kmeans'} (module docstring)."""
    labels = np.asarray(labels).reshape(-1)
    num_classes = len(np.unique(labels))
    clusters, implementation = kmeans(features, num_classes, seed, backend=backend, memory_mb=memory_mb)
    return {"nmi": nmi(clusters, labels), "f1": pair_f1(clusters, labels), "num_clusters": num_classes,
            "kmeans": implementation}
