"""Multi-similarity loss with its pair mining (Wang et al., CVPR 2019, https://arxiv.org/abs/1904.06627)."""
import paddle

from utility import Flag, positive
from .commonfunc import log_one_plus_sum_exp, masked_max, masked_min
from .pairloss import PAIR_FLAGS, PairLoss, pair_masks
from .xbm import CrossBatchMemory

MS_FLAGS = (
    Flag("ms_alpha", float, 2.0, "multisimilarity: scale of the positive pairs' term.", positive),
    Flag("ms_beta", float, 50.0, "multisimilarity: scale of the negative pairs' term.", positive),
    Flag("ms_base", float, 0.5, "multisimilarity: the similarity the pairs are pushed across."),
    Flag("ms_epsilon", float, 0.1, "multisimilarity: mining margin; pairs easier than this are left out."),
)


class MultiSimilarityLoss(PairLoss):
    """Soft weighting of every informative pair of an anchor, on cosine similarities.

    With S_ij the cosine similarity of the L2-normalised embeddings, positives P_i (same label, j != i) and
    negatives N_i (different label), mining keeps the pairs that violate the other side by the margin epsilon:
        P_i' = {j in P_i : S_ij - epsilon < max_{N_i} S_ik},   N_i' = {k in N_i : S_ik + epsilon > min_{P_i} S_ij},
    and the loss of anchor i is
        1/alpha log(1 + sum_{P_i'} exp(-alpha (S_ij - base))) + 1/beta log(1 + sum_{N_i'} exp(beta (S_ik - base))).
    Defaults are the paper's (alpha 2, beta 50, base 0.5, epsilon 0.1), as in pytorch-metric-learning.

    Args:
        train_batch_size: images per batch (all devices); checked to split into groups of samples_each_class.
        samples_each_class: images of one class per group in the sampler's batches.
        memory: an `xbm.CrossBatchMemory`, whose references the anchors meet as well, or None.

    `loss(input, label)` returns the per-anchor losses [N, 1]. An anchor whose pairs are all mined away, or that
    has no positive or no negative in the batch, gets loss 0 and no gradient (it still counts in the caller's mean).
    """

    name = "multisimilarity"
    flags = PAIR_FLAGS + MS_FLAGS

    def __init__(self, train_batch_size, samples_each_class, alpha=2.0, beta=50.0, base=0.5, epsilon=0.1,
                 memory=None):
        super().__init__(train_batch_size, samples_each_class, memory)
        for flag, value in (("ms_alpha", alpha), ("ms_beta", beta)):
            if value <= 0:
                raise ValueError("--%s=%s: must be positive" % (flag, value))
        self.alpha, self.beta, self.base, self.epsilon = alpha, beta, base, epsilon

    @classmethod
    def from_flags(cls, args, batch_size):
        return cls(batch_size, args.samples_each_class, alpha=args.ms_alpha, beta=args.ms_beta, base=args.ms_base,
                   epsilon=args.ms_epsilon, memory=CrossBatchMemory.from_flags(args, batch_size))

    def pair_loss(self, query, query_label, reference, reference_label, valid):
        similarity = paddle.matmul(query, reference, transpose_y=True)
        positive, negative = pair_masks(query_label, reference_label, valid)
        # An anchor without negatives has max = -LARGE and keeps no positive; without positives, min = +LARGE
        # and it keeps no negative: both terms are then log(1) = 0.
        hardest_negative = masked_max(similarity, negative, axis=1, keepdim=True)
        hardest_positive = masked_min(similarity, positive, axis=1, keepdim=True)
        kept_positive = positive & (similarity - self.epsilon < hardest_negative)
        kept_negative = negative & (similarity + self.epsilon > hardest_positive)
        positive_term = log_one_plus_sum_exp(-self.alpha * (similarity - self.base), kept_positive) / self.alpha
        negative_term = log_one_plus_sum_exp(self.beta * (similarity - self.base), kept_negative) / self.beta
        return positive_term + negative_term
