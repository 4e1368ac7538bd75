"""The triplet loss's in-batch miners (--miner) against float64 NumPy versions of their papers' formulas: values,
gradients, label edge cases, ties, flags."""
import numpy as np
import pytest

import losses
from core import samplers
from loss_tools import (FEATURE_DIM, MINER_REFERENCES, build, finite_difference_gradient, ref_in_batch, run_loss,
                        static_mode)  # noqa: F401  (static_mode: an autouse fixture)

MINERS = sorted(losses.MINERS)
LABEL_CASES = {
    "balanced": [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3],
    "a class with one image": [0, 0, 0, 0, 1, 2, 2, 2, 3, 3, 4, 4],
    "all one class": [6] * 12,
}


def mined(miner, margin=0.1, batch_size=12, samples_each_class=3):
    return lambda: losses.TripletLoss(margin, batch_size, miner, samples_each_class)


@pytest.mark.parametrize("miner", MINERS)
@pytest.mark.parametrize("case", LABEL_CASES)
@pytest.mark.parametrize("seed,margin", [(0, 0.1), (1, 0.1), (2, 0.5), (3, 2.0)])
def test_miner_matches_reference(miner, case, seed, margin):
    rng = np.random.default_rng(seed)
    labels = np.array(LABEL_CASES[case])
    x = rng.normal(size=(12, FEATURE_DIM)) + 1.2 * np.eye(FEATURE_DIM)[labels % FEATURE_DIM]
    (loss,), _, _ = run_loss(mined(miner, margin), x, labels)
    reference = ref_in_batch(MINER_REFERENCES[miner], x, labels, margin=margin)
    assert np.shape(loss) == np.shape(reference)
    if case != "all one class":
        assert np.max(reference) > 0
    np.testing.assert_allclose(loss, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("miner", MINERS)
def test_miner_gradient(miner):
    rng = np.random.default_rng(30)
    labels = np.array(LABEL_CASES["a class with one image"])
    x = rng.normal(size=(12, 4))
    probe = rng.normal(size=(12, 1)) if miner == "batch_hard" else np.array(0.8)
    _, _, gradient = run_loss(mined(miner, margin=0.5), x, labels, dtype="float64", probe=probe)
    objective = lambda z: (ref_in_batch(MINER_REFERENCES[miner], z, labels, margin=0.5) * probe).sum()
    np.testing.assert_allclose(gradient, finite_difference_gradient(objective, x), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("miner", MINERS)
def test_ties_identical_embeddings_give_the_margin(miner):
    """Every distance 0: the hardest positive and negative tie, no negative is beyond a positive (semi_hard falls
    back to the farthest), every triplet's hinge is the margin."""
    x, labels = np.tile(np.linspace(-1, 1, FEATURE_DIM), (12, 1)), np.array(LABEL_CASES["balanced"])
    (loss,), _, gradient = run_loss(mined(miner, margin=0.3), x, labels, probe="sum")
    np.testing.assert_allclose(loss, 0.3, rtol=1e-5)
    assert np.isfinite(gradient).all()


def test_semi_hard_takes_the_nearest_negative_beyond_the_positive():
    # Unit vectors at squared distances 0, 0.5, 0.2, 0.7 and 1.0 from the first, and one opposite-ish (2.0): for the
    # pair (0, 1), 0.5 apart, the semi-hard negative is the one at 0.7, neither the nearer at 0.2 nor the farther ones;
    # for the pair (1, 0) the only negative beyond 0.5 is the last one, far enough to leave a hinge of 0.
    angles = np.append(np.arccos(1 - np.array([0.0, 0.5, 0.2, 0.7, 1.0]) / 2), -np.pi / 2)
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = np.array([0, 0, 1, 2, 3, 4])
    (loss,), _, _ = run_loss(mined("semi_hard", margin=0.4, batch_size=6, samples_each_class=2), x, labels,
                             dtype="float64")
    expected = np.mean([0.5 - 0.7 + 0.4, 0.0])
    np.testing.assert_allclose(loss, expected, rtol=1e-7)
    np.testing.assert_allclose(ref_in_batch(MINER_REFERENCES["semi_hard"], x, labels, margin=0.4), expected,
                               rtol=1e-12)


def test_a_miner_makes_the_batches_class_balanced():
    loss = build("triplet", 12, miner="semi_hard", samples_each_class=4)
    assert loss.batch_layout == samplers.CLASS_BALANCED and loss.samples_each_class == 4
    assert build("triplet", 12).batch_layout == samplers.TRIPLETS  # the original's, by default


@pytest.mark.parametrize("make,message", [
    (lambda: losses.TripletLoss(0.1, 10, "batch_hard", 3),
     "--train_batch_size=10 is not divisible by --samples_each_class=3"),
    (lambda: losses.TripletLoss(0.1, 12, "all", 1), "--samples_each_class=1: triplet needs at least 2"),
    (lambda: losses.TripletLoss(0.1, 12, memory=losses.CrossBatchMemory(24)),
     "--xbm_size=24: the triplet loss keeps a memory only with --miner="),
])
def test_invalid_configuration_names_the_flag(make, message):
    with pytest.raises(ValueError, match=message):
        make()
