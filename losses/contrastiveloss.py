"""Contrastive loss on cosine similarities, the pair loss of the cross-batch memory paper (Wang et al., CVPR 2020,
https://arxiv.org/abs/1912.06798), after Hadsell, Chopra and LeCun (CVPR 2006)."""
import paddle
import paddle.nn.functional as F

from utility import Flag
from .pairloss import PAIR_FLAGS, PairLoss, pair_masks
from .xbm import CrossBatchMemory


def _similarity(value):
    return None if -1.0 <= value <= 1.0 else "must be a cosine similarity in [-1, 1], got %s" % value


CONTRASTIVE_FLAGS = (
    Flag("contrastive_pos_margin", float, 1.0, "contrastive: positive pairs are pulled until their cosine similarity "
         "reaches this (1: all the way, as XBM).", _similarity),
    Flag("contrastive_neg_margin", float, 0.5, "contrastive: negative pairs are pushed until their cosine "
         "similarity is below this (XBM's 0.5).", _similarity),
)


class ContrastiveLoss(PairLoss):
    """Pulls every positive pair together and pushes every negative pair closer than a margin apart.

    With S_ij the cosine similarity of the L2-normalised embeddings, positives P_i (same label, j != i) and negatives
    N_i (other label), the loss of query i is the sum over its pairs
        loss_i = sum_{P_i} relu(pos_margin - S_ij) + sum_{N_i} relu(S_ik - neg_margin),
    and the caller's mean over the queries is the XBM paper's sum over pairs divided by the batch size. Defaults are
    XBM's (pos_margin 1, neg_margin 0.5); its code adds S_ik rather than S_ik - neg_margin for a negative past the
    margin, which has the same gradient.

    Args:
        train_batch_size: images per batch (all devices); checked to split into groups of samples_each_class.
        samples_each_class: images of one class per group in the sampler's batches.
        pos_margin, neg_margin: the similarities above, in [-1, 1].
        memory: an `xbm.CrossBatchMemory`, or None.

    `loss(input, label)` returns the per-query losses [N, 1].
    """

    name = "contrastive"
    flags = PAIR_FLAGS + CONTRASTIVE_FLAGS

    def __init__(self, train_batch_size, samples_each_class, pos_margin=1.0, neg_margin=0.5, memory=None):
        super().__init__(train_batch_size, samples_each_class, memory)
        self.pos_margin, self.neg_margin = pos_margin, neg_margin

    @classmethod
    def from_flags(cls, args, batch_size):
        return cls(batch_size, args.samples_each_class, pos_margin=args.contrastive_pos_margin,
                   neg_margin=args.contrastive_neg_margin, memory=CrossBatchMemory.from_flags(args, batch_size))

    def pair_loss(self, query, query_label, reference, reference_label, valid):
        similarity = paddle.matmul(query, reference, transpose_y=True)
        positive, negative = pair_masks(query_label, reference_label, valid)
        pull = F.relu(self.pos_margin - similarity) * positive.astype(similarity.dtype)
        push = F.relu(similarity - self.neg_margin) * negative.astype(similarity.dtype)
        return paddle.sum(pull + push, axis=1, keepdim=True)
