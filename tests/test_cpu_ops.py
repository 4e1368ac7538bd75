"""cpu_ops.py: the suite's multithreaded batch norm (with its relu), Momentum update and few-pixel convolution compute
what Paddle's do, and take the place of Paddle's in the oneDNN training program only (their fallback without a compiler:
test_native_build.py)."""
import numpy as np
import paddle
import pytest
from paddle import ParamAttr, nn

import losses
import models
from core import cpu_ops, native_build, onednn, programs

EPSILON, MOMENTUM = 1e-5, 0.9
pytestmark = pytest.mark.skipif(cpu_ops.load() is None, reason="the suite's CPU kernels could not be built here")


def batch_norm_reference(x, scale, bias, w, relu, residual=None):
    """Float64 NumPy batch norm over all axes but the last, plus `residual` if given, relu, and the gradients of
    sum(y * w)."""
    x = x.reshape(-1, x.shape[-1]).astype(np.float64)
    w = w.reshape(x.shape).astype(np.float64)
    mean, var = x.mean(axis=0), x.var(axis=0)
    inv_std = 1 / np.sqrt(var + EPSILON)
    normalised = (x - mean) * inv_std
    y = scale * normalised + bias
    if residual is not None:
        y = y + residual.reshape(x.shape)
    g = w * (y > 0) if relu else w
    y = np.maximum(y, 0) if relu else y
    dx = scale * inv_std * (g - g.mean(axis=0) - normalised * (g * normalised).mean(axis=0))
    return {"y": y, "dx": dx, "dscale": (g * normalised).sum(axis=0), "dbias": g.sum(axis=0), "mean": mean, "var": var,
            "dresidual": g}


# How a batch norm ends: as is, with relu, or as a residual block does, relu(batch norm + residual).
ENDINGS = {"no_relu": "custom_op.batch_norm_relu_", "relu": "custom_op.batch_norm_relu_",
           "residual": "custom_op.batch_norm_add_relu_"}


def run_batch_norm(shape, ending, suite_kernels, runs=2):
    """y, the gradients and the running statistics after `runs` runs of one channels-last batch norm ending as
    `ending` says; with a residual, its gradient too ("dresidual")."""
    paddle.enable_static()
    rng = np.random.default_rng(0)
    x_value = (rng.standard_normal(shape) * 2 + 0.5).astype("float32")
    w_value = rng.standard_normal(shape).astype("float32")
    residual_value = rng.standard_normal(shape).astype("float32")
    program, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(program, startup), cpu_ops.used_for_training(suite_kernels):
        x = paddle.static.data("x", shape, "float32")
        residual = paddle.static.data("residual", shape, "float32")
        x.stop_gradient = residual.stop_gradient = False
        channels = shape[-1]
        layer = nn.BatchNorm2D(channels, momentum=MOMENTUM, epsilon=EPSILON, data_format="NHWC",
                               weight_attr=ParamAttr(initializer=nn.initializer.Assign(1 + rng.random(channels))),
                               bias_attr=ParamAttr(initializer=nn.initializer.Assign(rng.random(channels) - 0.5)))
        if ending == "residual":
            y = cpu_ops.batch_norm_add_relu(layer, x, residual)
        else:
            y = cpu_ops.batch_norm(layer, x, ending == "relu")
        w = paddle.static.data("w", shape, "float32")
        gradients = paddle.static.gradients([(y * w).sum()], [x, layer.weight, layer.bias, residual])
    names = [op.name() for op in program.global_block().ops]
    assert names.count(ENDINGS[ending]) == int(suite_kernels)
    fetches = {"y": y, "dx": gradients[0], "dscale": gradients[1], "dbias": gradients[2], "scale": layer.weight,
               "bias": layer.bias, "mean": layer._mean, "var": layer._variance}
    if ending == "residual":
        fetches["dresidual"] = gradients[3]
    executor = paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(paddle.static.Scope()):
        executor.run(startup)
        for _ in range(runs):
            out = executor.run(program, feed={"x": x_value, "w": w_value, "residual": residual_value},
                               fetch_list=list(fetches.values()))
    return x_value, w_value, residual_value, dict(zip(fetches, out))


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_batch_norm_computes_paddles_batch_norm_and_relu(ending):
    shape = [5, 3, 4, 7]  # 60 rows of 7 channels: rows split unevenly over the threads
    x, w, residual, ours = run_batch_norm(shape, ending, suite_kernels=True)
    expected = batch_norm_reference(x, ours["scale"], ours["bias"], w, ending != "no_relu",
                                    residual if ending == "residual" else None)
    np.testing.assert_allclose(ours["y"].reshape(-1, 7), expected["y"], rtol=1e-5, atol=1e-5)
    for name in ("dx", "dscale", "dbias", "dresidual"):
        if name in ours:
            np.testing.assert_allclose(ours[name].reshape(expected[name].shape), expected[name], rtol=1e-4,
                                       atol=1e-5, err_msg=name)
    # Two runs from running statistics 0 and 1: the same batch statistics folded in twice, in place.
    np.testing.assert_allclose(ours["mean"], expected["mean"] * (1 - MOMENTUM ** 2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours["var"], MOMENTUM ** 2 + expected["var"] * (1 - MOMENTUM ** 2), rtol=1e-5)
    if ending != "no_relu":
        assert (ours["y"] == 0).mean() > 0.2  # the relu had something to cut
    _, _, _, paddles = run_batch_norm(shape, ending, suite_kernels=False)
    assert set(paddles) == set(ours)
    for name, value in paddles.items():
        np.testing.assert_allclose(ours[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


def run_momentum(sizes, suite_kernels, steps=3, learning_rate=0.1, decay=1e-3):
    """Parameters and velocities after `steps` Momentum steps on sum(p * w_step) (gradient w_step)."""
    paddle.enable_static()
    rng = np.random.default_rng(1)
    grads = [[rng.standard_normal(size).astype("float32") for size in sizes] for _ in range(steps)]
    program, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.utils.unique_name.guard(), paddle.static.program_guard(program, startup), \
            cpu_ops.used_for_training(suite_kernels):
        params = [paddle.static.create_parameter(
                      [size], "float32", name="p%d" % i,
                      default_initializer=nn.initializer.Assign(rng.standard_normal(size).astype("float32")))
                  for i, size in enumerate(sizes)]
        feeds = [paddle.static.data("w%d" % i, [size], "float32") for i, size in enumerate(sizes)]
        loss = paddle.add_n([(p * w).sum() for p, w in zip(params, feeds)])
        cpu_ops.Momentum(learning_rate=learning_rate, momentum=MOMENTUM,
                         weight_decay=paddle.regularizer.L2Decay(decay)).minimize(loss)
    names = [op.name() for op in program.global_block().ops]
    large = sum(size >= cpu_ops.MOMENTUM_MIN_SIZE for size in sizes)
    assert names.count("custom_op.momentum_update_") == (large if suite_kernels else 0)
    executor = paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(paddle.static.Scope()):
        executor.run(startup)
        start = {name: np.array(value) for name, value in program.state_dict().items()}
        for step in range(steps):
            executor.run(program, feed={"w%d" % i: grad for i, grad in enumerate(grads[step])})
        end = {name: np.array(value) for name, value in program.state_dict().items()}
    return start, end, grads


def test_momentum_update_computes_paddles_momentum_with_l2_decay():
    sizes = [10, 40000]  # the small one stays on Paddle's update
    start, ours, grads = run_momentum(sizes, suite_kernels=True)
    for i in range(len(sizes)):
        param, velocity = start["p%d" % i].astype(np.float64), np.zeros(sizes[i])
        for step in range(len(grads)):
            velocity = MOMENTUM * velocity + grads[step][i] + 1e-3 * param
            param = param - 0.1 * velocity
        np.testing.assert_allclose(ours["p%d" % i], param, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ours["p%d_velocity_0" % i], velocity, rtol=1e-5, atol=1e-6)
    _, paddles, _ = run_momentum(sizes, suite_kernels=False)
    for name in ("p0", "p1", "p0_velocity_0", "p1_velocity_0"):
        np.testing.assert_allclose(ours[name], paddles[name], rtol=1e-5, atol=1e-6, err_msg=name)


def convolution_reference(x, weights, upstream, stride, padding):
    """Float64 NumPy convolution of NHWC `x` with OIHW `weights`, and the gradients of sum(out * upstream)."""
    x, weights, upstream = (a.astype(np.float64) for a in (x, weights, upstream))
    (stride_h, stride_w), (pad_h, pad_w) = stride, padding
    padded = np.pad(x, [(0, 0), (pad_h, pad_h), (pad_w, pad_w), (0, 0)])
    kernel_h, kernel_w = weights.shape[2:]
    out_h = (padded.shape[1] - kernel_h) // stride_h + 1
    out_w = (padded.shape[2] - kernel_w) // stride_w + 1
    out = np.zeros(x.shape[:1] + (out_h, out_w, weights.shape[0]))
    padded_grad, weights_grad = np.zeros_like(padded), np.zeros_like(weights)
    for ky in range(kernel_h):
        for kx in range(kernel_w):
            window = np.s_[:, ky:ky + stride_h * (out_h - 1) + 1:stride_h, kx:kx + stride_w * (out_w - 1) + 1:stride_w]
            tap = weights[:, :, ky, kx]  # [out channels, in channels]
            out += padded[window] @ tap.T
            padded_grad[window] += upstream @ tap
            weights_grad[:, :, ky, kx] = np.einsum("nhwo,nhwc->oc", upstream, padded[window])
    return out, padded_grad[:, pad_h:pad_h + x.shape[1], pad_w:pad_w + x.shape[2]], weights_grad


# (batch, input side, in channels, out channels, kernel, stride, padding): ResNet shapes at 2x2 and 1x1 outputs,
# the centre tap of a 1x1 input, the unpadded 1x1 convolution that needs no unrolling, odd sizes, a 7x7 stem.
CONVOLUTIONS = [(4, 2, 24, 16, 3, 1, 1), (3, 4, 16, 24, 3, 2, 1), (5, 4, 16, 32, 1, 2, 0), (2, 2, 8, 8, 3, 2, 1),
                (3, 1, 8, 4, 1, 1, 0), (3, 2, 16, 8, 1, 1, 0), (2, 5, 6, 7, 3, 2, 1), (2, 7, 3, 16, 7, 2, 3),
                (2, 3, 5, 4, 3, 1, 0)]


@pytest.mark.parametrize("batch,side,channels,out_channels,kernel,stride,padding", CONVOLUTIONS)
def test_training_convolution_computes_the_convolution_and_its_gradients(monkeypatch, batch, side, channels,
                                                                         out_channels, kernel, stride, padding):
    paddle.enable_static()
    monkeypatch.setattr(cpu_ops, "CONV_MAX_OUTPUT_PIXELS", side * side)
    rng = np.random.default_rng(side * kernel + stride)
    x_value = rng.standard_normal((batch, side, side, channels)).astype("float32")
    weights_value = rng.standard_normal((out_channels, channels, kernel, kernel)).astype("float32")
    program, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(program, startup), cpu_ops.used_for_training(True):
        x = paddle.static.data("x", [None, side, side, channels], "float32")
        x.stop_gradient = False
        weights = paddle.static.create_parameter(weights_value.shape, "float32",
                                                 default_initializer=nn.initializer.Assign(weights_value))
        out = cpu_ops.conv2d(x, weights, stride, padding, data_format="NHWC")
        upstream = paddle.static.data("upstream", out.shape, "float32")
        x_grad, weights_grad = paddle.static.gradients([(out * upstream).sum()], [x, weights])
    assert [op.name() for op in program.global_block().ops].count("custom_op.conv2d_training") == 1
    upstream_value = rng.standard_normal([batch] + list(out.shape[1:])).astype("float32")
    executor = paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(paddle.static.Scope()):
        executor.run(startup)
        for _ in range(2):  # the second run reuses what the first made
            ours = executor.run(program, feed={"x": x_value, "upstream": upstream_value},
                                fetch_list=[out, x_grad, weights_grad])
    expected = convolution_reference(x_value, weights_value, upstream_value, [stride] * 2, [padding] * 2)
    for name, value, reference in zip(["out", "x_grad", "weights_grad"], ours, expected):
        assert value.shape == reference.shape, name
        np.testing.assert_allclose(value, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max(), err_msg=name)


def test_convolutions_with_larger_outputs_stay_on_paddles_kernel():
    paddle.enable_static()
    program = paddle.static.Program()
    with paddle.static.program_guard(program, paddle.static.Program()), cpu_ops.used_for_training(True):
        weights = paddle.static.create_parameter([8, 8, 3, 3], "float32")
        for side in (2, 3):  # outputs of 4 and 9 pixels
            cpu_ops.conv2d(paddle.static.data("x%d" % side, [2, side, side, 8], "float32"), weights, 1, 1,
                           data_format="NHWC")
        cpu_ops.conv2d(paddle.static.data("nchw", [2, 8, 2, 2], "float32"), weights, 1, 1)
    names = [op.name() for op in program.global_block().ops]
    assert names.count("custom_op.conv2d_training") == 1 and names.count("pd_op.conv2d") == 2


def custom_op_counts(data_format, amp_dtype=None, model="ResNet18"):
    paddle.enable_static()
    train_program = programs.build_train_program(model, 0, (3, 32, 32), losses.ArcMarginLoss(class_dim=4), 0.01, 1,
                                                 amp_dtype=amp_dtype, data_format=data_format)
    names = [op.name() for op in train_program.program.global_block().ops]
    return {name: names.count(name) for name in set(names) if name.startswith("custom_op.")}


def test_only_the_float32_onednn_training_program_runs_on_the_suite_kernels(monkeypatch):
    # ResNet18: 20 batch norms, 8 of them ending a residual block; 18 of its 61 parameters have 2^15 elements or more
    # (the convolutions but the stem and two of the three 1x1 projections); at 3x32x32 the 10 convolutions of its
    # last two stages have outputs of 2x2 and 1x1 pixels, the 10 others of 4x4 and more.
    assert custom_op_counts(onednn.DATA_FORMAT) == {"custom_op.batch_norm_relu_": 12,
                                                    "custom_op.batch_norm_relu_grad": 12,
                                                    "custom_op.batch_norm_add_relu_": 8,
                                                    "custom_op.batch_norm_add_relu_grad": 8,
                                                    "custom_op.momentum_update_": 18,
                                                    "custom_op.conv2d_training": 10,
                                                    "custom_op.conv2d_training_grad": 10}
    assert custom_op_counts("NCHW") == {}
    assert custom_op_counts(onednn.DATA_FORMAT, amp_dtype="bfloat16") == {}
    monkeypatch.setenv(native_build.SWITCH, "0")
    assert custom_op_counts(onednn.DATA_FORMAT) == {}


class NchwNet:
    """A network without the data_format choice: NCHW convolutions on oneDNN, whose filter gradients come out of
    oneDNN in its own layout; the second one is large enough for the suite's Momentum update."""

    def net(self, image, embedding_size=0, is_test=False):
        first = nn.Conv2D(3, 64, 3, stride=2, weight_attr=ParamAttr(name="nchw_conv1_weights"), bias_attr=False)
        second = nn.Conv2D(64, 64, 3, weight_attr=ParamAttr(name="nchw_conv2_weights"),
                           bias_attr=ParamAttr(name="nchw_conv2_offset"))
        relu = paddle.nn.functional.relu
        return paddle.flatten(nn.AdaptiveAvgPool2D(2)(relu(second(relu(first(image))))), start_axis=1)


def one_onednn_step(monkeypatch, suite_kernels):
    monkeypatch.setitem(models.MODELS, "NchwNet", NchwNet)
    if not suite_kernels:  # as where they cannot be built
        monkeypatch.setattr(cpu_ops, "_module", None)
        monkeypatch.setattr(cpu_ops, "_load_failed", True)
    paddle.enable_static()
    with paddle.static.scope_guard(paddle.static.Scope()):
        train_program = programs.build_train_program("NchwNet", 0, (3, 16, 16), losses.ArcMarginLoss(class_dim=4),
                                                     0.1, 1, data_format=onednn.DATA_FORMAT)
        names = [op.name() for op in train_program.program.global_block().ops]
        assert names.count("custom_op.momentum_update_") == (1 if suite_kernels else 0)
        executor = paddle.static.Executor(paddle.CPUPlace())
        executor.run(train_program.startup)
        assert onednn.place_on_onednn(train_program.program, executor) == 4
        images = np.random.default_rng(3).standard_normal((8, 3, 16, 16)).astype("float32")
        executor.run(train_program.program, feed={"image": images, "label": np.arange(8).reshape(-1, 1) % 4})
        return {name: np.array(value) for name, value in train_program.program.state_dict().items()}


def test_filter_gradients_from_onednn_reach_the_update_in_paddles_layout(monkeypatch):
    ours = one_onednn_step(monkeypatch, suite_kernels=True)
    paddles = one_onednn_step(monkeypatch, suite_kernels=False)
    assert np.abs(paddles["nchw_conv2_weights_velocity_0"]).max() > 1e-3
    for name, value in paddles.items():
        np.testing.assert_allclose(ours[name], value, rtol=1e-5, atol=1e-7, err_msg=name)
