"""Triplet loss on batches laid out as consecutive (anchor, positive, negative) triples."""
import paddle
import paddle.nn.functional as F

from .base import MARGIN, TRIPLETS, Loss
from .commonfunc import l2_normalize


class TripletLoss(Loss):
    """Hinge on the gap between anchor-positive and anchor-negative squared distances.

    With L2-normalised embeddings and the batch read as rows (3k, 3k+1, 3k+2) = (anchor, positive, negative):
        loss_k = relu(|a_k - p_k|^2 - |a_k - n_k|^2 + margin).

    Args:
        margin: the required gap.
        train_batch_size: optional; when given it is checked to be divisible by 3 when the loss is created.

    `loss(input, label=None)` ignores the labels (the layout carries them) and returns the per-triple losses
    [N / 3]. A batch whose size is not a multiple of 3 is rejected when the graph is built if the batch size is
    static, else by Paddle's reshape on the first such batch.
    """

    name = "triplet"
    batch_layout = TRIPLETS
    flags = (MARGIN,)

    def __init__(self, margin=0.1, train_batch_size=None):
        self.margin = margin
        if train_batch_size is not None:
            check_triplet_batch(train_batch_size)

    @classmethod
    def from_flags(cls, args, batch_size):
        return cls(margin=args.margin, train_batch_size=batch_size)

    def loss(self, input, label=None):
        if input.shape[0] > 0:
            check_triplet_batch(input.shape[0])
        triples = paddle.reshape(l2_normalize(input), [-1, 3, input.shape[1]])
        anchor, positive, negative = triples[:, 0], triples[:, 1], triples[:, 2]
        positive_distance = paddle.sum(paddle.square(anchor - positive), axis=1)
        negative_distance = paddle.sum(paddle.square(anchor - negative), axis=1)
        return F.relu(positive_distance - negative_distance + self.margin)


def check_triplet_batch(batch_size):
    """Raises ValueError unless the batch holds whole (anchor, positive, negative) triples."""
    if batch_size % 3 != 0:
        raise ValueError("--train_batch_size=%d is not divisible by 3: triplet batches are "
                         "(anchor, positive, negative) triples" % batch_size)
