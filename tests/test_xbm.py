"""The cross-batch memory against a NumPy reference that keeps its own queue: losses over several steps (filling,
wrapping around, starting late), the memory's variables, gradients with the memory held constant, and its flags."""
import numpy as np
import paddle
import pytest

import losses
from loss_tools import (MINER_REFERENCES, PLACE, build, finite_difference_gradient, in_batch, np_normalize,
                        ref_circle, ref_contrastive, ref_multisimilarity_pairs, static_mode)  # noqa: F401
from losses import xbm

SIZE, BATCH, DIM = 10, 4, 3

# name: (the loss with a memory, its pair reference in (queries, references) form)
LOSSES = {
    "contrastive": (lambda memory: losses.ContrastiveLoss(BATCH, 2, neg_margin=0.2, memory=memory),
                    lambda *pairs: ref_contrastive(*pairs, neg_margin=0.2)),
    "circle": (lambda memory: losses.CircleLoss(BATCH, 2, memory=memory), ref_circle),
    "multisimilarity": (lambda memory: losses.MultiSimilarityLoss(BATCH, 2, epsilon=0.5, memory=memory),
                        lambda *pairs: ref_multisimilarity_pairs(*pairs, epsilon=0.5)),
}
for _miner in losses.MINERS:
    LOSSES["triplet " + _miner] = (
        lambda memory, miner=_miner: losses.TripletLoss(0.3, BATCH, miner, 2, memory=memory),
        lambda *pairs, miner=_miner: MINER_REFERENCES[miner](*pairs, margin=0.3))


class NumpyMemory:
    """The reference: a ring of `size` slots written batch after batch once `start_iter` steps have passed."""

    def __init__(self, size, start_iter, weight):
        self.size, self.start_iter, self.weight = size, start_iter, weight
        self.embeddings, self.labels = np.zeros((size, DIM)), np.full(size, -1)
        self.position = self.step = 0

    def _written(self, embeddings, labels):
        slots = (self.position + np.arange(len(labels))) % self.size
        memory, memory_labels = self.embeddings.copy(), self.labels.copy()
        memory[slots], memory_labels[slots] = embeddings, labels
        return memory, memory_labels, slots

    def loss(self, x, labels, reference, written=None):
        """This step's mean loss, the memory unchanged; `written`: the embeddings the step writes (default: x's)."""
        queries = np_normalize(x)
        total = reference(queries, labels, queries, labels, in_batch(len(x)))
        if self.step >= self.start_iter:
            memory, memory_labels, slots = self._written(np_normalize(x if written is None else written), labels)
            valid = (memory_labels >= 0)[None, :] & (np.arange(self.size)[None, :] != slots[:, None])
            total = total + self.weight * reference(queries, labels, memory, memory_labels, valid)
        return float(np.mean(total))

    def advance(self, x, labels):
        if self.step >= self.start_iter:
            self.embeddings, self.labels, _ = self._written(np_normalize(x), labels)
            self.position = (self.position + len(labels)) % self.size
        self.step += 1


class MemoryProgram:
    """A loss with a memory in a program of its own, on features fed directly; each run is one training step."""

    def __init__(self, loss):
        self.main, startup, self.scope = paddle.static.Program(), paddle.static.Program(), paddle.static.Scope()
        with paddle.static.scope_guard(self.scope), paddle.utils.unique_name.guard(), \
                paddle.static.program_guard(self.main, startup):
            features = paddle.static.data("features", [-1, DIM], "float64")
            features.stop_gradient = False
            labels = paddle.static.data("labels", [-1, 1], "int64")
            self.loss = paddle.mean(loss.loss(features, labels))
            self.gradient = paddle.static.gradients([self.loss], [features])[0]
            self.executor = paddle.static.Executor(PLACE)
            self.executor.run(startup)

    def step(self, x, labels):
        with paddle.static.scope_guard(self.scope):
            loss, gradient = self.executor.run(self.main, feed={"features": x, "labels": labels[:, None]},
                                               fetch_list=[self.loss, self.gradient])
        return float(loss), gradient

    def variable(self, name):
        return np.array(self.scope.find_var(name).get_tensor())


def batches(count, rng):
    """Class-balanced batches of two classes out of three, two images each."""
    return [(rng.normal(size=(BATCH, DIM)), np.repeat(rng.choice(3, size=2, replace=False), 2)) for _ in range(count)]


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("start_iter, weight", [(0, 1.0), (2, 0.5)])
def test_memory_losses_match_a_numpy_queue(name, start_iter, weight):
    """Six steps: the memory fills, wraps around its 10 slots and overwrites the oldest."""
    make_loss, reference = LOSSES[name]
    program = MemoryProgram(make_loss(losses.CrossBatchMemory(SIZE, start_iter, weight)))
    memory = NumpyMemory(SIZE, start_iter, weight)
    for x, labels in batches(6, np.random.default_rng(40)):
        loss, _ = program.step(x, labels)
        # float64 graphs carry the margins and scales as float32 attributes (~1e-8 relative), which circle's gamma
        # and a hinge's cancellation magnify
        assert loss == pytest.approx(memory.loss(x, labels, reference), rel=1e-6, abs=1e-8)
        memory.advance(x, labels)
    np.testing.assert_allclose(program.variable(xbm.EMBEDDINGS), memory.embeddings, rtol=1e-12)
    np.testing.assert_array_equal(program.variable(xbm.LABELS), memory.labels)
    assert program.variable(xbm.POSITION).tolist() == [memory.position] and memory.position == (6 - start_iter) * 4 % 10
    assert program.variable(xbm.STEP).tolist() == [6]


@pytest.mark.parametrize("name", ["contrastive", "multisimilarity", "triplet semi_hard", "triplet batch_hard"])
def test_memory_is_constant_for_the_gradient(name):
    """The gradient of a step is the reference's with the memory, this batch's copy included, held fixed."""
    make_loss, reference = LOSSES[name]
    program = MemoryProgram(make_loss(losses.CrossBatchMemory(SIZE, 0, 0.7)))
    memory = NumpyMemory(SIZE, 0, 0.7)
    for step, (x, labels) in enumerate(batches(3, np.random.default_rng(41))):
        _, gradient = program.step(x, labels)
        if step == 2:
            expected = finite_difference_gradient(
                lambda z, labels=labels, x=x: memory.loss(z, labels, reference, written=x), x)
            np.testing.assert_allclose(gradient, expected, rtol=1e-6, atol=1e-8)
        memory.advance(x, labels)


def test_before_the_start_the_loss_is_the_in_batch_loss_and_the_memory_stays_empty():
    x, labels = batches(1, np.random.default_rng(42))[0]
    with_memory = MemoryProgram(losses.ContrastiveLoss(BATCH, 2, memory=losses.CrossBatchMemory(SIZE, 5, 1.0)))
    without = MemoryProgram(losses.ContrastiveLoss(BATCH, 2))
    for _ in range(3):
        assert with_memory.step(x, labels)[0] == without.step(x, labels)[0]
    assert (with_memory.variable(xbm.LABELS) == xbm.EMPTY_LABEL).all()
    assert not with_memory.variable(xbm.EMBEDDINGS).any() and with_memory.variable(xbm.STEP).tolist() == [3]


def test_memory_size_must_hold_a_batch():
    with pytest.raises(ValueError, match="--xbm_size=6 is smaller than --train_batch_size=12"):
        build("contrastive", 12, xbm_size=6)
    loss = build("circle", 12, xbm_size=12, xbm_start_iter=7, xbm_weight=0.25)
    assert (loss.memory.size, loss.memory.start_iter, loss.memory.weight) == (12, 7, 0.25)
    assert build("circle", 12).memory is None
