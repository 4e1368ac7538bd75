"""The pair losses' shared shape: every query of the batch against a set of references, in the batch and, with
--xbm_size, in the cross-batch memory."""
from .base import CLASS_BALANCED, SAMPLES_EACH_CLASS, Loss, check_class_balanced_batch
from .commonfunc import flatten_labels, l2_normalize, same_label_mask, self_mask
from .xbm import XBM_FLAGS

PAIR_FLAGS = (SAMPLES_EACH_CLASS,) + XBM_FLAGS


class PairLoss(Loss):
    """A loss over pairs of L2-normalised embeddings, trained on class-balanced batches.

    Subclasses implement `pair_loss(query, query_label, reference, reference_label, valid)`: the loss of the queries
    [n, D] against the references [m, D], where the boolean `valid` [n, m] says which (query, reference) pairs exist.
    In the batch the references are the batch itself, a query never paired with itself; with an
    `xbm.CrossBatchMemory` the memory's loss is added (see there). `loss()` returns what `pair_loss` returns: per-query
    losses [n, 1] or a scalar, to be averaged.
    """

    batch_layout = CLASS_BALANCED

    def __init__(self, train_batch_size, samples_each_class, memory=None):
        check_class_balanced_batch(train_batch_size, samples_each_class, self.name)
        self.train_batch_size = train_batch_size
        self.samples_each_class = samples_each_class
        self.memory = memory

    def loss(self, input, label):
        embedding = l2_normalize(input)
        labels = flatten_labels(label)
        in_batch = self.pair_loss(embedding, labels, embedding, labels, ~self_mask(labels))
        if self.memory is None:
            return in_batch
        return self.memory.add_loss(in_batch, embedding, labels, self.pair_loss)

    def pair_loss(self, query, query_label, reference, reference_label, valid):
        raise NotImplementedError


def pair_masks(query_label, reference_label, valid):
    """Boolean [n, m] masks of the positive (same label) and negative (other label) pairs among the `valid` ones."""
    same = same_label_mask(query_label, reference_label)
    return same & valid, ~same & valid
