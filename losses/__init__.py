"""Metric-learning losses: two classification losses for training, five pair-based ones for fine-tuning."""
from .arcmarginloss import ArcMarginLoss
from .commonfunc import check_class_balanced_batch, check_labels
from .emlloss import EmlLoss
from .multisimilarityloss import MultiSimilarityLoss
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
    "multisimilarity": MultiSimilarityLoss,
}
ELEM_LOSSES = ("softmax", "arcmargin")  # per-image losses with a classifier head: train_elem
# Losses on relations inside a batch: train_pair. The first four are the original's.
PAIR_LOSSES = ("triplet", "quadruplet", "eml", "npairs", "multisimilarity")

__all__ = ["SoftmaxLoss", "ArcMarginLoss", "TripletLoss", "QuadrupletLoss", "EmlLoss", "NpairsLoss",
           "MultiSimilarityLoss", "LOSSES", "ELEM_LOSSES", "PAIR_LOSSES", "check_labels", "check_class_balanced_batch",
           "check_triplet_batch"]
