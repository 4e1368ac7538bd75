"""The interface every loss implements, and the flags several losses share.

A loss class is the one place that knows what it is: the batch layout the reader must deliver, whether it has a
classifier head (then it returns class probabilities, accuracies are logged and labels must fit --class_dim), its
flags, and how it is built from the parsed flags. The scripts, the reader's sampler, the program builder, the
benchmarks and the tests ask the class; none of them compares loss names.
"""
import numpy as np

from core.samplers import CLASS_BALANCED, SHUFFLED, TRIPLETS  # noqa: F401  (the layouts a loss can ask for)
from utility import Flag, positive


CLASS_DIM = Flag("class_dim", int, 11318, "Number of training classes (SOP: 11318), the size of a classifier loss's "
                 "output; train_pair.py accepts it and, as the original, leaves it unused.", positive)
SAMPLES_EACH_CLASS = Flag("samples_each_class", int, 2, "Images of each class in a class-balanced batch "
                          "(quadruplet, eml, npairs, multisimilarity, contrastive, circle, triplet with --miner).",
                          positive)
MARGIN = Flag("margin", float, 0.1, "triplet, quadruplet: the margin.")


class Loss:
    """A metric-learning loss. Subclasses set the class attributes and implement `from_flags` and `loss`.

    name:               its --loss_name.
    batch_layout:       SHUFFLED, TRIPLETS or CLASS_BALANCED; with CLASS_BALANCED, `samples_each_class` images of
                        each class.
    has_classifier:     `loss()` returns `(losses, probabilities [N, class_dim])`, the losses to average (per sample
                        [N, 1], or one scalar for the batch as proxyanchor's), and top-1/top-5 accuracy is logged;
                        otherwise it returns the per-sample (or per-anchor) losses, or a scalar, and the log shows the
                        batch's Recall@1.
    flags:              its hyper-parameters, as `utility.Flag`s with the paper's defaults.
    """

    name = None
    batch_layout = SHUFFLED
    has_classifier = False
    flags = ()
    samples_each_class = 1

    @classmethod
    def add_arguments(cls, parser):
        parser.add_flags(cls.flags)

    @classmethod
    def from_flags(cls, args, batch_size):
        """The loss as the parsed flags `args` describe it, for batches of `batch_size` images (one process's share).

        Raises ValueError naming the flag when the flags do not fit together (a batch that does not split into the
        loss's groups).
        """
        raise NotImplementedError

    def check_labels(self, labels):
        """Checks the training labels (0-based) against this loss's flags: raises ValueError naming the flag to fix
        when they cannot work, returns warnings (one line each) about what works but looks wrong."""
        return []

    def loss(self, input, label):
        """Builds the loss of the embeddings `input` [N, D] with labels `label` [N, 1] into the current program."""
        raise NotImplementedError


class ClassifierLoss(Loss):
    """A loss with a classifier over --class_dim classes, trained on shuffled batches."""

    has_classifier = True
    class_dim = None

    def check_labels(self, labels):
        check_labels(labels, self.class_dim)
        needed = int(np.max(labels)) + 1
        if self.class_dim >= 2 * needed:  # most likely the SOP default left on another data set
            return ["--class_dim=%d, but the training labels need only %d outputs: %d of the classifier's are never "
                    "a target; pass --class_dim=%d" % (self.class_dim, needed, self.class_dim - needed, needed)]
        return []


def check_labels(labels, class_dim):
    """Raises ValueError unless every label is an integer in [0, class_dim); call it once on the data set."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return
    if labels.min() < 0:
        raise ValueError("labels must be non-negative, found %d" % labels.min())
    if labels.max() >= class_dim:
        raise ValueError("--class_dim=%d is too small: labels go up to %d, so --class_dim must be at least %d"
                         % (class_dim, labels.max(), labels.max() + 1))


def check_class_balanced_batch(train_batch_size, samples_each_class, loss_name):
    """Raises ValueError unless a batch splits into whole groups of at least two images per class."""
    if samples_each_class < 2:
        raise ValueError("--samples_each_class=%d: %s needs at least 2 images of a class in a batch"
                         % (samples_each_class, loss_name))
    if train_batch_size % samples_each_class != 0:
        raise ValueError("--train_batch_size=%d is not divisible by --samples_each_class=%d (loss %s)"
                         % (train_batch_size, samples_each_class, loss_name))
