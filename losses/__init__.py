"""Metric-learning losses: two classification losses for training, four pair-based ones for fine-tuning."""
from .arcmarginloss import ArcMarginLoss
from .commonfunc import check_class_balanced_batch, check_labels
from .emlloss import EmlLoss
from .npairsloss import NpairsLoss
from .quadrupletloss import QuadrupletLoss
from .softmaxloss import SoftmaxLoss
from .tripletloss import TripletLoss, check_triplet_batch

LOSSES = {
    "softmax": SoftmaxLoss,
    "arcmargin": ArcMarginLoss,
    "triplet": TripletLoss,
    "quadruplet": QuadrupletLoss,
    "eml": EmlLoss,
    "npairs": NpairsLoss,
}
ELEM_LOSSES = ("softmax", "arcmargin")  # per-image losses with a classifier head: train_elem
PAIR_LOSSES = ("triplet", "quadruplet", "eml", "npairs")  # losses on relations inside a batch: train_pair

__all__ = ["SoftmaxLoss", "ArcMarginLoss", "TripletLoss", "QuadrupletLoss", "EmlLoss", "NpairsLoss", "LOSSES",
           "ELEM_LOSSES", "PAIR_LOSSES", "check_labels", "check_class_balanced_batch", "check_triplet_batch"]
