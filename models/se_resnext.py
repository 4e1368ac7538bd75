"""SE-ResNeXt50_32x4d / 101_32x4d / 152_64x4d backbones for metric learning, built as static Paddle programs.

Same skeleton as ``models.resnet`` (stem, four stages, global average pooling, optional embedding layer) with a
different block: 1x1 reduce, grouped 3x3 (``cardinality`` groups), 1x1 expand by 2, then squeeze-and-excitation
(global pool, fc to channels/16 + relu, fc back + sigmoid, channel-wise rescale) before the residual add.

Architecture and parameter names follow the static-graph SE_ResNeXt of PaddleClas
(``ppcls/modeling/architectures/se_resnext.py`` at commit 9f39da8859503425d275f33a298185ae279c4e0f, the same code
as PaddlePaddle/models ``PaddleCV/image_classification/models/se_resnext.py``), whose ImageNet weights were published
for this suite:

- stem of 50/101: ``conv1`` (7x7/2, 64); stem of 152: ``conv1`` (3x3/2, 64), ``conv2`` (3x3, 64),
  ``conv3`` (3x3, 128); then 3x3/2 max pooling;
- stages are numbered after the stem convs: 2..5 for 50/101, 4..7 for 152 (``conv2``/``conv3`` are taken);
  block ``i`` (from 1) of stage ``n`` is ``<n>_<i>``;
- block convs ``conv<n>_<i>_x1`` (1x1), ``_x2`` (grouped 3x3, strided), ``_x3`` (1x1), projection shortcut
  ``conv<n>_<i>_prj``; each conv ``X`` has ``X_weights`` and batch norm ``X_bn_scale`` / ``_offset`` / ``_mean`` /
  ``_variance``; stem conv ``conv1`` likewise (``conv1_weights``, ``conv1_bn_scale``, ...);
- squeeze-excitation: ``fc<n>_<i>_sqz_weights`` / ``_sqz_offset``, ``fc<n>_<i>_exc_weights`` / ``_exc_offset``;
- embedding layer: ``embedding_fc_weights``, ``embedding_fc_offset``.

Block widths are 128, 256, 512, 1024 (output twice that) for all three depths, as in that static code; for the 152
model that means 64 groups of 2 channels in the first stage. (PaddleClas's later dygraph rewrite widened the 152
blocks, so its weights do not fit this layout.)
"""
import math

import paddle
import paddle.nn.functional as F
from paddle import ParamAttr, nn

from .resnet import channels, conv_bn_layer, global_pool_and_embed, to_data_format

BLOCK_WIDTHS = (128, 256, 512, 1024)
BLOCK_EXPANSION = 2
SE_REDUCTION = 16

# depth -> (blocks per stage, cardinality, deep 3x3 stem)
SE_RESNEXT_DEPTHS = {
    50: ((3, 4, 6, 3), 32, False),
    101: ((3, 4, 23, 3), 32, False),
    152: ((3, 8, 36, 3), 64, True),
}


def _conv_bn(x, num_filters, filter_size, name, stride=1, groups=1, relu=False, is_test=False, data_format="NCHW"):
    return conv_bn_layer(x, num_filters, filter_size, name, name + "_bn", stride=stride, groups=groups, relu=relu,
                         is_test=is_test, data_format=data_format)


def _uniform_fc(in_features, out_features, name):
    """Linear layer ``<name>_weights`` / ``<name>_offset`` with U(-1/sqrt(in), 1/sqrt(in)) weights, as the original."""
    bound = 1.0 / math.sqrt(in_features)
    return nn.Linear(
        in_features, out_features,
        weight_attr=ParamAttr(name=name + "_weights", initializer=nn.initializer.Uniform(-bound, bound)),
        bias_attr=ParamAttr(name=name + "_offset"))


def squeeze_excitation(x, name, data_format="NCHW"):
    """Rescale each channel of ``x`` by a gate computed from its global average."""
    num_channels = channels(x, data_format)
    squeezed = paddle.flatten(nn.AdaptiveAvgPool2D(1, data_format=data_format)(x), start_axis=1)
    hidden = F.relu(_uniform_fc(num_channels, num_channels // SE_REDUCTION, name + "_sqz")(squeezed))
    gate = F.sigmoid(_uniform_fc(num_channels // SE_REDUCTION, num_channels, name + "_exc")(hidden))
    return x * paddle.unsqueeze(gate, axis=[1, 2] if data_format == "NHWC" else [2, 3])


def se_bottleneck_block(x, width, stride, cardinality, name, is_test, data_format="NCHW"):
    """ResNeXt bottleneck with squeeze-excitation; ``name`` is ``<stage>_<block>``."""
    out_channels = width * BLOCK_EXPANSION
    y = _conv_bn(x, width, 1, "conv%s_x1" % name, relu=True, is_test=is_test, data_format=data_format)
    y = _conv_bn(y, width, 3, "conv%s_x2" % name, stride=stride, groups=cardinality, relu=True, is_test=is_test,
                 data_format=data_format)
    y = _conv_bn(y, out_channels, 1, "conv%s_x3" % name, is_test=is_test, data_format=data_format)
    y = squeeze_excitation(y, "fc" + name, data_format)
    if channels(x, data_format) == out_channels and stride == 1:
        shortcut = x
    else:
        shortcut = _conv_bn(x, out_channels, 1, "conv%s_prj" % name, stride=stride, is_test=is_test,
                            data_format=data_format)
    return F.relu(shortcut + y)


class SE_ResNeXt:
    """SE-ResNeXt backbone of a given depth (50, 101 or 152) that builds into the current static program."""

    def __init__(self, layers=50):
        if layers not in SE_RESNEXT_DEPTHS:
            raise ValueError("SE_ResNeXt depth must be one of %s, got %r" % (sorted(SE_RESNEXT_DEPTHS), layers))
        self.layers = layers

    def net(self, input, embedding_size=0, is_test=False, data_format="NCHW"):
        """Build the network on ``input`` (float32 NCHW) and return the feature.

        Returns [N, 2048] pooled features, or [N, embedding_size] when ``embedding_size > 0``.
        ``is_test=True`` makes batch norm use its moving averages. ``data_format`` is the activations' layout (the
        input is NCHW either way).
        """
        blocks_per_stage, cardinality, deep_stem = SE_RESNEXT_DEPTHS[self.layers]
        x = to_data_format(input, data_format)
        if deep_stem:
            x = _conv_bn(x, 64, 3, "conv1", stride=2, relu=True, is_test=is_test, data_format=data_format)
            x = _conv_bn(x, 64, 3, "conv2", relu=True, is_test=is_test, data_format=data_format)
            x = _conv_bn(x, 128, 3, "conv3", relu=True, is_test=is_test, data_format=data_format)
            first_stage = 4
        else:
            x = _conv_bn(x, 64, 7, "conv1", stride=2, relu=True, is_test=is_test, data_format=data_format)
            first_stage = 2
        x = nn.MaxPool2D(kernel_size=3, stride=2, padding=1, data_format=data_format)(x)
        for stage_index, (num_blocks, width) in enumerate(zip(blocks_per_stage, BLOCK_WIDTHS)):
            for block_index in range(num_blocks):
                stride = 2 if block_index == 0 and stage_index > 0 else 1
                name = "%d_%d" % (first_stage + stage_index, block_index + 1)
                x = se_bottleneck_block(x, width, stride, cardinality, name, is_test, data_format)
        return global_pool_and_embed(x, embedding_size, data_format)


def SE_ResNeXt50_32x4d():
    return SE_ResNeXt(layers=50)


def SE_ResNeXt101_32x4d():
    return SE_ResNeXt(layers=101)


def SE_ResNeXt152_64x4d():
    return SE_ResNeXt(layers=152)
