"""Proxy-Anchor loss (Kim et al., CVPR 2020, https://arxiv.org/abs/2003.13911)."""
import paddle
import paddle.nn.functional as F

from utility import Flag, positive
from .base import CLASS_DIM, ClassifierLoss
from .commonfunc import flatten_labels, l2_normalize, log_one_plus_sum_exp

PROXY_FLAGS = (
    Flag("proxy_alpha", float, 32.0, "proxyanchor: scale alpha (the paper's 32).", positive),
    Flag("proxy_margin", float, 0.1, "proxyanchor: margin delta (the paper's 0.1)."),
    Flag("proxy_lr_mult", float, 100.0, "proxyanchor: the proxies' learning rate as a multiple of --lr (the paper's "
         "100).", positive),
)


class ProxyAnchorLoss(ClassifierLoss):
    """Each class's proxy is an anchor that pulls the batch's images of its class and pushes the others.

    With one proxy p per class (the parameter `proxyanchor_proxies` [class_dim, D]), s(x, p) the cosine similarity
    of embedding x and proxy p, X_p+ the batch's images of class p, X_p- the others, P+ the proxies with an image in
    the batch and P all class_dim proxies:
        loss = 1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - delta)))
             + 1/|P|  sum_{p in P}  log(1 + sum_{x in X_p-} exp( alpha (s(x, p) + delta))).
    The proxies start as the paper's code sets them (Kaiming normal over the class_dim fan: std sqrt(2 / class_dim))
    and learn at `lr_mult` times the network's rate (through their ParamAttr, which scales their whole update,
    weight decay included: the paper's AdamW also decays the proxies at their own rate).

    Args:
        class_dim: number of classes (proxies).
        alpha, delta: scale and margin (the paper's 32 and 0.1).
        lr_mult: the proxies' learning-rate multiplier (the paper's 100).

    `loss(input, label)` returns `(loss, probabilities [N, class_dim])`: the loss is one scalar for the batch, a sum
    over proxies rather than over images, and the probabilities are softmax(alpha s(x, p)) over the proxies, so the
    logged acc1/acc5 are those of the nearest proxy.
    """

    name = "proxyanchor"
    flags = (CLASS_DIM,) + PROXY_FLAGS

    def __init__(self, class_dim, alpha=32.0, delta=0.1, lr_mult=100.0):
        self.class_dim = class_dim
        self.alpha, self.delta, self.lr_mult = alpha, delta, lr_mult

    @classmethod
    def from_flags(cls, args, batch_size):
        return cls(class_dim=args.class_dim, alpha=args.proxy_alpha, delta=args.proxy_margin,
                   lr_mult=args.proxy_lr_mult)

    def loss(self, input, label):
        proxies = paddle.static.create_parameter(
            shape=[self.class_dim, input.shape[1]],
            dtype=input.dtype,
            attr=paddle.ParamAttr(name="proxyanchor_proxies", learning_rate=self.lr_mult,
                                  initializer=paddle.nn.initializer.KaimingNormal(fan_in=self.class_dim)))
        # Proxies in rows: [class_dim, N].
        similarity = paddle.matmul(l2_normalize(proxies), l2_normalize(input), transpose_y=True)
        is_class = paddle.t(F.one_hot(flatten_labels(label), self.class_dim).astype("bool"))
        positive_terms = log_one_plus_sum_exp(-self.alpha * (similarity - self.delta), is_class)
        negative_terms = log_one_plus_sum_exp(self.alpha * (similarity + self.delta), ~is_class)
        with_positives = paddle.sum(paddle.any(is_class, axis=1).astype(input.dtype))
        loss = (paddle.sum(positive_terms) / paddle.clip(with_positives, min=1.0)
                + paddle.sum(negative_terms) / self.class_dim)
        return loss, F.softmax(self.alpha * paddle.t(similarity), axis=1)
