"""Triplet loss: on batches of consecutive (anchor, positive, negative) triples as the original, or on class-balanced
batches with the triplets mined in the program (--miner)."""
import paddle
import paddle.nn.functional as F

from .base import CLASS_BALANCED, MARGIN, TRIPLETS
from .commonfunc import l2_normalize, unit_squared_distance
from .miners import MINER, MINERS, NO_MINER
from .pairloss import PAIR_FLAGS, PairLoss, pair_masks
from .xbm import CrossBatchMemory


class TripletLoss(PairLoss):
    """Hinge on the gap between anchor-positive and anchor-negative squared distances of L2-normalised embeddings.

    miner "none", the original: the batch is read as rows (3k, 3k+1, 3k+2) = (anchor, positive, negative), and
        loss_k = relu(|a_k - p_k|^2 - |a_k - n_k|^2 + margin), per triple [N / 3]; the labels are not read.
    miner batch_hard, semi_hard or all (see miners.py): the triplets come from the labels of a class-balanced batch
        (batch_layout CLASS_BALANCED), and, with a memory (--xbm_size), from the memory too.

    Args:
        margin: the required gap.
        train_batch_size: images per batch (all devices); checked to split into triples, or with a miner into
            groups of samples_each_class. Optional without a miner.
        miner: "none" or a name in miners.MINERS.
        samples_each_class: images of one class in a class-balanced batch (with a miner).
        memory: an `xbm.CrossBatchMemory` (with a miner), or None.

    Without a miner a batch whose size is not a multiple of 3 is rejected when the graph is built if the batch size
    is static, else by Paddle's reshape on the first such batch.
    """

    name = "triplet"
    batch_layout = TRIPLETS  # with a miner the instance's own is CLASS_BALANCED
    flags = (MARGIN, MINER) + PAIR_FLAGS

    def __init__(self, margin=0.1, train_batch_size=None, miner=NO_MINER, samples_each_class=2, memory=None):
        self.margin = margin
        self.miner = miner
        if miner == NO_MINER:
            if memory is not None:
                raise ValueError("--xbm_size=%d: the triplet loss keeps a memory only with --miner=%s"
                                 % (memory.size, "|".join(MINERS)))
            if train_batch_size is not None:
                check_triplet_batch(train_batch_size)
            return
        super().__init__(train_batch_size, samples_each_class, memory)
        self.batch_layout = CLASS_BALANCED

    @classmethod
    def from_flags(cls, args, batch_size):
        return cls(margin=args.margin, train_batch_size=batch_size, miner=args.miner,
                   samples_each_class=args.samples_each_class, memory=CrossBatchMemory.from_flags(args, batch_size))

    def loss(self, input, label=None):
        if self.miner != NO_MINER:
            return super().loss(input, label)
        if input.shape[0] > 0:
            check_triplet_batch(input.shape[0])
        triples = paddle.reshape(l2_normalize(input), [-1, 3, input.shape[1]])
        anchor, positive, negative = triples[:, 0], triples[:, 1], triples[:, 2]
        positive_distance = paddle.sum(paddle.square(anchor - positive), axis=1)
        negative_distance = paddle.sum(paddle.square(anchor - negative), axis=1)
        return F.relu(positive_distance - negative_distance + self.margin)

    def pair_loss(self, query, query_label, reference, reference_label, valid):
        positive, negative = pair_masks(query_label, reference_label, valid)
        return MINERS[self.miner](unit_squared_distance(query, reference), positive, negative, self.margin)


def check_triplet_batch(batch_size):
    """Raises ValueError unless the batch holds whole (anchor, positive, negative) triples."""
    if batch_size % 3 != 0:
        raise ValueError("--train_batch_size=%d is not divisible by 3: triplet batches are "
                         "(anchor, positive, negative) triples" % batch_size)
