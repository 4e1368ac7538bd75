"""The training samplers: which images make each batch, by the batch layout a loss asks for (its `batch_layout`).

- shuffled (softmax, arcmargin): a shuffled list of all images, reshuffled every epoch;
- triplets (triplet): consecutive (anchor, positive, negative) triples, the anchor's class uniform over the classes;
- class_balanced (quadruplet, eml, npairs, multisimilarity, ...): `batch_size / samples_each_class` classes with
  `samples_each_class` images each, consecutive in the batch. Classes with fewer images than that are left out of
  sampling (a warning counts them): repeating an image would make a trivially easy positive pair.
A sampler's `batch(index)` is a pure function of (seed, index): a resumed run draws the batches it would have drawn.
"""
import warnings

import numpy as np

# The batch layouts a loss can ask for (its `batch_layout`).
SHUFFLED, TRIPLETS, CLASS_BALANCED = BATCH_LAYOUTS = ("shuffled", "triplets", "class_balanced")
# Independent random streams derived from the one --seed.
SAMPLING_STREAM, AUGMENT_STREAM = 1, 2


def batch_rng(seed, stream, *position):
    return np.random.default_rng([seed, stream, *position])


class ShuffledSampler:
    """softmax/arcmargin: consecutive slices of an endless stream of per-epoch permutations of all images."""

    def __init__(self, labels, batch_size, seed):
        self.num_images = len(labels)
        self.batch_size = batch_size
        self.seed = seed
        self._permutations = {}

    def _permutation(self, epoch):
        if epoch not in self._permutations:
            self._permutations = {key: value for key, value in self._permutations.items() if key >= epoch - 1}
            self._permutations[epoch] = batch_rng(self.seed, SAMPLING_STREAM, epoch).permutation(self.num_images)
        return self._permutations[epoch]

    def batch(self, batch_index):
        positions = np.arange(batch_index * self.batch_size, (batch_index + 1) * self.batch_size)
        epochs, offsets = np.divmod(positions, self.num_images)
        return np.array([self._permutation(epoch)[offset] for epoch, offset in zip(epochs, offsets)])


def indices_by_class(labels):
    order = np.argsort(labels, kind="stable")
    classes, starts = np.unique(labels[order], return_index=True)
    return dict(zip(classes.tolist(), np.split(order, starts[1:])))


class TripletSampler:
    """triplet, as the original's: each (anchor, positive, negative) triple draws its anchor class uniformly over the
    classes, two different images of it as anchor and positive, and an image of another class, drawn uniformly over
    the other classes, as negative. A class of one image cannot give an anchor and positive; it is only ever a
    negative (the original would fail on it).
    """

    def __init__(self, labels, batch_size, seed):
        if batch_size % 3:
            raise ValueError("--train_batch_size=%d must be a multiple of 3 for triplet (anchor, positive, "
                             "negative)" % batch_size)
        self.by_class = indices_by_class(labels)
        self.classes = sorted(self.by_class)
        self.anchor_positions = [position for position, label in enumerate(self.classes)
                                 if len(self.by_class[label]) >= 2]
        if not self.anchor_positions or len(self.classes) < 2:
            raise ValueError("triplet needs at least one class with 2 images and at least 2 classes")
        self.batch_size = batch_size
        self.seed = seed

    def batch(self, batch_index):
        rng = batch_rng(self.seed, SAMPLING_STREAM + 10, batch_index)
        triples = []
        for _ in range(self.batch_size // 3):
            anchor_position = self.anchor_positions[rng.integers(len(self.anchor_positions))]
            negative_position = int(rng.integers(len(self.classes) - 1))
            negative_position += negative_position >= anchor_position  # any class but the anchor's
            anchor, positive = rng.choice(self.by_class[self.classes[anchor_position]], 2, replace=False)
            negative = rng.choice(self.by_class[self.classes[negative_position]])
            triples.extend((anchor, positive, negative))
        return np.array(triples)


class ClassBalancedSampler:
    """quadruplet/eml/npairs/multisimilarity: each batch is `batch_size / samples_each_class` distinct classes × that
    many images.

    Classes are visited in a fresh random order each epoch, the tail that does not fill a batch dropped.
    """

    def __init__(self, labels, batch_size, samples_each_class, seed):
        if samples_each_class < 1 or batch_size % samples_each_class:
            raise ValueError("--train_batch_size=%d must be a multiple of --samples_each_class=%d"
                             % (batch_size, samples_each_class))
        by_class = indices_by_class(labels)
        self.batch_size = batch_size
        self.samples_each_class = samples_each_class
        self.classes_per_batch = batch_size // samples_each_class
        self.class_images = [idx for _, idx in sorted(by_class.items()) if len(idx) >= samples_each_class]
        too_small = len(by_class) - len(self.class_images)
        if too_small:
            warnings.warn("%d of %d classes have fewer than --samples_each_class=%d images and are left out of "
                          "class-balanced sampling" % (too_small, len(by_class), samples_each_class))
        if len(self.class_images) < self.classes_per_batch:
            raise ValueError("--train_batch_size=%d / --samples_each_class=%d needs %d classes per batch, but only %d "
                             "classes have at least %d images" % (batch_size, samples_each_class,
                                                                  self.classes_per_batch, len(self.class_images),
                                                                  samples_each_class))
        self.batches_per_epoch = len(self.class_images) // self.classes_per_batch
        self.seed = seed

    def batch(self, batch_index):
        epoch, position = divmod(batch_index, self.batches_per_epoch)
        class_order = batch_rng(self.seed, SAMPLING_STREAM, epoch).permutation(len(self.class_images))
        chosen = class_order[position * self.classes_per_batch:(position + 1) * self.classes_per_batch]
        rng = batch_rng(self.seed, SAMPLING_STREAM + 20, batch_index)
        return np.concatenate([rng.choice(self.class_images[c], self.samples_each_class, replace=False)
                               for c in chosen])


def make_sampler(batch_layout, labels, batch_size, samples_each_class, seed):
    """The sampler of a loss's `batch_layout`; raises ValueError naming the flag when the data cannot fill a batch."""
    if batch_layout == SHUFFLED:
        return ShuffledSampler(labels, batch_size, seed)
    if batch_layout == TRIPLETS:
        return TripletSampler(labels, batch_size, seed)
    if batch_layout == CLASS_BALANCED:
        return ClassBalancedSampler(labels, batch_size, samples_each_class, seed)
    raise ValueError("unknown batch layout %r, not one of %s" % (batch_layout, ", ".join(BATCH_LAYOUTS)))
