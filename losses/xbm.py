"""Cross-batch memory (XBM, Wang et al., CVPR 2020, https://arxiv.org/abs/1912.06798) for the pair losses.

Embeddings drift slowly during training, so the embeddings of past batches, kept in a memory, can stand in for
today's: each query of the batch is also compared with thousands of remembered references, which hold far more hard
negatives than one batch. The memory lives in the training program as persistable variables, updated in place by
the program itself every step (no round trip through the host), saved in checkpoints with the weights, and resumed
exactly.
"""
import paddle

from core import distributed
from utility import Flag, non_negative, positive
from .commonfunc import constant, flatten_labels

XBM_SIZE = Flag("xbm_size", int, 0, "Cross-batch memory (contrastive, multisimilarity, circle, triplet with --miner): "
                "how many past embeddings it holds, of all processes; 0: no memory. The XBM paper keeps 55000 on "
                "SOP.", non_negative)
XBM_START_ITER = Flag("xbm_start_iter", int, 1000, "Iterations trained on the batch alone before the memory starts "
                      "filling and counting (the XBM paper's 1000).", non_negative)
XBM_WEIGHT = Flag("xbm_weight", float, 1.0, "Weight of the loss against the memory, added to the in-batch loss.",
                  positive)
XBM_FLAGS = (XBM_SIZE, XBM_START_ITER, XBM_WEIGHT)

# Names of the program's memory variables; "xbm_" marks them as a run's state, which pretrained weights never carry.
EMBEDDINGS, LABELS, POSITION, STEP = "xbm_embeddings", "xbm_labels", "xbm_position", "xbm_step"
EMPTY_LABEL = -1


def _persistable(name, shape, dtype, value):
    """A variable of the current program kept in the scope between runs (and so in checkpoints), set to `value` by the
    startup program."""
    return paddle.pir.core.create_persistable_value(dtype, shape, name=name,
                                                    initializer=paddle.nn.initializer.Constant(value))


class CrossBatchMemory:
    """A ring buffer of the last `size` L2-normalised embeddings and their labels, of every process.

    Step s (0-based, counted by the program in `xbm_step`) with the batch's queries q_i, labels y_i:
      * s < start_iter: the memory is left alone and the loss is the in-batch loss;
      * otherwise the whole batch (every process's share, in rank order) is written over the oldest slots, from
        `xbm_position` on (mod size), as constants (no gradient flows into the memory), and then
            loss = in_batch_loss + weight * pair_loss(q, y, memory embeddings, memory labels),
        where the memory's pairs leave out empty slots and each query's own slot, the copy of itself just written.
    The batch is written before it is compared, as the paper's code does, so a query meets its batch-mates again
    (with gradient on the query side only).

    Args:
        size: slots; at least the global batch (--train_batch_size).
        start_iter: steps before the memory is used.
        weight: weight of the memory's loss.
        num_processes, process_rank: data parallel; every process writes the same global batch, so the memories
            stay identical.
    """

    def __init__(self, size, start_iter=1000, weight=1.0, num_processes=1, process_rank=0):
        self.size, self.start_iter, self.weight = size, start_iter, weight
        self.num_processes, self.process_rank = num_processes, process_rank

    @classmethod
    def from_flags(cls, args, batch_size):
        """The memory --xbm_size asks for, or None; `batch_size` is this process's share of --train_batch_size."""
        if args.xbm_size == 0:
            return None
        num_processes = distributed.world_size()
        if args.xbm_size < batch_size * num_processes:
            raise ValueError("--xbm_size=%d is smaller than --train_batch_size=%d: the memory must hold at least one "
                             "whole batch" % (args.xbm_size, batch_size * num_processes))
        return cls(args.xbm_size, args.xbm_start_iter, args.xbm_weight, num_processes=num_processes,
                   process_rank=distributed.rank())

    def add_loss(self, in_batch_loss, embedding, label, pair_loss):
        """`in_batch_loss` plus the weighted `pair_loss(queries, labels, references, reference labels, valid)` of the
        batch's L2-normalised `embedding` [n, D] against the memory, which this step's ops update first."""
        labels = flatten_labels(label)
        step = _persistable(STEP, [1], "int64", 0)
        position = _persistable(POSITION, [1], "int64", 0)
        memory = _persistable(EMBEDDINGS, [self.size, embedding.shape[1]], embedding.dtype, 0.0)
        memory_labels = _persistable(LABELS, [self.size], "int64", EMPTY_LABEL)

        active = step >= self.start_iter
        batch = distributed.gather_over_processes(constant(embedding), self.process_rank, self.num_processes)
        batch_labels = distributed.gather_over_processes(labels, self.process_rank, self.num_processes)
        batch_size = paddle.shape(batch_labels)[0].astype("int64")
        slots = (position + paddle.arange(batch_size, dtype="int64")) % self.size
        # Written in place, only the batch's rows (index_put_; Paddle 3.3.1's scatter_ silently copies under PIR).
        # Before the start the same slots are rewritten with what they hold, so the memory is unchanged.
        memory = paddle.index_put_(memory, (slots,), paddle.where(active, batch, paddle.gather(memory, slots)))
        memory_labels = paddle.index_put_(memory_labels, (slots,),
                                          paddle.where(active, batch_labels, paddle.gather(memory_labels, slots)))

        queries = paddle.shape(labels)[0].astype("int64")
        own_slot = (position + self.process_rank * queries + paddle.arange(queries, dtype="int64")) % self.size
        slot_index = paddle.arange(self.size, dtype="int64")
        valid = (memory_labels >= 0).unsqueeze(0) & (slot_index.unsqueeze(0) != own_slot.unsqueeze(1))
        memory_loss = pair_loss(embedding, labels, memory, memory_labels, valid)
        total = in_batch_loss + (self.weight * active.astype(memory_loss.dtype)) * memory_loss

        # Overwritten last, after every op that reads the old position.
        paddle.assign(paddle.where(active, (position + batch_size) % self.size, position), position)
        paddle.assign(step + 1, step)
        return total
