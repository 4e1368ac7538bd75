"""ResNet18/34/50/101/152 backbones for metric learning, built as static Paddle programs.

The network ends at global average pooling (no ImageNet classifier); ``net(..., embedding_size=E)`` adds one fully
connected embedding layer on top. Layers are ``paddle.nn`` objects created inside the caller's
``paddle.static.program_guard``; every parameter and batch-norm statistic gets an explicit name, so building the
network in a train program and again in a test program yields the same names and the two share weights through the
scope.

Parameter names follow the Caffe-derived scheme of the original suite (``metric_learning/models/resnet_embedding.py``
in PaddlePaddle/models) and of PaddleClas's ``ppcls/modeling/architectures/resnet.py`` (which adds the 18/34 basic
blocks), so published ImageNet weights load by name:

- stem: ``conv1_weights``; its batch norm ``bn_conv1_scale``, ``bn_conv1_offset``, ``bn_conv1_mean``,
  ``bn_conv1_variance``;
- block ``b`` of stage ``s`` (``s`` = 2..5) is ``res<s><letter>``: ``res2a``, ``res2b``, ...; in stage 4 of
  ResNet101/152 it is ``res4a``, ``res4b1``, ``res4b2``, ... (up to ``res4b22`` / ``res4b35``);
- inside a block, convs ``<block>_branch2a``, ``_branch2b`` (and ``_branch2c`` for bottlenecks), projection shortcut
  ``<block>_branch1``; each conv ``X`` has ``X_weights`` and its batch norm replaces the leading ``res`` by ``bn``
  (``res2a_branch2a_weights`` -> ``bn2a_branch2a_scale`` / ``_offset`` / ``_mean`` / ``_variance``);
- embedding layer: ``embedding_fc_weights``, ``embedding_fc_offset``.

Batch norm: epsilon 1e-5, momentum 0.9 (the Fluid defaults). ``net(..., is_test=True)`` makes it use the moving
averages; calling ``program.set_is_test_attr()`` on a program built with ``is_test=False`` has the same effect.

``net(..., data_format="NHWC")`` keeps the activations channels-last from the first convolution on (the input stays
an NCHW image, transposed once): the same network with the same parameters, names and shapes (convolution weights
stay OIHW), only the activations' memory order differs. Training on oneDNN uses it (onednn.py): oneDNN's forward
convolutions read and write channels-last, so batch norm, relu and pooling then need no layout conversion.
"""
import paddle
from paddle import ParamAttr, nn

from core import cpu_ops

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9

# Stage widths before the bottleneck expansion, shared by every depth.
STAGE_WIDTHS = (64, 128, 256, 512)
BOTTLENECK_EXPANSION = 4

DATA_FORMATS = ("NCHW", "NHWC")

# depth -> (blocks per stage, uses bottleneck blocks)
RESNET_DEPTHS = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}


def channels(x, data_format="NCHW"):
    """The channel count of a 4-D activation in `data_format`."""
    return x.shape[3] if data_format == "NHWC" else x.shape[1]


def to_data_format(image, data_format):
    """The network's input, an NCHW image batch, in the activations' `data_format`."""
    if data_format not in DATA_FORMATS:
        raise ValueError("data_format must be one of %s, got %r" % (", ".join(DATA_FORMATS), data_format))
    return paddle.transpose(image, [0, 2, 3, 1]) if data_format == "NHWC" else image


def conv_bn_layer(x, num_filters, filter_size, conv_name, bn_name, stride=1, groups=1, relu=False, is_test=False,
                  data_format="NCHW", shortcut=None):
    """Bias-free convolution (``<conv_name>_weights``) followed by batch norm named ``bn_name``; optional relu.

    Padding keeps the spatial size for stride 1. ``is_test`` puts the batch norm in inference mode (moving averages).
    ``x`` and the result are in ``data_format``; the weights are OIHW in either. The batch norm and relu are built
    by ``core.cpu_ops.batch_norm``: the suite's multithreaded kernels in a oneDNN training program, else Paddle's.
    With ``shortcut``, a function that builds a residual block's shortcut, the layer ends the block:
    relu(batch norm + shortcut()), built by ``core.cpu_ops.batch_norm_add_relu``. The shortcut is built after this
    layer's parameters, where the original builds it, so that a seeded run starts from the same weights.
    """
    conv = nn.Conv2D(
        channels(x, data_format), num_filters, filter_size, stride=stride, padding=(filter_size - 1) // 2,
        groups=groups, weight_attr=ParamAttr(name=conv_name + "_weights"), bias_attr=False, data_format=data_format)
    # BatchNorm2D's `name` is what names the running statistics <bn_name>_mean / <bn_name>_variance.
    batch_norm = nn.BatchNorm2D(
        num_filters, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
        weight_attr=ParamAttr(name=bn_name + "_scale"), bias_attr=ParamAttr(name=bn_name + "_offset"),
        name=bn_name, data_format=data_format)
    if is_test:
        batch_norm.eval()
    y = _train_convolution(conv, x, filter_size, stride, groups, data_format) if not is_test else conv(x)
    if y.dtype == paddle.bfloat16 and not paddle.is_compiled_with_cuda():
        # bfloat16 AMP runs the conv in bfloat16, but CPU builds of Paddle 3.3.1 have no bfloat16 batch norm.
        y = y.astype("float32")
    if shortcut is not None:
        return cpu_ops.batch_norm_add_relu(batch_norm, y, shortcut())
    return cpu_ops.batch_norm(batch_norm, y, relu)


def _train_convolution(conv, x, filter_size, stride, groups, data_format):
    """`conv(x)` through ``core.cpu_ops.conv2d``: the suite's own kernel for few-pixel outputs in a oneDNN training
    program, else Paddle's; with the centre tap alone when `x` is 1x1: a "same"-padded kxk convolution of a 1x1
    activation multiplies every other tap by padding, so the result and all gradients are the same (zero for the other
    taps). oneDNN's AVX2 kernels cannot take the weight gradient of such a convolution but through im2col and a GEMM
    nine times its size: ResNet18's last stage at 3x32x32 (the demo's and the tests' input) then cost 200 ms of a
    570 ms step on an AVX2 CPU. Training programs only: feature programs, and so exported models, keep the plain
    conv."""
    height, width = x.shape[1:3] if data_format == "NHWC" else x.shape[2:4]
    weight, padding = conv.weight, (filter_size - 1) // 2
    if filter_size != 1 and (height, width) == (1, 1):
        centre = filter_size // 2
        weight, padding = weight[:, :, centre:centre + 1, centre:centre + 1], 0
    return cpu_ops.conv2d(x, weight, stride, padding, groups, data_format)


def global_pool_and_embed(x, embedding_size, data_format="NCHW"):
    """Adaptive global average pooling to [N, C]; with ``embedding_size > 0`` a fully connected layer on top."""
    pooled = paddle.flatten(nn.AdaptiveAvgPool2D(1, data_format=data_format)(x), start_axis=1)
    if embedding_size <= 0:
        return pooled
    # Xavier-uniform weights and zero bias: the defaults of the Fluid fc layer the original used here.
    fc = nn.Linear(
        pooled.shape[1], embedding_size,
        weight_attr=ParamAttr(name="embedding_fc_weights", initializer=nn.initializer.XavierUniform()),
        bias_attr=ParamAttr(name="embedding_fc_offset", initializer=nn.initializer.Constant(0.0)))
    return fc(pooled)


def _resnet_bn_name(conv_name):
    """Batch-norm name for a conv: ``conv1`` -> ``bn_conv1``, ``res2a_branch2a`` -> ``bn2a_branch2a``."""
    return "bn_" + conv_name if conv_name == "conv1" else "bn" + conv_name[len("res"):]


def _resnet_conv_bn(x, num_filters, filter_size, name, stride=1, relu=False, is_test=False, data_format="NCHW",
                    shortcut=None):
    """``conv_bn_layer`` with the batch norm named after the conv, ResNet style."""
    return conv_bn_layer(x, num_filters, filter_size, name, _resnet_bn_name(name), stride=stride, relu=relu,
                         is_test=is_test, data_format=data_format, shortcut=shortcut)


def _shortcut(x, num_filters, stride, name, is_test, data_format):
    """Identity when shapes match, else a strided 1x1 projection ``<name>_branch1``."""
    if channels(x, data_format) == num_filters and stride == 1:
        return x
    return _resnet_conv_bn(x, num_filters, 1, name + "_branch1", stride=stride, is_test=is_test,
                           data_format=data_format)


def basic_block(x, width, stride, name, is_test, data_format="NCHW"):
    """Two 3x3 convs (ResNet18/34); the first one strides."""
    y = _resnet_conv_bn(x, width, 3, name + "_branch2a", stride=stride, relu=True, is_test=is_test,
                        data_format=data_format)
    return _resnet_conv_bn(y, width, 3, name + "_branch2b", is_test=is_test, data_format=data_format,
                           shortcut=lambda: _shortcut(x, width, stride, name, is_test, data_format))


def bottleneck_block(x, width, stride, name, is_test, data_format="NCHW"):
    """1x1 reduce, 3x3 (strided, as in the original), 1x1 expand by 4 (ResNet50/101/152)."""
    out_channels = width * BOTTLENECK_EXPANSION
    y = _resnet_conv_bn(x, width, 1, name + "_branch2a", relu=True, is_test=is_test, data_format=data_format)
    y = _resnet_conv_bn(y, width, 3, name + "_branch2b", stride=stride, relu=True, is_test=is_test,
                        data_format=data_format)
    return _resnet_conv_bn(y, out_channels, 1, name + "_branch2c", is_test=is_test, data_format=data_format,
                           shortcut=lambda: _shortcut(x, out_channels, stride, name, is_test, data_format))


def resnet_block_name(layers, stage, block_index):
    """Caffe-style block name: ``res<stage><a|b|c...>``, but ``res4a, res4b1, res4b2, ...`` in ResNet101/152."""
    if layers >= 101 and stage == 4 and block_index > 0:
        return "res4b%d" % block_index
    return "res%d%s" % (stage, chr(ord("a") + block_index))


class ResNet:
    """ResNet backbone of a given depth (18, 34, 50, 101 or 152) that builds into the current static program."""

    def __init__(self, layers=50):
        if layers not in RESNET_DEPTHS:
            raise ValueError("ResNet depth must be one of %s, got %r" % (sorted(RESNET_DEPTHS), layers))
        self.layers = layers

    def net(self, input, embedding_size=0, is_test=False, data_format="NCHW"):
        """Build the network on ``input`` (float32 NCHW) and return the feature.

        Returns [N, 512] (ResNet18/34) or [N, 2048] (deeper) pooled features, or [N, embedding_size] when
        ``embedding_size > 0``. ``is_test=True`` makes batch norm use its moving averages. ``data_format`` is the
        activations' layout (the input is NCHW either way).
        """
        blocks_per_stage, use_bottleneck = RESNET_DEPTHS[self.layers]
        block_fn = bottleneck_block if use_bottleneck else basic_block

        x = to_data_format(input, data_format)
        x = _resnet_conv_bn(x, 64, 7, "conv1", stride=2, relu=True, is_test=is_test, data_format=data_format)
        x = nn.MaxPool2D(kernel_size=3, stride=2, padding=1, data_format=data_format)(x)
        # Stages are numbered 2..5 after the stem ("conv1"); every stage but the first halves the resolution.
        for stage_index, (num_blocks, width) in enumerate(zip(blocks_per_stage, STAGE_WIDTHS)):
            stage = stage_index + 2
            for block_index in range(num_blocks):
                stride = 2 if block_index == 0 and stage_index > 0 else 1
                x = block_fn(x, width, stride, resnet_block_name(self.layers, stage, block_index), is_test,
                             data_format)
        return global_pool_and_embed(x, embedding_size, data_format)


def ResNet18():
    return ResNet(layers=18)


def ResNet34():
    return ResNet(layers=34)


def ResNet50():
    return ResNet(layers=50)


def ResNet101():
    return ResNet(layers=101)


def ResNet152():
    return ResNet(layers=152)
