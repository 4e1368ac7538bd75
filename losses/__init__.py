"""Metric-learning losses, selectable by name (``--loss_name=eml``).

Each loss is one file and one class implementing `base.Loss`; `LOSSES` maps its name to it. train_elem.py offers the
losses with a classifier head, train_pair.py the others. Adding a loss: its file, one line below, its tests and its
row in the loss table (docs/losses.md).
"""
import core  # noqa: F401  (thread counts set before paddle is imported)

from .arcmarginloss import ArcMarginLoss
from .base import (CLASS_BALANCED, CLASS_DIM, MARGIN, SAMPLES_EACH_CLASS, SHUFFLED, TRIPLETS, ClassifierLoss, Loss,
                   check_class_balanced_batch, check_labels)
from .circleloss import CircleLoss
from .contrastiveloss import ContrastiveLoss
from .cosfaceloss import CosFaceLoss
from .emlloss import EmlLoss
from .miners import MINER, MINERS, NO_MINER
from .multisimilarityloss import MultiSimilarityLoss
from .npairsloss import NpairsLoss
from .proxyanchorloss import ProxyAnchorLoss
from .quadrupletloss import QuadrupletLoss
from .softmaxloss import SoftmaxLoss
from .tripletloss import TripletLoss, check_triplet_batch
from .xbm import XBM_SIZE, CrossBatchMemory

LOSSES = {loss.name: loss for loss in (
    SoftmaxLoss,
    ArcMarginLoss,
    CosFaceLoss,
    ProxyAnchorLoss,
    TripletLoss,
    QuadrupletLoss,
    EmlLoss,
    NpairsLoss,
    MultiSimilarityLoss,
    ContrastiveLoss,
    CircleLoss,
)}

# Flags that switch a method on (a memory, a miner): given to a loss without them, they would be ignored silently.
SWITCHES = (XBM_SIZE, MINER)


def names(has_classifier):
    """The registered losses with (train_elem.py) or without (train_pair.py) a classifier head, in registry order."""
    return [name for name, loss in LOSSES.items() if loss.has_classifier == has_classifier]


def add_arguments(parser, has_classifier):
    """Adds the flags of those losses to `parser` (a flag several losses share, once)."""
    for name in names(has_classifier):
        LOSSES[name].add_arguments(parser)


def from_flags(args, batch_size):
    """The --loss_name loss built from the parsed flags, for batches of `batch_size` images (one process's share).

    Raises ValueError naming the flag when the flags do not fit together, or switch on what the loss does not have.
    """
    loss_class = LOSSES[args.loss_name]
    for switch in SWITCHES:
        value = getattr(args, switch.name, switch.default)
        if value != switch.default and switch not in loss_class.flags:
            users = [name for name, other in LOSSES.items() if switch in other.flags]
            raise ValueError("--%s=%s: not a flag of the %s loss; it works with %s"
                             % (switch.name, value, args.loss_name, ", ".join(users)))
    return loss_class.from_flags(args, batch_size)


__all__ = ["Loss", "ClassifierLoss", "LOSSES", "names", "add_arguments", "from_flags", "SoftmaxLoss", "ArcMarginLoss",
           "CosFaceLoss", "ProxyAnchorLoss", "TripletLoss", "QuadrupletLoss", "EmlLoss", "NpairsLoss",
           "MultiSimilarityLoss", "ContrastiveLoss", "CircleLoss", "CrossBatchMemory", "MINER", "MINERS", "NO_MINER",
           "XBM_SIZE", "SHUFFLED", "TRIPLETS", "CLASS_BALANCED", "CLASS_DIM", "SAMPLES_EACH_CLASS", "MARGIN",
           "check_labels", "check_class_balanced_batch", "check_triplet_batch"]
