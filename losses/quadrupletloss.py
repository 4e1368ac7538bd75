"""Quadruplet loss in its margin-sample-mining form (Xiao et al., https://arxiv.org/abs/1710.00478)."""
import paddle.nn.functional as F

from .base import CLASS_BALANCED, MARGIN, SAMPLES_EACH_CLASS, Loss, check_class_balanced_batch
from .commonfunc import l2_normalize, masked_max, masked_min, negative_mask, pairwise_squared_distance, positive_mask


class QuadrupletLoss(Loss):
    """Hinge between the hardest positive pair and the hardest negative pair of the whole batch.

    With L2-normalised embeddings and squared distances d_ij:
        loss = relu(max_{y_i == y_j, i != j} d_ij - min_{y_i != y_j} d_ij + margin), one scalar per batch.

    Args:
        train_batch_size: images per batch (all devices); checked to split into groups of samples_each_class.
        samples_each_class: images of one class per group in the sampler's batches.
        margin: the required gap.

    Positives and negatives come from the labels, so the row order of the batch does not matter. A batch
    with no positive pair (or no negative pair) gives loss 0 and no gradient.
    """

    name = "quadruplet"
    batch_layout = CLASS_BALANCED
    flags = (SAMPLES_EACH_CLASS, MARGIN)

    def __init__(self, train_batch_size, samples_each_class, margin=0.1):
        check_class_balanced_batch(train_batch_size, samples_each_class, "quadruplet")
        self.train_batch_size = train_batch_size
        self.samples_each_class = samples_each_class
        self.margin = margin

    @classmethod
    def from_flags(cls, args, batch_size):
        return cls(batch_size, args.samples_each_class, margin=args.margin)

    def loss(self, input, label):
        distance = pairwise_squared_distance(l2_normalize(input))
        hardest_positive = masked_max(distance, positive_mask(label))
        hardest_negative = masked_min(distance, negative_mask(label))
        return F.relu(hardest_positive - hardest_negative + self.margin)
