"""CosFace / AM-Softmax, the large margin cosine loss (Wang et al., CVPR 2018, https://arxiv.org/abs/1801.09414)."""
import paddle.nn.functional as F

from utility import Flag, non_negative, positive
from .base import CLASS_DIM, ClassifierLoss
from .commonfunc import class_cosines, flatten_labels, softmax_cross_entropy

COS_SCALE = Flag("cos_scale", float, 64.0, "cosface: logit scale s (the CosFace paper's 64).", positive)
COS_MARGIN = Flag("cos_margin", float, 0.35, "cosface: cosine margin m subtracted from the target class's cosine "
                  "(the CosFace paper's 0.35).", non_negative)


class CosFaceLoss(ClassifierLoss):
    """Softmax cross-entropy on scaled cosines, with a margin subtracted from the target class's cosine.

    cos_ij = <x_i/|x_i|, w_j/|w_j|> with class weights W [class_dim, D] (Xavier-uniform initialised, as arcmargin's);
    logits_ij = s (cos_ij - m [j == y_i]); loss_i = -log softmax(logits_i)[y_i].
    Defaults are the CosFace paper's (s 64, m 0.35), as in pytorch-metric-learning; AM-Softmax (Wang et al., 2018)
    is the same loss with s 30.

    Args:
        class_dim: number of classes.
        margin: m.
        scale: s.

    `loss(input, label)` returns `(per_sample_loss [N, 1], probabilities [N, class_dim])`, the probabilities of the
    logits with the margin. The class weights are the parameter `cosface_weight_norm`.
    """

    name = "cosface"
    flags = (CLASS_DIM, COS_SCALE, COS_MARGIN)

    def __init__(self, class_dim, margin=0.35, scale=64.0):
        self.class_dim = class_dim
        self.margin = margin
        self.scale = scale

    @classmethod
    def from_flags(cls, args, batch_size):
        return cls(class_dim=args.class_dim, margin=args.cos_margin, scale=args.cos_scale)

    def loss(self, input, label):
        cosine = class_cosines(input, self.class_dim, "cosface_weight_norm")
        target = F.one_hot(flatten_labels(label), self.class_dim).astype(cosine.dtype)
        return softmax_cross_entropy(self.scale * (cosine - self.margin * target), label)
