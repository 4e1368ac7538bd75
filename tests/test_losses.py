"""The losses against float64 NumPy versions of the papers' formulas: values, gradients, batch order,
extreme inputs, configuration errors, and a few dozen training steps on Gaussian clusters."""
import math

import numpy as np
import paddle
import pytest

import losses
from core import samplers
from loss_tools import (FEATURE_DIM, PLACE, balanced_labels, build, finite_difference_gradient,  # noqa: F401
                        np_normalize, ref_circle, ref_contrastive, ref_in_batch, ref_multisimilarity_pairs, run_loss,
                        static_mode)  # static_mode: an autouse fixture


# ---------------------------------------------------------------- float64 references, written from the formulas

def np_log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def ref_softmax(x, labels, weights, offset):
    log_p = np_log_softmax(x @ weights + offset)
    return -log_p[np.arange(len(x)), labels][:, None], np.exp(log_p)


def ref_arcmargin(x, labels, weights, margin, scale, easy_margin):
    cosine = np_normalize(x) @ np_normalize(weights).T
    sine = np.sqrt(1.0 - cosine ** 2 + 1e-6)
    phi = cosine * math.cos(margin) - sine * math.sin(margin)
    if easy_margin:
        phi = np.where(cosine > 0, phi, cosine)
    else:
        phi = np.where(cosine > math.cos(math.pi - margin), phi, cosine - math.sin(math.pi - margin) * margin)
    rows = np.arange(len(x))
    logits = cosine.copy()
    logits[rows, labels] = phi[rows, labels]
    log_p = np_log_softmax(scale * logits)
    return -log_p[rows, labels][:, None], np.exp(log_p)


def ref_triplet(x, margin):
    x = np_normalize(x)
    anchor, positive, negative = x[0::3], x[1::3], x[2::3]
    gap = ((anchor - positive) ** 2).sum(1) - ((anchor - negative) ** 2).sum(1) + margin
    return np.maximum(gap, 0.0)


def grouped_pairs(n, samples_each_class):
    """The original's positional sets: i's positives are the other members of its group, the rest negatives."""
    group = np.arange(n) // samples_each_class
    positives = [[j for j in range(n) if group[j] == group[i] and j != i] for i in range(n)]
    negatives = [[j for j in range(n) if group[j] != group[i]] for i in range(n)]
    return positives, negatives


def squared_distance(a, b):
    return float(((a - b) ** 2).sum())


def ref_quadruplet(x, samples_each_class, margin):
    x = np_normalize(x)
    positives, negatives = grouped_pairs(len(x), samples_each_class)
    pos_max = max(squared_distance(x[i], x[j]) for i in range(len(x)) for j in positives[i])
    neg_min = min(squared_distance(x[i], x[j]) for i in range(len(x)) for j in negatives[i])
    return max(pos_max - neg_min + margin, 0.0)


def ref_eml(x, samples_each_class):
    beta, thresh = 100000.0, 20.0
    f = lambda theta, b: math.log(1 + beta * theta * math.exp(b)) / math.log(1 + beta)
    g = lambda theta, b: (math.log(theta) + b + math.log(beta)) / math.log(1 + beta)
    positives, negatives = grouped_pairs(len(x), samples_each_class)
    out = []
    for i in range(len(x)):
        pos = np.array([squared_distance(x[i], x[j]) for j in positives[i]])
        neg = np.array([squared_distance(x[i], x[j]) for j in negatives[i]])
        theta = np.exp(pos - pos.max()).mean() * np.exp(-(neg - neg.min())).mean()
        bias = pos.max() - neg.min()
        out.append(f(theta, min(bias, thresh)) + g(theta, max(bias, thresh)) - f(theta, thresh))
    return np.array(out)[:, None]


def ref_npairs(x, labels, reg_lambda):
    anchor, positive = x[0::2], x[1::2]
    target = (labels[0::2][:, None] == labels[1::2][None, :]).astype(np.float64)
    xent = -(target * np_log_softmax(anchor @ positive.T)).sum(1).mean()
    return xent + 0.25 * reg_lambda * ((anchor ** 2).sum(1).mean() + (positive ** 2).sum(1).mean())


# ---------------------------------------------------------------- batches

SEEDS = [0, 1, 2]
# Float64 graphs are not exact to 1e-16: Paddle stores the Python constants of scalar ops (x / c, full_like)
# as float32 attributes, which costs ~1e-8 relative.
FLOAT64_RTOL = 1e-7


# ---------------------------------------------------------------- softmax

@pytest.mark.parametrize("seed", SEEDS)
def test_softmax_matches_reference(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8, FEATURE_DIM))
    labels = rng.integers(0, 6, size=8)
    (loss, prob), params, _ = run_loss(lambda: losses.SoftmaxLoss(6), x, labels)
    ref_loss, ref_prob = ref_softmax(x, labels, params["softmax_fc_weights"], params["softmax_fc_offset"])
    assert loss.shape == (8, 1) and prob.shape == (8, 6)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prob, ref_prob, rtol=1e-5, atol=1e-7)
    bound = 1 / math.sqrt(FEATURE_DIM)
    assert np.abs(params["softmax_fc_weights"]).max() <= bound and params["softmax_fc_weights"].std() > 0


def test_softmax_is_stable_for_confident_wrong_class():
    x = np.full((3, FEATURE_DIM), 100.0)
    labels = np.array([0, 1, 2])
    weights = np.zeros((FEATURE_DIM, 3))
    weights[:, 0] = 1.0  # class 0 logit 500, the others 0: softmax of the others underflows in float32
    (loss, prob), params, _ = run_loss(lambda: losses.SoftmaxLoss(3), x, labels,
                                       parameters={"softmax_fc_weights": weights})
    ref_loss, _ = ref_softmax(x, labels, weights, params["softmax_fc_offset"])
    assert np.isfinite(loss).all() and np.isfinite(prob).all()
    # [0, 500, 500]: not inf (log of an underflowed softmax), nor 64 (where F.cross_entropy clamps)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)


def test_softmax_gradient():
    rng = np.random.default_rng(3)
    x, labels, probe = rng.normal(size=(6, 4)), rng.integers(0, 3, size=6), rng.normal(size=(6, 1))
    _, params, gradient = run_loss(lambda: losses.SoftmaxLoss(3), x, labels, dtype="float64", probe=probe)
    objective = lambda z: (ref_softmax(z, labels, params["softmax_fc_weights"],
                                       params["softmax_fc_offset"])[0] * probe).sum()
    np.testing.assert_allclose(gradient, finite_difference_gradient(objective, x), rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------- arcmargin

ARC_SETTINGS = [(0.15, 80.0, False), (0.15, 80.0, True), (0.5, 30.0, False), (1.4, 64.0, False)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("margin,scale,easy_margin", ARC_SETTINGS)
def test_arcmargin_matches_reference(seed, margin, scale, easy_margin):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8, FEATURE_DIM))
    labels = rng.integers(0, 6, size=8)
    make = lambda: losses.ArcMarginLoss(6, margin=margin, scale=scale, easy_margin=easy_margin)
    (loss, prob), params, _ = run_loss(make, x, labels)
    ref_loss, ref_prob = ref_arcmargin(x, labels, params["arcmargin_weight_norm"], margin, scale, easy_margin)
    assert params["arcmargin_weight_norm"].shape == (6, FEATURE_DIM)
    # float32 cosines carry ~1e-7 error, which the scale multiplies into the logits
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=scale * 2e-7)
    np.testing.assert_allclose(prob, ref_prob, rtol=1e-4, atol=scale * 2e-7)


@pytest.mark.parametrize("easy_margin", [False, True])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_arcmargin_cosines_at_plus_minus_one(easy_margin, sign):
    rng = np.random.default_rng(4)
    weights = rng.normal(size=(4, FEATURE_DIM))
    labels = np.array([0, 1, 2, 3, 0, 1])
    x = sign * weights[labels] * rng.uniform(0.5, 3.0, size=(6, 1))  # target cosine exactly +-1
    make = lambda: losses.ArcMarginLoss(4, margin=0.15, scale=80.0, easy_margin=easy_margin)
    ref_loss, ref_prob = ref_arcmargin(x, labels, weights, 0.15, 80.0, easy_margin)
    (loss64, prob64), _, _ = run_loss(make, x, labels, dtype="float64",
                                      parameters={"arcmargin_weight_norm": weights})
    np.testing.assert_allclose(loss64, ref_loss, rtol=FLOAT64_RTOL, atol=FLOAT64_RTOL)
    np.testing.assert_allclose(prob64, ref_prob, rtol=FLOAT64_RTOL, atol=1e-12)
    (loss32, prob32), _, _ = run_loss(make, x, labels, parameters={"arcmargin_weight_norm": weights})
    assert np.isfinite(loss32).all() and np.isfinite(prob32).all()
    # At |cos| = 1, sine = sqrt(1 - cos^2 + 1e-6) is ~1e-3 and float32's ~1e-7 error in cos^2 moves it by a few
    # percent; times sin(m) * scale that is a few 1e-3 on the loss.
    np.testing.assert_allclose(loss32, ref_loss, rtol=1e-5, atol=5e-3)


@pytest.mark.parametrize("margin,scale,easy_margin", [(0.15, 80.0, False), (0.5, 30.0, True)])
def test_arcmargin_gradient(margin, scale, easy_margin):
    rng = np.random.default_rng(5)
    x, labels, probe = rng.normal(size=(6, 4)), rng.integers(0, 3, size=6), rng.normal(size=(6, 1))
    make = lambda: losses.ArcMarginLoss(3, margin=margin, scale=scale, easy_margin=easy_margin)
    _, params, gradient = run_loss(make, x, labels, dtype="float64", probe=probe)
    weights = params["arcmargin_weight_norm"]
    objective = lambda z: (ref_arcmargin(z, labels, weights, margin, scale, easy_margin)[0] * probe).sum()
    np.testing.assert_allclose(gradient, finite_difference_gradient(objective, x), rtol=1e-6, atol=1e-7)


def test_label_beyond_class_dim_fails_at_run_time():
    x, labels = np.ones((2, FEATURE_DIM)), np.array([0, 3])
    with pytest.raises(ValueError, match="one_hot|depth"):
        run_loss(lambda: losses.ArcMarginLoss(3), x, labels)


# ---------------------------------------------------------------- triplet

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("margin", [0.1, 10.0])
def test_triplet_matches_reference(seed, margin):
    x = np.random.default_rng(seed).normal(size=(12, FEATURE_DIM))
    (loss,), _, _ = run_loss(lambda: losses.TripletLoss(margin), x, np.zeros(12, np.int64))
    assert loss.shape == (4,)
    np.testing.assert_allclose(loss, ref_triplet(x, margin), rtol=1e-5, atol=1e-6)


def test_triplet_gradient():
    rng = np.random.default_rng(6)
    x, probe = rng.normal(size=(9, 4)), rng.normal(size=(3,))
    _, _, gradient = run_loss(lambda: losses.TripletLoss(1.0), x, np.zeros(9, np.int64), dtype="float64",
                              probe=probe)
    objective = lambda z: (ref_triplet(z, 1.0) * probe).sum()
    np.testing.assert_allclose(gradient, finite_difference_gradient(objective, x), rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------- quadruplet

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("samples_each_class,margin", [(2, 0.1), (3, 0.1), (4, 5.0)])
def test_quadruplet_matches_reference(seed, samples_each_class, margin):
    rng = np.random.default_rng(seed)
    labels = balanced_labels(12 // samples_each_class, samples_each_class, rng)
    x = rng.normal(size=(12, FEATURE_DIM))
    (loss,), _, _ = run_loss(lambda: losses.QuadrupletLoss(12, samples_each_class, margin), x, labels)
    np.testing.assert_allclose(loss, ref_quadruplet(x, samples_each_class, margin), rtol=1e-5, atol=1e-6)


def test_quadruplet_gradient():
    rng = np.random.default_rng(7)
    labels, x = balanced_labels(3, 2, rng), rng.normal(size=(6, 4))
    (loss,), _, gradient = run_loss(lambda: losses.QuadrupletLoss(6, 2, 1.0), x, labels, dtype="float64",
                                    probe=np.array(1.5))
    assert loss > 0  # hinge active, so there is a gradient to check
    objective = lambda z: 1.5 * ref_quadruplet(z, 2, 1.0)
    np.testing.assert_allclose(gradient, finite_difference_gradient(objective, x), rtol=1e-6, atol=1e-8)


def test_quadruplet_without_positives_or_negatives_is_zero():
    x = np.random.default_rng(8).normal(size=(4, FEATURE_DIM))
    for labels in (np.array([0, 1, 2, 3]), np.array([5, 5, 5, 5])):
        (loss,), _, gradient = run_loss(lambda: losses.QuadrupletLoss(4, 2), x, labels, probe="sum")
        assert loss == 0 and np.all(gradient == 0)


# ---------------------------------------------------------------- eml

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("samples_each_class", [2, 3])
def test_eml_matches_reference(seed, samples_each_class):
    rng = np.random.default_rng(seed)
    labels = balanced_labels(12 // samples_each_class, samples_each_class, rng)
    x = rng.normal(size=(12, FEATURE_DIM))
    (loss,), _, _ = run_loss(lambda: losses.EmlLoss(12, samples_each_class), x, labels)
    assert loss.shape == (12, 1)
    np.testing.assert_allclose(loss, ref_eml(x, samples_each_class), rtol=1e-5, atol=1e-6)


def eml_extreme_batch(bias_sign, rng):
    """Three classes of two images with bias = pos_max - neg_min far above 20 (+1) or far below it (-1).

    Above: a class's two images sit at +-6 e_c, so positives are 144 apart and negatives 72 (bias ~72).
    Below: tight clusters at 10 e_c, positives ~1e-4 apart and negatives 200 (bias ~-200).
    """
    axes = np.eye(FEATURE_DIM)[:3]
    if bias_sign > 0:
        x = np.stack([6.0 * axes, -6.0 * axes], axis=1).reshape(6, FEATURE_DIM)
    else:
        x = np.repeat(10.0 * axes, 2, axis=0)
    return x + 0.01 * rng.normal(size=x.shape), np.repeat(np.arange(3), 2)


@pytest.mark.parametrize("bias_sign", [1, -1])
def test_eml_far_from_threshold(bias_sign):
    rng = np.random.default_rng(9)
    x, labels = eml_extreme_batch(bias_sign, rng)
    ref = ref_eml(x, 2)
    (loss64,), _, _ = run_loss(lambda: losses.EmlLoss(6, 2), x, labels, dtype="float64")
    (loss32,), _, _ = run_loss(lambda: losses.EmlLoss(6, 2), x, labels)
    np.testing.assert_allclose(loss64, ref, rtol=FLOAT64_RTOL, atol=FLOAT64_RTOL)
    assert np.isfinite(loss32).all()
    if bias_sign > 0:
        assert ref.min() > 5  # bias well above 20 on every anchor: the asymptote branch
        np.testing.assert_allclose(loss32, ref, rtol=1e-5)
    else:
        assert ref.max() < 1e-6  # bias far below 20: the loss is ~0
        # float32 computes it as f(b) + [g(20) - f(20)], a difference of two numbers near 3
        np.testing.assert_allclose(loss32, ref, atol=2e-6)


@pytest.mark.parametrize("spread", [1.0, 4.0])
def test_eml_gradient(spread):
    rng = np.random.default_rng(10)
    labels, x = balanced_labels(3, 2, rng), spread * rng.normal(size=(6, 4))
    probe = rng.normal(size=(6, 1))
    _, _, gradient = run_loss(lambda: losses.EmlLoss(6, 2), x, labels, dtype="float64", probe=probe)
    objective = lambda z: (ref_eml(z, 2) * probe).sum()
    np.testing.assert_allclose(gradient, finite_difference_gradient(objective, x), rtol=1e-5, atol=1e-7)


def test_eml_anchor_without_positive_or_negative_is_zero():
    x = np.random.default_rng(11).normal(size=(4, FEATURE_DIM))
    (loss,), _, gradient = run_loss(lambda: losses.EmlLoss(4, 2), x, np.array([0, 0, 1, 2]), probe="sum")
    assert np.all(loss[2:] == 0) and np.all(loss[:2] > 0) and np.isfinite(gradient).all()
    (loss,), _, gradient = run_loss(lambda: losses.EmlLoss(4, 2), x, np.array([7, 7, 7, 7]), probe="sum")
    assert np.all(loss == 0) and np.all(gradient == 0)


# ---------------------------------------------------------------- npairs

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("reg_lambda", [0.01, 1.0])
def test_npairs_matches_reference(seed, reg_lambda):
    rng = np.random.default_rng(seed)
    labels, x = balanced_labels(6, 2, rng), rng.normal(size=(12, FEATURE_DIM))
    (loss,), _, _ = run_loss(lambda: losses.NpairsLoss(12, 2, reg_lambda), x, labels)
    np.testing.assert_allclose(loss, ref_npairs(x, labels, reg_lambda), rtol=1e-5, atol=1e-6)


def test_npairs_gradient():
    rng = np.random.default_rng(12)
    labels, x = balanced_labels(4, 2, rng), rng.normal(size=(8, 4))
    _, _, gradient = run_loss(lambda: losses.NpairsLoss(8, 2, 0.1), x, labels, dtype="float64",
                              probe=np.array(0.7))
    objective = lambda z: 0.7 * ref_npairs(z, labels, 0.1)
    np.testing.assert_allclose(gradient, finite_difference_gradient(objective, x), rtol=1e-6, atol=1e-8)


def test_npairs_large_similarities_stay_finite():
    rng = np.random.default_rng(13)
    labels, x = balanced_labels(3, 2, rng), 30.0 * rng.normal(size=(6, FEATURE_DIM))  # logits in the thousands
    (loss,), _, gradient = run_loss(lambda: losses.NpairsLoss(6, 2), x, labels, probe="sum")
    assert np.isfinite(gradient).all()
    np.testing.assert_allclose(loss, ref_npairs(x, labels, 0.01), rtol=1e-5)


# ---------------------------------------------------------------- multi-similarity

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("samples_each_class, parameters", [
    (2, {}), (3, {}), (3, dict(alpha=4.0, beta=20.0, base=0.2, epsilon=0.5)), (4, dict(epsilon=2.5))])
def test_multisimilarity_matches_reference(seed, samples_each_class, parameters):
    rng = np.random.default_rng(seed)
    labels = balanced_labels(12 // samples_each_class, samples_each_class, rng)
    x = rng.normal(size=(12, FEATURE_DIM)) + 2.0 * np.eye(FEATURE_DIM)[labels % FEATURE_DIM]  # some easy pairs
    (loss,), _, _ = run_loss(lambda: losses.MultiSimilarityLoss(12, samples_each_class, **parameters), x, labels)
    reference = ref_in_batch(ref_multisimilarity_pairs, x, labels, **parameters)
    assert loss.shape == (12, 1) and reference.max() > 0
    np.testing.assert_allclose(loss, reference, rtol=1e-5, atol=1e-6)


def test_multisimilarity_mining_leaves_easy_pairs_out():
    # Two tight, far-apart classes: every pair is easy, nothing is mined, the loss is 0 and so is its gradient.
    x = np.repeat(np.eye(FEATURE_DIM)[:2], 3, axis=0) + 1e-3 * np.random.default_rng(16).normal(size=(6, FEATURE_DIM))
    labels = np.repeat(np.arange(2), 3)
    (loss,), _, gradient = run_loss(lambda: losses.MultiSimilarityLoss(6, 3), x, labels, probe="sum")
    assert np.all(loss == 0) and np.all(gradient == 0)
    # With a mining margin wider than any similarity gap every pair is kept: the plain multi-similarity loss.
    (wide,), _, _ = run_loss(lambda: losses.MultiSimilarityLoss(6, 3, epsilon=3.0), x, labels)
    assert wide.min() > 0
    np.testing.assert_allclose(wide, ref_in_batch(ref_multisimilarity_pairs, x, labels, epsilon=3.0), rtol=1e-5)


def test_multisimilarity_gradient():
    rng = np.random.default_rng(17)
    labels, x = balanced_labels(3, 2, rng), rng.normal(size=(6, 4))
    probe = rng.normal(size=(6, 1))
    make = lambda: losses.MultiSimilarityLoss(6, 2, epsilon=0.3)
    _, _, gradient = run_loss(make, x, labels, dtype="float64", probe=probe)
    objective = lambda z: (ref_in_batch(ref_multisimilarity_pairs, z, labels, epsilon=0.3) * probe).sum()
    np.testing.assert_allclose(gradient, finite_difference_gradient(objective, x), rtol=1e-5, atol=1e-7)


def test_multisimilarity_anchor_without_positive_or_negative_is_zero():
    x = np.random.default_rng(18).normal(size=(4, FEATURE_DIM))
    (loss,), _, gradient = run_loss(lambda: losses.MultiSimilarityLoss(4, 2, epsilon=3.0), x, np.array([0, 0, 1, 2]),
                                    probe="sum")
    assert np.all(loss[2:] == 0) and np.all(loss[:2] > 0) and np.isfinite(gradient).all()
    (loss,), _, gradient = run_loss(lambda: losses.MultiSimilarityLoss(4, 2), x, np.array([7, 7, 7, 7]),
                                    probe="sum")
    assert np.all(loss == 0) and np.all(gradient == 0)


# ---------------------------------------------------------------- cosface

def ref_cosface(x, labels, weights, margin, scale):
    cosine = np_normalize(x) @ np_normalize(weights).T
    rows = np.arange(len(x))
    logits = cosine.copy()
    logits[rows, labels] -= margin
    log_p = np_log_softmax(scale * logits)
    return -log_p[rows, labels][:, None], np.exp(log_p)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("margin,scale", [(0.35, 64.0), (0.0, 30.0), (0.5, 16.0)])
def test_cosface_matches_reference(seed, margin, scale):
    rng = np.random.default_rng(seed)
    x, labels = rng.normal(size=(8, FEATURE_DIM)), rng.integers(0, 6, size=8)
    (loss, prob), params, _ = run_loss(lambda: losses.CosFaceLoss(6, margin=margin, scale=scale), x, labels)
    ref_loss, ref_prob = ref_cosface(x, labels, params["cosface_weight_norm"], margin, scale)
    assert params["cosface_weight_norm"].shape == (6, FEATURE_DIM)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=scale * 2e-7)
    np.testing.assert_allclose(prob, ref_prob, rtol=1e-4, atol=scale * 2e-7)


def test_cosface_gradient():
    rng = np.random.default_rng(20)
    x, labels, probe = rng.normal(size=(6, 4)), rng.integers(0, 3, size=6), rng.normal(size=(6, 1))
    _, params, gradient = run_loss(lambda: losses.CosFaceLoss(3), x, labels, dtype="float64", probe=probe)
    weights = params["cosface_weight_norm"]
    objective = lambda z: (ref_cosface(z, labels, weights, 0.35, 64.0)[0] * probe).sum()
    np.testing.assert_allclose(gradient, finite_difference_gradient(objective, x), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- proxyanchor

def ref_proxyanchor(x, labels, proxies, alpha=32.0, delta=0.1):
    similarity = np_normalize(x) @ np_normalize(proxies).T  # [N, class_dim]
    positive_terms, negative_terms = [], []
    for proxy in range(len(proxies)):
        members = labels == proxy
        if members.any():
            positive_terms.append(np.logaddexp.reduce(np.append(-alpha * (similarity[members, proxy] - delta), 0.0)))
        negative_terms.append(np.logaddexp.reduce(np.append(alpha * (similarity[~members, proxy] + delta), 0.0)))
    loss = np.sum(positive_terms) / max(len(positive_terms), 1) + np.sum(negative_terms) / len(proxies)
    return loss, np.exp(np_log_softmax(alpha * similarity))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("labels", [[0, 0, 1, 2, 2, 2, 4, 4], [3, 3, 3, 3, 3, 3, 3, 3], [0, 1, 2, 3, 4, 5, 6, 7]],
                         ids=["some classes", "one class", "one image each"])
def test_proxyanchor_matches_reference(seed, labels):
    rng = np.random.default_rng(seed)
    x, labels = rng.normal(size=(8, FEATURE_DIM)), np.array(labels)
    (loss, prob), params, _ = run_loss(lambda: losses.ProxyAnchorLoss(9), x, labels)
    ref_loss, ref_prob = ref_proxyanchor(x, labels, params["proxyanchor_proxies"])
    assert np.shape(loss) == () and prob.shape == (8, 9)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(prob, ref_prob, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("alpha,delta", [(32.0, 0.1), (4.0, -0.3)])
def test_proxyanchor_gradient(alpha, delta):
    rng = np.random.default_rng(21)
    x, labels = rng.normal(size=(6, 4)), np.array([0, 0, 1, 3, 3, 3])
    make = lambda: losses.ProxyAnchorLoss(5, alpha=alpha, delta=delta)
    _, params, gradient = run_loss(make, x, labels, dtype="float64", probe=np.array(0.7))
    objective = lambda z: 0.7 * ref_proxyanchor(z, labels, params["proxyanchor_proxies"], alpha, delta)[0]
    np.testing.assert_allclose(gradient, finite_difference_gradient(objective, x), rtol=1e-6, atol=1e-8)


def test_proxies_start_as_the_paper_and_learn_at_their_own_rate():
    """Kaiming normal over the class_dim fan; one Momentum step moves them lr * lr_mult * (gradient + decay * p)."""
    class_dim, dim, lr, decay = 400, 64, 0.01, 1e-4
    rng = np.random.default_rng(22)
    x, labels = rng.normal(size=(8, dim)).astype("float32"), rng.integers(0, class_dim, size=(8, 1))
    main, startup, scope = paddle.static.Program(), paddle.static.Program(), paddle.static.Scope()
    with paddle.static.scope_guard(scope), paddle.utils.unique_name.guard(), \
            paddle.static.program_guard(main, startup):
        feature = paddle.static.data("features", [-1, dim], "float32")
        label = paddle.static.data("labels", [-1, 1], "int64")
        loss, _ = losses.ProxyAnchorLoss(class_dim, lr_mult=100.0).loss(feature, label)
        optimizer = paddle.optimizer.Momentum(lr, momentum=0.9, weight_decay=paddle.regularizer.L2Decay(decay))
        params_grads = optimizer.backward(loss)
        optimizer.apply_gradients(params_grads)
        (proxy_gradient,) = [grad for param, grad in params_grads if param.name == "proxyanchor_proxies"]
        exe = paddle.static.Executor(PLACE)
        exe.run(startup)
        before = np.array(scope.find_var("proxyanchor_proxies").get_tensor())
        (gradient,) = exe.run(main, feed={"features": x, "labels": labels}, fetch_list=[proxy_gradient])
        after = np.array(scope.find_var("proxyanchor_proxies").get_tensor())
    assert before.std() == pytest.approx(math.sqrt(2.0 / class_dim), rel=0.05) and abs(before.mean()) < 1e-3
    np.testing.assert_allclose(before - after, lr * 100.0 * (gradient + decay * before), rtol=1e-4, atol=2e-8)
    assert np.abs(gradient).max() > 0


# ---------------------------------------------------------------- contrastive and circle

PAIR_LABEL_CASES = {
    "balanced": [0, 0, 1, 1, 2, 2, 3, 3],
    "a class with one image": [0, 0, 0, 1, 2, 2, 3, 4],
    "all one class": [5, 5, 5, 5, 5, 5, 5, 5],
}


def clustered(labels, rng, spread=1.0):
    """Embeddings near one axis per class, so that some pairs are easy and some hard."""
    return spread * rng.normal(size=(len(labels), FEATURE_DIM)) + 1.5 * np.eye(FEATURE_DIM)[np.array(labels) % 5]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", PAIR_LABEL_CASES)
@pytest.mark.parametrize("parameters", [{}, dict(pos_margin=0.8, neg_margin=-0.2)])
def test_contrastive_matches_reference(seed, case, parameters):
    rng = np.random.default_rng(seed)
    labels = np.array(PAIR_LABEL_CASES[case])
    x = clustered(labels, rng)
    (loss,), _, _ = run_loss(lambda: losses.ContrastiveLoss(8, 2, **parameters), x, labels)
    assert loss.shape == (8, 1)
    np.testing.assert_allclose(loss, ref_in_batch(ref_contrastive, x, labels, **parameters), rtol=1e-5, atol=1e-6)


def test_contrastive_gradient():
    rng = np.random.default_rng(23)
    labels, probe = np.array(PAIR_LABEL_CASES["a class with one image"]), rng.normal(size=(8, 1))
    x = clustered(labels, rng)
    _, _, gradient = run_loss(lambda: losses.ContrastiveLoss(8, 2, neg_margin=0.0), x, labels, dtype="float64",
                              probe=probe)
    objective = lambda z: (ref_in_batch(ref_contrastive, z, labels, neg_margin=0.0) * probe).sum()
    np.testing.assert_allclose(gradient, finite_difference_gradient(objective, x), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", PAIR_LABEL_CASES)
@pytest.mark.parametrize("parameters", [{}, dict(margin=0.25, gamma=256.0)])
def test_circle_matches_reference(seed, case, parameters):
    rng = np.random.default_rng(seed)
    labels = np.array(PAIR_LABEL_CASES[case])
    x = clustered(labels, rng)
    (loss,), _, _ = run_loss(lambda: losses.CircleLoss(8, 2, **parameters), x, labels)
    reference = ref_in_batch(ref_circle, x, labels, **parameters)
    assert loss.shape == (8, 1) and (case == "all one class" or reference.max() > 0)
    # gamma multiplies float32's ~1e-7 error in the similarities
    np.testing.assert_allclose(loss, reference, rtol=1e-5, atol=parameters.get("gamma", 80.0) * 2e-7)


def test_circle_gradient_holds_the_weights_constant():
    rng = np.random.default_rng(24)
    labels, probe = np.array(PAIR_LABEL_CASES["a class with one image"]), rng.normal(size=(8, 1))
    x = clustered(labels, rng)
    make = lambda: losses.CircleLoss(8, 2, margin=0.25, gamma=4.0)
    _, _, gradient = run_loss(make, x, labels, dtype="float64", probe=probe)
    constants = np_normalize(x) @ np_normalize(x).T
    objective = lambda z: (ref_in_batch(ref_circle, z, labels, margin=0.25, gamma=4.0, constants=constants)
                           * probe).sum()
    np.testing.assert_allclose(gradient, finite_difference_gradient(objective, x), rtol=1e-6, atol=1e-8)


def test_circle_query_without_positive_or_negative_is_zero():
    x = np.random.default_rng(25).normal(size=(4, FEATURE_DIM))
    (loss,), _, gradient = run_loss(lambda: losses.CircleLoss(4, 2), x, np.array([0, 0, 1, 2]), probe="sum")
    assert np.all(loss[2:] == 0) and np.all(loss[:2] > 0) and np.isfinite(gradient).all()
    (loss,), _, gradient = run_loss(lambda: losses.CircleLoss(4, 2), x, np.array([7, 7, 7, 7]), probe="sum")
    assert np.all(loss == 0) and np.all(gradient == 0)


# ---------------------------------------------------------------- identical features

@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_identical_features_stay_finite(name):
    make = lambda: build(name, 6, **({"class_dim": 3} if losses.LOSSES[name].has_classifier else {}))  # noqa: E731
    x, labels = np.tile(np.linspace(-1, 1, FEATURE_DIM), (6, 1)), np.repeat(np.arange(3), 2)
    outputs, _, gradient = run_loss(make, x, labels, probe="sum")
    assert all(np.isfinite(out).all() for out in outputs) and np.isfinite(gradient).all()
    if name == "triplet":
        np.testing.assert_allclose(outputs[0], 0.1, rtol=1e-5)  # all distances 0: the loss is the margin
    if name == "quadruplet":
        np.testing.assert_allclose(outputs[0], 0.1, rtol=1e-5)
    if name == "eml":
        np.testing.assert_allclose(outputs[0], 1.0, rtol=1e-5)  # theta = 1 and bias = 0, so f(0) = 1


# ---------------------------------------------------------------- batch order and size

@pytest.mark.parametrize("seed", SEEDS)
def test_shuffled_batch_gives_the_same_loss(seed):
    rng = np.random.default_rng(seed)
    labels, x = balanced_labels(4, 3, rng), rng.normal(size=(12, FEATURE_DIM))
    order = rng.permutation(12)
    (quad,), _, _ = run_loss(lambda: losses.QuadrupletLoss(12, 3), x[order], labels[order])
    np.testing.assert_allclose(quad, ref_quadruplet(x, 3, 0.1), rtol=1e-5, atol=1e-6)
    (eml,), _, _ = run_loss(lambda: losses.EmlLoss(12, 3), x[order], labels[order])
    np.testing.assert_allclose(eml, ref_eml(x, 3)[order], rtol=1e-5, atol=1e-6)
    (multisimilarity,), _, _ = run_loss(lambda: losses.MultiSimilarityLoss(12, 3), x[order], labels[order])
    np.testing.assert_allclose(multisimilarity, ref_in_batch(ref_multisimilarity_pairs, x, labels)[order], rtol=1e-5,
                               atol=1e-6)

    pair_labels = balanced_labels(6, 2, rng)
    order = rng.permutation(12)
    for anchor in range(0, 12, 2):  # keep each anchor ahead of its positive
        a, p = np.flatnonzero(order == anchor)[0], np.flatnonzero(order == anchor + 1)[0]
        if p < a:
            order[a], order[p] = anchor + 1, anchor
    assert not np.array_equal(order, np.arange(12))
    (npairs,), _, _ = run_loss(lambda: losses.NpairsLoss(12, 2), x[order], pair_labels[order])
    np.testing.assert_allclose(npairs, ref_npairs(x, pair_labels, 0.01), rtol=1e-5, atol=1e-6)


def test_one_program_serves_any_batch_size_and_flat_labels():
    """A data-parallel rank sees a smaller batch than --train_batch_size; labels may come as [N]."""
    rng = np.random.default_rng(14)
    main, startup, scope = paddle.static.Program(), paddle.static.Program(), paddle.static.Scope()
    with paddle.static.scope_guard(scope), paddle.utils.unique_name.guard(), \
            paddle.static.program_guard(main, startup):
        x = paddle.static.data("features", [-1, FEATURE_DIM], "float32")
        y = paddle.static.data("labels", [-1], "int64")
        fetch = [losses.EmlLoss(12, 2).loss(x, y), losses.QuadrupletLoss(12, 2).loss(x, y),
                 losses.NpairsLoss(12, 2).loss(x, y)]
        exe = paddle.static.Executor(PLACE)
        exe.run(startup)
        for n in (12, 6):
            labels, features = balanced_labels(n // 2, 2, rng), rng.normal(size=(n, FEATURE_DIM))
            eml, quad, npairs = exe.run(main, feed={"features": features.astype("float32"), "labels": labels},
                                        fetch_list=fetch)
            np.testing.assert_allclose(eml, ref_eml(features, 2), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(quad, ref_quadruplet(features, 2, 0.1), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(npairs, ref_npairs(features, labels, 0.01), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- parameters shared by name

def test_head_parameters_are_shared_by_name_across_programs():
    rng = np.random.default_rng(15)
    x, labels = rng.normal(size=(4, FEATURE_DIM)).astype("float32"), rng.integers(0, 5, size=(4, 1))
    scope, probs = paddle.static.Scope(), []
    with paddle.static.scope_guard(scope):
        for build in range(2):
            main, startup = paddle.static.Program(), paddle.static.Program()
            with paddle.utils.unique_name.guard(), paddle.static.program_guard(main, startup):
                feature = paddle.static.data("features", [-1, FEATURE_DIM], "float32")
                label = paddle.static.data("labels", [-1, 1], "int64")
                _, softmax_prob = losses.SoftmaxLoss(5).loss(feature, label)
                _, arc_prob = losses.ArcMarginLoss(5).loss(feature, label)
            exe = paddle.static.Executor(PLACE)
            if build == 0:
                exe.run(startup)  # the second program must find the first one's parameters
            assert set(main.state_dict()) == {"softmax_fc_weights", "softmax_fc_offset", "arcmargin_weight_norm"}
            probs.append(exe.run(main, feed={"features": x, "labels": labels}, fetch_list=[softmax_prob, arc_prob]))
    np.testing.assert_array_equal(probs[0][0], probs[1][0])
    np.testing.assert_array_equal(probs[0][1], probs[1][1])


# ---------------------------------------------------------------- configuration errors

@pytest.mark.parametrize("make,flag", [
    (lambda: losses.QuadrupletLoss(10, 3), "--train_batch_size=10 is not divisible by --samples_each_class=3"),
    (lambda: losses.EmlLoss(9, 2), "--train_batch_size=9"),
    (lambda: losses.EmlLoss(8, 1), "--samples_each_class=1"),
    (lambda: losses.NpairsLoss(12, 3), "--samples_each_class=3"),
    (lambda: losses.NpairsLoss(9, 2), "--train_batch_size=9"),
    (lambda: losses.TripletLoss(train_batch_size=10), "--train_batch_size=10"),
    (lambda: losses.MultiSimilarityLoss(9, 2), "--train_batch_size=9"),
    (lambda: losses.MultiSimilarityLoss(8, 2, alpha=0.0), "--ms_alpha=0.0"),
    (lambda: losses.MultiSimilarityLoss(8, 2, beta=-1.0), "--ms_beta=-1.0"),
    (lambda: losses.check_labels([0, 3, 5], 5), "--class_dim=5"),
])
def test_invalid_configuration_names_the_flag(make, flag):
    with pytest.raises(ValueError, match=flag):
        make()


def test_triplet_rejects_a_static_batch_not_divisible_by_three():
    with paddle.static.program_guard(paddle.static.Program(), paddle.static.Program()):
        x = paddle.static.data("features", [10, FEATURE_DIM], "float32")
        with pytest.raises(ValueError, match="divisible by 3"):
            losses.TripletLoss().loss(x)


def test_check_labels_accepts_labels_below_class_dim():
    losses.check_labels(np.array([0, 4, 2]), 5)


def test_registry_describes_each_loss():
    # train_elem.py's and train_pair.py's, the original's first
    assert losses.names(has_classifier=True) == ["softmax", "arcmargin", "cosface", "proxyanchor"]
    assert losses.names(has_classifier=False) == ["triplet", "quadruplet", "eml", "npairs", "multisimilarity",
                                                  "contrastive", "circle"]
    for name, loss_class in losses.LOSSES.items():
        assert loss_class.name == name and issubclass(loss_class, losses.Loss)
        assert loss_class.batch_layout in samplers.BATCH_LAYOUTS
        loss = build(name, 12)  # every flag's default makes a working loss
        assert loss.has_classifier == (loss.batch_layout == samplers.SHUFFLED)
        assert loss.samples_each_class >= (2 if loss.batch_layout == samplers.CLASS_BALANCED else 1)


# ---------------------------------------------------------------- training a tiny embedding

NUM_CLASSES, INPUT_DIM = 6, 8
CENTERS = np.random.default_rng(100).normal(size=(NUM_CLASSES, INPUT_DIM)) * 1.5


def cluster_batch(labels, rng):
    return (CENTERS[labels] + rng.normal(size=(len(labels), INPUT_DIM))).astype("float32")


def batch_labels(loss, batch_size, rng):
    """The labels of one batch laid out as the loss's batch layout asks."""
    if loss.batch_layout == samplers.SHUFFLED:
        return rng.integers(0, NUM_CLASSES, batch_size)
    if loss.batch_layout == samplers.TRIPLETS:
        triples = [rng.choice(NUM_CLASSES, size=2, replace=False) for _ in range(batch_size // 3)]
        return np.array([[same, same, other] for same, other in triples]).ravel()
    per_class = loss.samples_each_class
    return rng.permutation(NUM_CLASSES)[:batch_size // per_class].repeat(per_class)


# name: (flags over their defaults, Momentum learning rate), for batches of 12. npairs works on raw dot products,
# which grow quadratically with the embedding, so it needs the smallest rate (0.03 already diverges here).
TRAINING = {
    "softmax": ({"class_dim": NUM_CLASSES}, 0.1),
    "arcmargin": ({"class_dim": NUM_CLASSES}, 0.01),
    "triplet": ({}, 0.1),
    "quadruplet": ({"samples_each_class": 3}, 0.1),
    "eml": ({"samples_each_class": 3}, 0.02),
    "npairs": ({}, 0.01),
    "multisimilarity": ({"samples_each_class": 3}, 0.05),
    "cosface": ({"class_dim": NUM_CLASSES}, 0.01),
    "proxyanchor": ({"class_dim": NUM_CLASSES}, 0.01),
    "contrastive": ({"samples_each_class": 3}, 0.05),
    "circle": ({"samples_each_class": 3}, 0.01),
}


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_training_lowers_the_loss(name):
    """A few dozen Momentum steps cycling over four fixed batches; the last pass must beat the first."""
    flag_values, learning_rate = TRAINING[name]
    make_loss = lambda: build(name, 12, **flag_values)  # noqa: E731
    paddle.seed(0)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(4):
        labels = batch_labels(make_loss(), 12, rng)
        batches.append({"inputs": cluster_batch(labels, rng), "labels": labels[:, None]})
    main, startup, scope = paddle.static.Program(), paddle.static.Program(), paddle.static.Scope()
    with paddle.static.scope_guard(scope), paddle.utils.unique_name.guard(), \
            paddle.static.program_guard(main, startup):
        x = paddle.static.data("inputs", [-1, INPUT_DIM], "float32")
        y = paddle.static.data("labels", [-1, 1], "int64")
        hidden = paddle.static.nn.fc(x, 16, activation="relu")
        embedding = paddle.static.nn.fc(hidden, 4)
        loss_object = make_loss()
        output = loss_object.loss(embedding, y)
        loss = paddle.mean(output[0] if loss_object.has_classifier else output)
        paddle.optimizer.Momentum(learning_rate, momentum=0.9).minimize(loss)
        exe = paddle.static.Executor(PLACE)
        exe.run(startup)
        history = [exe.run(main, feed=batches[step % 4], fetch_list=[loss])[0] for step in range(40)]
    assert np.isfinite(history).all()
    assert np.mean(history[-4:]) < 0.5 * np.mean(history[:4]), np.round(np.array(history), 3)
