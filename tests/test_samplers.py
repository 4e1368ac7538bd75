"""The training samplers: each batch layout's structure, the original's triplet draws, configuration errors."""
import numpy as np
import pytest
import scipy.stats

from core import samplers


def test_shuffled_sampler_visits_every_image_once_per_epoch():
    labels = np.arange(10)
    sampler = samplers.ShuffledSampler(labels, batch_size=4, seed=3)
    stream = np.concatenate([sampler.batch(b) for b in range(5)])
    assert sorted(stream[:10].tolist()) == list(range(10))
    assert sorted(stream[10:20].tolist()) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:20])
    assert np.array_equal(samplers.ShuffledSampler(labels, 4, seed=3).batch(3), sampler.batch(3))


def test_triplet_sampler_structure():
    labels = np.repeat(np.arange(6), [1, 2, 3, 4, 2, 5])
    sampler = samplers.TripletSampler(labels, batch_size=12, seed=0)
    for batch_index in range(20):
        triples = sampler.batch(batch_index).reshape(-1, 3)
        assert len(triples) == 4
        for anchor, positive, negative in triples:
            assert labels[anchor] == labels[positive] and anchor != positive
            assert labels[negative] != labels[anchor]
            assert labels[anchor] != 0  # a singleton class cannot be an anchor


def test_triplet_classes_are_drawn_uniformly_over_classes_not_images():
    """As the original: every class with two images is an anchor class equally often, however many images it has,
    and the negative's class is uniform over the other classes, the singleton included."""
    sizes = [1, 2, 3, 40, 100, 5]  # images per class: drawing over images would pick class 4 fifty times class 1's
    labels = np.repeat(np.arange(len(sizes)), sizes)
    sampler = samplers.TripletSampler(labels, batch_size=300, seed=5)
    triples = labels[np.concatenate([sampler.batch(index) for index in range(20)])].reshape(-1, 3)
    anchor_counts = np.bincount(triples[:, 0], minlength=len(sizes))
    assert anchor_counts[0] == 0 and (triples[:, 0] == triples[:, 1]).all()
    assert scipy.stats.chisquare(anchor_counts[1:]).pvalue > 0.01, anchor_counts  # 2000 triples, 5 anchor classes
    for anchor_class in range(1, len(sizes)):
        negatives = triples[triples[:, 0] == anchor_class, 2]
        counts = np.bincount(negatives, minlength=len(sizes))
        assert counts[anchor_class] == 0
        assert scipy.stats.chisquare(np.delete(counts, anchor_class)).pvalue > 0.01, (anchor_class, counts)


def test_class_balanced_sampler_structure_and_small_classes():
    labels = np.repeat(np.arange(8), [3, 1, 4, 2, 5, 3, 1, 3])
    with pytest.warns(UserWarning, match="2 of 8 classes have fewer than --samples_each_class=2"):
        sampler = samplers.ClassBalancedSampler(labels, batch_size=6, samples_each_class=2, seed=1)
    seen_classes = set()
    for batch_index in range(12):
        batch = sampler.batch(batch_index)
        groups = labels[batch].reshape(3, 2)
        assert (groups[:, 0] == groups[:, 1]).all()
        assert len(set(groups[:, 0])) == 3
        assert len(set(batch.tolist())) == 6
        seen_classes.update(groups[:, 0].tolist())
    assert seen_classes == {0, 2, 3, 4, 5, 7}


@pytest.mark.parametrize("batch_layout, batch_size, samples_each_class, words", [
    (samplers.CLASS_BALANCED, 7, 2, "--train_batch_size=7 must be a multiple of --samples_each_class=2"),
    (samplers.CLASS_BALANCED, 40, 2, "needs 20 classes per batch, but only 10"),
    (samplers.TRIPLETS, 10, 2, "--train_batch_size=10 must be a multiple of 3"),
    ("pairs", 6, 2, "unknown batch layout 'pairs'"),
])
def test_sampler_configuration_errors_name_the_flag(batch_layout, batch_size, samples_each_class, words):
    with pytest.raises(ValueError, match=words):
        samplers.make_sampler(batch_layout, np.repeat(np.arange(10), 3), batch_size, samples_each_class, 0)
