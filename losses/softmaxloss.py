"""Softmax classification loss: a fully connected layer to the classes, then cross-entropy."""
import math

import paddle

from .base import CLASS_DIM, ClassifierLoss
from .commonfunc import softmax_cross_entropy


class SoftmaxLoss(ClassifierLoss):
    """Softmax cross-entropy over a linear classifier on the embedding.

    logits = x W + b, with W [D, class_dim] initialised uniform in [-1/sqrt(D), 1/sqrt(D)] and b at zero;
    loss_i = -log softmax(logits_i)[y_i].

    Args:
        class_dim: number of classes; every label must be below it.

    `loss(input, label)` takes `input` [N, D] and `label` int64 [N, 1] or [N], and returns
    `(per_sample_loss [N, 1], probabilities [N, class_dim])`. The parameters are named `softmax_fc_weights`
    and `softmax_fc_offset`, so programs built separately share them and checkpoints load by name.
    """

    name = "softmax"
    flags = (CLASS_DIM,)

    def __init__(self, class_dim):
        self.class_dim = class_dim

    @classmethod
    def from_flags(cls, args, batch_size):
        return cls(class_dim=args.class_dim)

    def loss(self, input, label):
        bound = 1.0 / math.sqrt(input.shape[1])
        logits = paddle.static.nn.fc(
            input,
            size=self.class_dim,
            weight_attr=paddle.ParamAttr(name="softmax_fc_weights",
                                         initializer=paddle.nn.initializer.Uniform(-bound, bound)),
            bias_attr=paddle.ParamAttr(name="softmax_fc_offset"))
        return softmax_cross_entropy(logits, label)
