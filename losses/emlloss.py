"""Ensemble metric learning loss (Huang et al., https://arxiv.org/abs/1212.6094), per anchor."""
import math

import paddle

from .base import CLASS_BALANCED, SAMPLES_EACH_CLASS, Loss, check_class_balanced_batch
from .commonfunc import (filled_like, masked_max, masked_mean, masked_min, negative_mask, pairwise_squared_distance,
                         positive_mask)

BETA = 100000.0
THRESHOLD = 20.0  # above this bias, log(1 + beta theta e^b) is replaced by its asymptote (same value at 20)


def surrogate(theta, bias):
    """f(b) = log(1 + beta theta e^b) / log(1 + beta): a smooth hinge on the bias b."""
    return paddle.log(1.0 + BETA * theta * paddle.exp(bias)) / math.log(1.0 + BETA)


def surrogate_asymptote(theta, bias):
    """g(b) = (log theta + b + log beta) / log(1 + beta): f for large b, without computing e^b."""
    return (paddle.log(theta) + bias + math.log(BETA)) / math.log(1.0 + BETA)


class EmlLoss(Loss):
    """Soft hinge on the hardest positive versus the hardest negative of each anchor, on raw embeddings.

    For anchor i with squared distances d_ij (no normalisation), positives P_i (same label, j != i) and
    negatives N_i (different label):
        pos_max = max_{P_i} d_ij,   neg_min = min_{N_i} d_ij,   bias = pos_max - neg_min,
        theta = mean_{P_i} exp(d_ij - pos_max) * mean_{N_i} exp(-(d_ij - neg_min)),
        loss_i = f(min(bias, 20)) + g(max(bias, 20)) - f(20)
    with f, g the surrogate and its asymptote (beta = 100000); the sum equals f(bias) up to rounding and
    stays finite for any bias.

    Args:
        train_batch_size: images per batch (all devices); checked to split into groups of samples_each_class.
        samples_each_class: images of one class per group in the sampler's batches.

    `loss(input, label)` returns the per-anchor losses [N, 1]. Positives and negatives come from the labels,
    so the row order of the batch does not matter. An anchor without a positive or without a negative in the
    batch gets loss 0 and no gradient (it still counts in the caller's mean).
    """

    name = "eml"
    batch_layout = CLASS_BALANCED
    flags = (SAMPLES_EACH_CLASS,)

    def __init__(self, train_batch_size, samples_each_class):
        check_class_balanced_batch(train_batch_size, samples_each_class, "eml")
        self.train_batch_size = train_batch_size
        self.samples_each_class = samples_each_class

    @classmethod
    def from_flags(cls, args, batch_size):
        return cls(batch_size, args.samples_each_class)

    def loss(self, input, label):
        distance = pairwise_squared_distance(input)
        positive, negative = positive_mask(label), negative_mask(label)
        positive_max = masked_max(distance, positive, axis=1, keepdim=True)
        negative_min = masked_min(distance, negative, axis=1, keepdim=True)
        # Exponents are <= 0 on the selected entries and 0 elsewhere, so exp can neither overflow nor
        # leak an inf into the gradient of the masked-out entries.
        zero = filled_like(distance, 0.0)
        positive_gap = paddle.where(positive, distance - positive_max, zero)
        negative_gap = paddle.where(negative, negative_min - distance, zero)
        theta = (masked_mean(paddle.exp(positive_gap), positive, axis=1, keepdim=True)
                 * masked_mean(paddle.exp(negative_gap), negative, axis=1, keepdim=True))
        bias = positive_max - negative_min

        # theta is at least 1 / (|P_i| |N_i|) when both sets are non-empty; elsewhere it is 0 and bias is
        # about -LARGE, so those anchors compute on harmless stand-ins and are zeroed afterwards.
        valid = paddle.any(positive, axis=1, keepdim=True) & paddle.any(negative, axis=1, keepdim=True)
        theta = paddle.where(valid, theta, filled_like(theta, 1.0))
        bias = paddle.where(valid, bias, filled_like(bias, 0.0))
        threshold = filled_like(bias, THRESHOLD)
        loss = (surrogate(theta, paddle.minimum(bias, threshold))
                + surrogate_asymptote(theta, paddle.maximum(bias, threshold))
                - surrogate(theta, threshold))
        return paddle.where(valid, loss, filled_like(loss, 0.0))
