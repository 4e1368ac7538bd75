"""NMI and pair F1 against brute force over sets and pairs; k-means on clusters any implementation must find."""
import itertools
import math

import numpy as np
import pytest

from core import clustering


def brute_force_nmi(clusters, labels):
    """From the definitions: probabilities of sets of items, I = sum p(k, j) log p(k, j) / (p(k) p(j))."""
    n = len(labels)
    cluster_sets = {c: {i for i in range(n) if clusters[i] == c} for c in set(clusters)}
    class_sets = {c: {i for i in range(n) if labels[i] == c} for c in set(labels)}
    mutual = 0.0
    for a in cluster_sets.values():
        for b in class_sets.values():
            if a & b:
                mutual += len(a & b) / n * math.log(n * len(a & b) / (len(a) * len(b)))
    entropy = sum(-len(s) / n * math.log(len(s) / n) for s in list(cluster_sets.values()) + list(class_sets.values()))
    return 1.0 if entropy == 0 else 2 * mutual / entropy


def brute_force_f1(clusters, labels):
    true_positive = predicted = actual = 0
    for i, j in itertools.combinations(range(len(labels)), 2):
        same_cluster, same_class = clusters[i] == clusters[j], labels[i] == labels[j]
        true_positive += same_cluster and same_class
        predicted += same_cluster
        actual += same_class
    if true_positive == 0:
        return 0.0
    precision, recall = true_positive / predicted, true_positive / actual
    return 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize("seed", range(8))
def test_nmi_and_f1_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    clusters = rng.integers(0, int(rng.integers(1, 8)), n)
    labels = rng.choice(["a", "b", "c", "d"][:int(rng.integers(1, 5))], n)
    assert clustering.nmi(clusters, labels) == pytest.approx(brute_force_nmi(clusters, labels), abs=1e-12)
    assert clustering.pair_f1(clusters, labels) == pytest.approx(brute_force_f1(clusters, labels), abs=1e-12)


def test_by_hand():
    # clusters {0,1,2} {3,4,5}; classes {0,1} {2,3} {4,5}: pairs TP = 1 + 1 = 2, same cluster 6, same class 3
    clusters, labels = [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]
    assert clustering.pair_f1(clusters, labels) == pytest.approx(2 * (2 / 6) * (2 / 3) / (2 / 6 + 2 / 3))
    assert clustering.nmi([5, 5, 7, 7], ["x", "x", "y", "y"]) == pytest.approx(1.0)
    assert clustering.nmi([0, 1, 0, 1], [0, 0, 1, 1]) == pytest.approx(0.0, abs=1e-15)


def separated(rng, num_classes=12, per_class=20, dim=16):
    centres = np.eye(dim)[:num_classes] * 10
    labels = np.repeat(np.arange(num_classes), per_class)
    return (centres[labels] + rng.standard_normal((len(labels), dim))).astype(np.float32), labels


@pytest.mark.parametrize("backend", ["numpy", "faiss"])
def test_kmeans_finds_well_separated_classes_the_same_every_run(backend):
    if backend == "faiss":
        pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    features, labels = separated(rng, num_classes=2, per_class=30)
    results = clustering.clustering_metrics(features, labels, seed=3, backend=backend)
    assert results == {"nmi": pytest.approx(1.0), "f1": pytest.approx(1.0), "num_clusters": 2, "kmeans": backend}
    # with more clusters a random start may merge two classes and split another (a local minimum)
    features, labels = separated(rng)
    first = clustering.kmeans(features, 12, seed=1, backend=backend)
    assert np.array_equal(first[0], clustering.kmeans(features, 12, seed=1, backend=backend)[0])
    assert clustering.nmi(first[0], labels) > 0.8


def test_numpy_kmeans_blocks_do_not_change_the_result():
    rng = np.random.default_rng(2)
    features, _ = separated(rng, num_classes=10, per_class=50)
    small = clustering.kmeans(features, 10, seed=4, backend="numpy", memory_mb=0.001)[0]
    assert np.array_equal(small, clustering.kmeans(features, 10, seed=4, backend="numpy")[0])


def test_bad_backend():
    with pytest.raises(ValueError, match="numpy, faiss"):
        clustering.kmeans(np.ones((3, 2)), 2, backend="sklearn")
