"""Which triplets the triplet loss trains on when it mines them itself (--miner), from the squared distances d_ij
between each query i and the references j, and the masks of its positive and negative pairs.

Each miner gives the hinge relu(d_ij - d_ik + margin) of a positive j and a negative k of query i:
    batch_hard (Hermans et al., https://arxiv.org/abs/1703.07737): per query, its farthest positive against its
        nearest negative: loss_i = relu(max_{P_i} d_ij - min_{N_i} d_ik + margin); a query without a positive or
        without a negative gets 0. Returns the per-query losses [n, 1].
    semi_hard (FaceNet, Schroff et al., https://arxiv.org/abs/1503.03832, as TensorFlow's triplet_semihard_loss): per
        positive pair (i, j), the nearest negative farther than the positive, k = argmin {d_ik : k in N_i,
        d_ik > d_ij}, or the farthest negative when none is farther; the mean over the positive pairs of queries that
        have a negative. Returns a scalar.
    all (Hermans et al.'s "batch all", non-zero average): every (i, j, k); the sum of the hinges divided by how many
        are positive (0 if none). Returns a scalar.
semi_hard and all read each query's negatives sorted by distance, so that a query's n_p positives and n_n negatives
cost O((n_p + n_n) log n_n), not n_p n_n: the memory of --xbm_size holds thousands of references.
"""
import paddle
import paddle.nn.functional as F

from utility import Flag
from .commonfunc import LARGE, filled_like, masked_max, masked_mean, masked_min

NO_MINER = "none"


def batch_hard(distance, positive, negative, margin):
    # A missing positive makes the max -LARGE, a missing negative the min +LARGE: the hinge is then 0.
    hardest_positive = masked_max(distance, positive, axis=1, keepdim=True)
    hardest_negative = masked_min(distance, negative, axis=1, keepdim=True)
    return F.relu(hardest_positive - hardest_negative + margin)


def sorted_negatives(distance, negative):
    """Each row's negative distances in increasing order, the other entries (+LARGE) after them; and the number of
    negatives per row [n, 1]. Differentiable in the distances."""
    padded = paddle.where(negative, distance, filled_like(distance, LARGE))
    order = paddle.argsort(padded, axis=1)
    return paddle.take_along_axis(padded, order, axis=1), paddle.sum(negative.astype("int64"), axis=1, keepdim=True)


def semi_hard(distance, positive, negative, margin):
    negatives, count = sorted_negatives(distance, negative)
    farther = paddle.searchsorted(negatives, distance, right=True)  # negatives at most d_ij away: the first farther one
    chosen = paddle.where(farther < count, farther, paddle.clip(count - 1, min=0).expand_as(farther))
    hinge = F.relu(distance - paddle.take_along_axis(negatives, chosen, axis=1) + margin)
    return masked_mean(hinge, positive & (count > 0))


def all_triplets(distance, positive, negative, margin):
    negatives, _ = sorted_negatives(distance, negative)
    # The c_ij negatives with d_ik < d_ij + margin give the positive hinges; their sum is
    # c_ij (d_ij + margin) - (the sum of the c_ij smallest negative distances).
    active = paddle.searchsorted(negatives, distance + margin)
    prefix_sums = paddle.concat([paddle.zeros_like(negatives[:, :1]), paddle.cumsum(negatives, axis=1)], axis=1)
    hinge_sums = active.astype(distance.dtype) * (distance + margin) - paddle.take_along_axis(prefix_sums, active,
                                                                                              axis=1)
    weight = positive.astype(distance.dtype)
    count = paddle.sum(active.astype(distance.dtype) * weight)
    return paddle.sum(hinge_sums * weight) / paddle.clip(count, min=1.0)


MINERS = {"batch_hard": batch_hard, "semi_hard": semi_hard, "all": all_triplets}


def _miner_name(value):
    names = (NO_MINER,) + tuple(MINERS)
    return None if value in names else "%r is not one of %s" % (value, ", ".join(names))


MINER = Flag("miner", str, NO_MINER, "triplet: none (the original's (anchor, positive, negative) triples) or mine "
             "the triplets of class-balanced batches of --samples_each_class images per class: batch_hard, "
             "semi_hard or all.", _miner_name)
