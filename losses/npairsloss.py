"""Multi-class N-pair loss (Sohn, NIPS 2016) with an L2 penalty on the embeddings."""
import paddle

from utility import Flag
from .base import CLASS_BALANCED, SAMPLES_EACH_CLASS, Loss, check_class_balanced_batch
from .commonfunc import LARGE, batch_positions, filled_like, log_softmax, masked_mean, same_label_mask

NPAIRS_REG_LAMBDA = Flag("npairs_reg_lambda", float, 0.01, "npairs: weight of the embedding-norm regulariser.")


class NpairsLoss(Loss):
    """Softmax over anchor-positive similarities: each anchor must pick out its own class's positive.

    The batch holds (anchor, positive) pairs of distinct classes. With raw embeddings (no normalisation),
    similarity s_ij = a_i . p_j over all anchors i and positives j, and targets t_ij = [y(a_i) == y(p_j)],
    each row divided by its sum:
        loss = mean_i ( -sum_j t_ij log softmax(s_i)_j ) + 0.5 reg_lambda mean_{all x in batch} |x|^2.

    Args:
        train_batch_size: images per batch (all devices); must be even.
        samples_each_class: must be 2 (anchor and positive).
        reg_lambda: weight of the L2 penalty on the embeddings.

    Roles come from the labels, not from positions: the first image of a class in the batch is its anchor,
    later ones are positives. So any row order that keeps each anchor before its positive gives the same loss
    as the (anchor, positive, anchor, positive, ...) layout. An anchor without a positive in the batch is left
    out of the mean (the penalty still covers it). Returns a scalar.
    """

    name = "npairs"
    batch_layout = CLASS_BALANCED
    flags = (SAMPLES_EACH_CLASS, NPAIRS_REG_LAMBDA)

    def __init__(self, train_batch_size, samples_each_class, reg_lambda=0.01):
        if samples_each_class != 2:
            raise ValueError("--samples_each_class=%d: npairs needs --samples_each_class=2 (anchor, positive)"
                             % samples_each_class)
        check_class_balanced_batch(train_batch_size, samples_each_class, "npairs")
        self.train_batch_size = train_batch_size
        self.samples_each_class = samples_each_class
        self.reg_lambda = reg_lambda

    @classmethod
    def from_flags(cls, args, batch_size):
        return cls(batch_size, args.samples_each_class, reg_lambda=args.npairs_reg_lambda)

    def loss(self, input, label):
        same = same_label_mask(label)
        position = batch_positions(label)
        earlier = position.unsqueeze(0) < position.unsqueeze(1)  # [i, j]: j comes before i in the batch
        is_positive = paddle.any(same & earlier, axis=1)
        is_anchor = ~is_positive

        # Every anchor row competes over the positive columns only.
        competing = is_positive.unsqueeze(0).expand_as(same)
        similarity = paddle.matmul(input, input, transpose_y=True)
        logits = paddle.where(competing, similarity, filled_like(similarity, -LARGE))
        target = (same & competing).astype(input.dtype)
        positives_per_row = paddle.sum(target, axis=1, keepdim=True)
        target = target / paddle.clip(positives_per_row, min=1.0)
        cross_entropy = -paddle.sum(target * log_softmax(logits), axis=1)
        has_positive = is_anchor & (positives_per_row.squeeze(1) > 0)
        xent = masked_mean(cross_entropy, has_positive)

        l2_penalty = paddle.mean(paddle.sum(paddle.square(input), axis=1))
        return xent + 0.5 * self.reg_lambda * l2_penalty
