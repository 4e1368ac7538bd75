"""Metric-learning losses, selectable by name (``--loss_name=eml``).

Each loss is one file and one class implementing `base.Loss`; `LOSSES` maps its name to it. train_elem.py offers the
losses with a classifier head, train_pair.py the others. Adding a loss: its file, one line below, its tests and its
row in the loss table of docs/training.md.
"""
import core  # noqa: F401  (thread counts set before paddle is imported)

from .arcmarginloss import ArcMarginLoss
from .base import (CLASS_BALANCED, CLASS_DIM, MARGIN, SAMPLES_EACH_CLASS, SHUFFLED, TRIPLETS, ClassifierLoss, Loss,
                   check_class_balanced_batch, check_labels)
from .emlloss import EmlLoss
from .multisimilarityloss import MultiSimilarityLoss
from .npairsloss import NpairsLoss
from .quadrupletloss import QuadrupletLoss
from .softmaxloss import SoftmaxLoss
from .tripletloss import TripletLoss, check_triplet_batch

LOSSES = {loss.name: loss for loss in (
    SoftmaxLoss,
    ArcMarginLoss,
    TripletLoss,
    QuadrupletLoss,
    EmlLoss,
    NpairsLoss,
    MultiSimilarityLoss,
)}


def names(has_classifier):
    """The registered losses with (train_elem.py) or without (train_pair.py) a classifier head, in registry order."""
    return [name for name, loss in LOSSES.items() if loss.has_classifier == has_classifier]


def add_arguments(parser, has_classifier):
    """Adds the flags of those losses to `parser` (a flag several losses share, once)."""
    for name in names(has_classifier):
        LOSSES[name].add_arguments(parser)


__all__ = ["Loss", "ClassifierLoss", "LOSSES", "names", "add_arguments", "SoftmaxLoss", "ArcMarginLoss", "TripletLoss", "QuadrupletLoss",
           "EmlLoss", "NpairsLoss", "MultiSimilarityLoss", "SHUFFLED", "TRIPLETS", "CLASS_BALANCED", "CLASS_DIM", "SAMPLES_EACH_CLASS", "MARGIN",
           "check_labels", "check_class_balanced_batch", "check_triplet_batch"]
