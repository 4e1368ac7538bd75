"""Math the losses share: normalisation, distances, label masks, masked reductions, cross-entropy.

Everything here builds static-graph ops: call it inside `paddle.static.program_guard`.
Ops run in the dtype of their input, so the same loss code builds a float32 training graph or a float64 test graph.
"""
import paddle
import paddle.nn.functional as F

# Stands in for +/-infinity in masked min/max and masked logits: finite, so `inf - inf` can never make a NaN,
# and far beyond any squared distance or similarity the losses meet.
LARGE = 1e12


def filled_like(x, value):
    """A tensor of x's run-time shape and dtype holding `value` (paddle.full_like warns under PIR)."""
    return paddle.full(paddle.shape(x), value, x.dtype)


def constant(x):
    """A copy of `x` that the gradient treats as a constant.

    Not `x.detach()`: in Paddle 3.3.1's static graphs the detached value shares `x`'s memory and the in-place pass
    then lets later ops write into it (measured: circle loss's weights came out wrong by hundreds).
    """
    copy = paddle.assign(x)
    copy.stop_gradient = True
    return copy


def flatten_labels(label):
    """Labels as a 1-D tensor [N]; accepts the original's [N, 1] as well as [N]."""
    return paddle.reshape(label, [-1])


def l2_normalize(x):
    """Scales each row of `x` [N, D] to unit length (an all-zero row stays zero instead of becoming NaN)."""
    squared_norm = paddle.sum(paddle.square(x), axis=1, keepdim=True)
    return x * paddle.rsqrt(paddle.clip(squared_norm, min=1e-12))


def class_cosines(input, class_dim, weight_name):
    """Cosine similarities [N, class_dim] of the embeddings with the rows of a class-weight parameter `weight_name`
    [class_dim, D] (Xavier-initialised): the logits of the margin classifiers before their margin and scale."""
    weight = paddle.static.create_parameter(shape=[class_dim, input.shape[1]], dtype=input.dtype,
                                            attr=paddle.ParamAttr(name=weight_name,
                                                                  initializer=paddle.nn.initializer.XavierUniform()))
    return paddle.matmul(l2_normalize(input), l2_normalize(weight), transpose_y=True)


def pairwise_squared_distance(x):
    """Squared Euclidean distances [N, N]: |xi|^2 + |xj|^2 - 2 xi.xj, clamped at 0 against rounding."""
    squared_norm = paddle.sum(paddle.square(x), axis=1, keepdim=True)
    distance = squared_norm + paddle.t(squared_norm) - 2.0 * paddle.matmul(x, x, transpose_y=True)
    return paddle.clip(distance, min=0.0)


def unit_squared_distance(x, y):
    """Squared Euclidean distances [N, M] between L2-normalised rows: |xi - yj|^2 = 2 - 2 xi.yj, clamped at 0.

    One product, where the general form |xi|^2 + |yj|^2 - 2 xi.yj would also reduce |yj|^2 over a memory of thousands
    of rows."""
    return paddle.clip(2.0 - 2.0 * paddle.matmul(x, y, transpose_y=True), min=0.0)


def batch_positions(label):
    """Positions 0..N-1 of the items in the batch; N is read at run time, so any batch size works."""
    return paddle.arange(paddle.shape(flatten_labels(label))[0])


def self_mask(label):
    """Boolean [N, N], true on the diagonal."""
    position = batch_positions(label)
    return position.unsqueeze(1) == position.unsqueeze(0)


def same_label_mask(label, reference_label=None):
    """Boolean [N, M]: item i and reference j (default: item j of the batch, i == j included) have the same label."""
    labels = flatten_labels(label)
    references = labels if reference_label is None else flatten_labels(reference_label)
    return labels.unsqueeze(1) == references.unsqueeze(0)


def positive_mask(label):
    """Boolean [N, N]: j is a positive of anchor i (same label, j != i)."""
    return same_label_mask(label) & ~self_mask(label)


def negative_mask(label):
    """Boolean [N, N]: j is a negative of anchor i (different label)."""
    return ~same_label_mask(label)


def masked_max(x, mask, axis=None, keepdim=False):
    """Max of `x` over the entries where `mask` holds; -LARGE where nothing is selected."""
    return _masked_extreme(paddle.where(mask, x, filled_like(x, -LARGE)), axis, keepdim, paddle.max, paddle.argmax)


def masked_min(x, mask, axis=None, keepdim=False):
    """Min of `x` over the entries where `mask` holds; +LARGE where nothing is selected."""
    return _masked_extreme(paddle.where(mask, x, filled_like(x, LARGE)), axis, keepdim, paddle.min, paddle.argmin)


def _masked_extreme(padded, axis, keepdim, reduce, arg_reduce):
    """Along an axis, the extreme is gathered at its index: the same value, and its gradient is a scatter, where
    Paddle 3.3.1's own max/min gradient on CPU takes seconds for a [30, 8192] matrix (measured: 2-3 s, against
    ~1 ms). The gradient goes to one of tied extremes instead of being shared among them."""
    if axis is None:
        return reduce(padded, keepdim=keepdim)
    extreme = paddle.take_along_axis(padded, arg_reduce(padded, axis=axis, keepdim=True), axis=axis)
    return extreme if keepdim else paddle.squeeze(extreme, axis=axis)


def masked_mean(x, mask, axis=None, keepdim=False):
    """Mean of `x` over the entries where `mask` holds; 0 where nothing is selected.

    `x` must be finite everywhere: masked-out entries are multiplied by 0, and 0 * inf would be NaN.
    """
    weight = mask.astype(x.dtype)
    count = paddle.sum(weight, axis=axis, keepdim=keepdim)
    return paddle.sum(x * weight, axis=axis, keepdim=keepdim) / paddle.clip(count, min=1.0)


def log_one_plus_sum_exp(exponent, mask):
    """log(1 + sum over the masked entries of exp(exponent)) per row, [N, 1]; 0 for a row with nothing masked.

    A logsumexp with a column of zeros standing for the 1, so that large exponents cannot overflow.
    """
    exponent = paddle.where(mask, exponent, filled_like(exponent, -LARGE))
    one = paddle.zeros_like(exponent[:, :1])
    return paddle.logsumexp(paddle.concat([one, exponent], axis=1), axis=1, keepdim=True)


def log_softmax(logits):
    """Row-wise log-softmax as logits - logsumexp(logits): finite for any finite logits.

    Not F.log_softmax or F.cross_entropy: on CPU, Paddle 3.3.1 clamps their log-probabilities at -64, so a
    sample whose target logit is 100 below another would report a loss of 64 instead of 100.
    """
    return logits - paddle.logsumexp(logits, axis=1, keepdim=True)


def softmax_cross_entropy(logits, label):
    """Per-sample cross-entropy [N, 1] and probabilities [N, C] of `logits` [N, C].

    Computed from the log-softmax, so a confident wrong class gives its large finite loss, never log(0).
    A label outside [0, C) makes Paddle's one_hot raise at run time; `base.check_labels` checks a data set early.
    """
    target = F.one_hot(flatten_labels(label), logits.shape[1]).astype(logits.dtype)
    per_sample_loss = -paddle.sum(target * log_softmax(logits), axis=1, keepdim=True)
    return per_sample_loss, F.softmax(logits, axis=1)
