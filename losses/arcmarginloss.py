"""ArcFace additive angular margin loss (Deng et al., https://arxiv.org/abs/1801.07698)."""
import math

import paddle
import paddle.nn.functional as F

from utility import Flag, positive
from .base import CLASS_DIM, ClassifierLoss
from .commonfunc import class_cosines, flatten_labels, softmax_cross_entropy


def _angle(value):
    return None if 0 <= value < math.pi / 2 else "must be an angle in [0, pi/2) radians, got %s" % value


ARC_SCALE = Flag("arc_scale", float, 80.0, "arcmargin: logit scale s.", positive)
ARC_MARGIN = Flag("arc_margin", float, 0.15, "arcmargin: angular margin m in radians.", _angle)
ARC_EASY_MARGIN = Flag("arc_easy_margin", bool, False, "arcmargin: apply the margin only where the cosine is positive.")


class ArcMarginLoss(ClassifierLoss):
    """Softmax cross-entropy on scaled cosines, with an angular margin added to the target class.

    cos_ij = <x_i/|x_i|, w_j/|w_j|> with class weights W [class_dim, D] (Xavier-uniform initialised);
    sin_ij = sqrt(1 - cos_ij^2 + 1e-6); phi_ij = cos(theta_ij + m) = cos_ij cos(m) - sin_ij sin(m).
    Beyond theta = pi - m, cos(theta + m) would stop decreasing, so phi is replaced there:
        easy_margin:  phi where cos > 0, else cos;
        otherwise:    phi where cos > cos(pi - m), else cos - sin(pi - m) m.
    logits_ij = s (phi_ij if j == y_i else cos_ij); loss_i = -log softmax(logits_i)[y_i].

    Args:
        class_dim: number of classes.
        margin: m, the angular margin in radians.
        scale: s, the logit scale.
        easy_margin: apply the margin only where cos > 0.

    `loss(input, label)` returns `(per_sample_loss [N, 1], probabilities [N, class_dim])`.
    The class weights are the parameter `arcmargin_weight_norm`.
    """

    name = "arcmargin"
    flags = (CLASS_DIM, ARC_SCALE, ARC_MARGIN, ARC_EASY_MARGIN)

    def __init__(self, class_dim, margin=0.15, scale=80.0, easy_margin=False):
        self.class_dim = class_dim
        self.margin = margin
        self.scale = scale
        self.easy_margin = easy_margin

    @classmethod
    def from_flags(cls, args, batch_size):
        return cls(class_dim=args.class_dim, margin=args.arc_margin, scale=args.arc_scale,
                   easy_margin=args.arc_easy_margin)

    def loss(self, input, label):
        cosine = class_cosines(input, self.class_dim, "arcmargin_weight_norm")
        sine = paddle.sqrt(1.0 - paddle.square(cosine) + 1e-6)
        phi = cosine * math.cos(self.margin) - sine * math.sin(self.margin)
        if self.easy_margin:
            phi = paddle.where(cosine > 0, phi, cosine)
        else:
            phi = paddle.where(cosine > math.cos(math.pi - self.margin), phi,
                               cosine - math.sin(math.pi - self.margin) * self.margin)
        is_target = F.one_hot(flatten_labels(label), self.class_dim).astype("bool")
        logits = self.scale * paddle.where(is_target, phi, cosine)
        return softmax_cross_entropy(logits, label)
