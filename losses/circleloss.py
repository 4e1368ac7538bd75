"""Circle loss (Sun et al., CVPR 2020, https://arxiv.org/abs/2002.10857), pair-wise form."""
import paddle
import paddle.nn.functional as F

from utility import Flag, positive
from .commonfunc import LARGE, constant, filled_like
from .pairloss import PAIR_FLAGS, PairLoss, pair_masks
from .xbm import CrossBatchMemory


def _relaxation(value):
    return None if 0 <= value < 1 else "must be in [0, 1), got %s" % value


CIRCLE_FLAGS = (
    Flag("circle_margin", float, 0.4, "circle: relaxation m (the paper's 0.4 for image retrieval, 0.25 for faces).",
         _relaxation),
    Flag("circle_gamma", float, 80.0, "circle: scale gamma (the paper's 80 for image retrieval, 256 for faces).",
         positive),
)


class CircleLoss(PairLoss):
    """Each similarity weighted by how far it is from its optimum, so that the decision boundary is a circle.

    With S the cosine similarities of the L2-normalised embeddings, for query i with positives P_i (same label,
    j != i) and negatives N_i (other label):
        alpha_p = relu(1 + m - S_ij),  alpha_n = relu(S_ik + m)      (constants for the gradient, as the paper's code)
        loss_i = log(1 + sum_{N_i} exp(gamma alpha_n (S_ik - m)) * sum_{P_i} exp(-gamma alpha_p (S_ij - (1 - m))))
               = softplus(logsumexp_{N_i}(...) + logsumexp_{P_i}(...)),
    0 for a query without a positive or without a negative. Defaults are the paper's for image retrieval (m 0.4,
    gamma 80), as in pytorch-metric-learning.

    Args:
        train_batch_size: images per batch (all devices); checked to split into groups of samples_each_class.
        samples_each_class: images of one class per group in the sampler's batches.
        margin: m, in [0, 1).
        gamma: the scale.
        memory: an `xbm.CrossBatchMemory`, or None.

    `loss(input, label)` returns the per-query losses [N, 1].
    """

    name = "circle"
    flags = PAIR_FLAGS + CIRCLE_FLAGS

    def __init__(self, train_batch_size, samples_each_class, margin=0.4, gamma=80.0, memory=None):
        super().__init__(train_batch_size, samples_each_class, memory)
        self.margin, self.gamma = margin, gamma

    @classmethod
    def from_flags(cls, args, batch_size):
        return cls(batch_size, args.samples_each_class, margin=args.circle_margin, gamma=args.circle_gamma,
                   memory=CrossBatchMemory.from_flags(args, batch_size))

    def pair_loss(self, query, query_label, reference, reference_label, valid):
        similarity = paddle.matmul(query, reference, transpose_y=True)
        positive, negative = pair_masks(query_label, reference_label, valid)
        weights_from = constant(similarity)
        positive_logits = -self.gamma * F.relu(1.0 + self.margin - weights_from) * (similarity - (1.0 - self.margin))
        negative_logits = self.gamma * F.relu(weights_from + self.margin) * (similarity - self.margin)
        both = (paddle.logsumexp(paddle.where(positive, positive_logits, filled_like(similarity, -LARGE)), axis=1,
                                 keepdim=True)
                + paddle.logsumexp(paddle.where(negative, negative_logits, filled_like(similarity, -LARGE)), axis=1,
                                   keepdim=True))
        # Without a positive or a negative the sum is about -LARGE, whose softplus and its gradient are exactly 0.
        return F.softplus(both)
