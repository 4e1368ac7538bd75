"""Tests for the backbone networks: shapes, parameter counts and names, weight sharing, batch-norm modes."""
import functools

import numpy as np
import paddle
import pytest

import models
from models.resnet import _train_convolution, conv_bn_layer

RESNET_NAMES = ["ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152"]
SE_RESNEXT_NAMES = ["SE_ResNeXt50_32x4d", "SE_ResNeXt101_32x4d", "SE_ResNeXt152_64x4d"]

# Published totals minus the 1000-way classifier (2048*1000 + 1000 or 512*1000 + 1000): torchvision for ResNet,
# timm / pretrainedmodels for SE-ResNeXt50/101. SE_ResNeXt152_64x4d is checked against the formula below only.
KNOWN_PARAM_COUNTS = {
    "ResNet18": 11_689_512 - 513_000,
    "ResNet34": 21_797_672 - 513_000,
    "ResNet50": 25_557_032 - 2_049_000,
    "ResNet101": 44_549_160 - 2_049_000,
    "ResNet152": 60_192_808 - 2_049_000,
    "SE_ResNeXt50_32x4d": 27_559_896 - 2_049_000,
    "SE_ResNeXt101_32x4d": 48_955_416 - 2_049_000,
}


@pytest.fixture(scope="module", autouse=True)
def static_mode():
    paddle.enable_static()
    yield
    paddle.disable_static()


def build_fresh(name, image_size=32, embedding_size=0, is_test=False, batch_size=-1):
    """Build model `name` in new programs, as a script would; returns (main, startup, output)."""
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.utils.unique_name.guard(), paddle.static.program_guard(main, startup):
        image = paddle.static.data("image", [batch_size, 3, image_size, image_size], "float32")
        output = models.get_model(name).net(image, embedding_size=embedding_size, is_test=is_test)
    return main, startup, output


# Building the big models takes a moment; tests that only read a program share one build.
build = functools.lru_cache(maxsize=None)(build_fresh)


def parameters(program):
    """{name: shape} of every parameter and batch-norm statistic in `program`."""
    return {p.name: tuple(p.shape) for p in program.global_block().all_parameters()}


def trainable_count(program):
    return sum(int(np.prod(p.shape)) for p in program.global_block().all_parameters() if not p.stop_gradient)


def conv_bn_count(in_channels, out_channels, kernel, groups=1):
    """Bias-free conv weights plus batch-norm scale and offset."""
    return in_channels * out_channels * kernel * kernel // groups + 2 * out_channels


def se_resnext_formula_count(blocks, cardinality, deep_stem):
    """Trainable parameters of the static-era SE-ResNeXt layout, counted from its description."""
    if deep_stem:
        total = conv_bn_count(3, 64, 3) + conv_bn_count(64, 64, 3) + conv_bn_count(64, 128, 3)
        channels = 128
    else:
        total = conv_bn_count(3, 64, 7)
        channels = 64
    for num_blocks, width in zip(blocks, (128, 256, 512, 1024)):
        out = 2 * width
        for block in range(num_blocks):
            total += conv_bn_count(channels, width, 1) + conv_bn_count(width, width, 3, cardinality)
            total += conv_bn_count(width, out, 1)
            total += (out * (out // 16) + out // 16) + (out // 16 * out + out)  # squeeze and excitation fcs
            if block == 0:  # every stage opens with a projection (channels or stride change)
                total += conv_bn_count(channels, out, 1)
            channels = out
    return total


def run(program, output, batch):
    """Feed `batch` as "image" and fetch `output`, in the current scope."""
    exe = paddle.static.Executor(paddle.CPUPlace())
    return exe.run(program, feed={"image": batch}, fetch_list=[output])[0]


def images(batch, size=32, seed=0):
    """Random float32 NCHW images."""
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype("float32")


def test_registry_lists_all_models_and_rejects_unknown_names():
    assert list(models.MODELS) == RESNET_NAMES + SE_RESNEXT_NAMES
    assert isinstance(models.get_model("ResNet101"), models.ResNet)
    assert models.get_model("ResNet101").layers == 101
    assert models.get_model("SE_ResNeXt152_64x4d").layers == 152
    with pytest.raises(ValueError, match="ResNet50.*SE_ResNeXt50_32x4d"):
        models.get_model("VGG16")
    with pytest.raises(ValueError):
        models.ResNet(layers=20)


@pytest.mark.parametrize("name", RESNET_NAMES + SE_RESNEXT_NAMES)
def test_feature_shape_and_trainable_parameter_count(name):
    main, _, output = build(name)
    feature_dim = 512 if name in ("ResNet18", "ResNet34") else 2048
    assert list(output.shape) == [-1, feature_dim]
    if name in KNOWN_PARAM_COUNTS:
        assert trainable_count(main) == KNOWN_PARAM_COUNTS[name]


@pytest.mark.parametrize("name,blocks,cardinality,deep_stem,expected", [
    ("SE_ResNeXt50_32x4d", (3, 4, 6, 3), 32, False, 25_510_896),
    ("SE_ResNeXt101_32x4d", (3, 4, 23, 3), 32, False, 46_906_416),
    ("SE_ResNeXt152_64x4d", (3, 8, 36, 3), 64, True, 62_809_200),
])
def test_se_resnext_count_matches_formula(name, blocks, cardinality, deep_stem, expected):
    assert se_resnext_formula_count(blocks, cardinality, deep_stem) == expected
    assert trainable_count(build(name)[0]) == expected


@pytest.mark.parametrize("name,feature_dim", [("ResNet18", 512), ("SE_ResNeXt50_32x4d", 2048)])
def test_embedding_layer_adds_dim_times_e_plus_e(name, feature_dim):
    main, _, output = build(name, embedding_size=128)
    assert list(output.shape) == [-1, 128]
    assert trainable_count(main) == KNOWN_PARAM_COUNTS[name] + feature_dim * 128 + 128
    params = parameters(main)
    assert params["embedding_fc_weights"] == (feature_dim, 128)
    assert params["embedding_fc_offset"] == (128,)


@pytest.mark.parametrize("image_size", [32, 64, 224])
def test_any_input_size_pools_to_one_vector(image_size):
    _, _, output = build("ResNet50", image_size=image_size, batch_size=2)
    assert list(output.shape) == [2, 2048]


def test_resnet_parameter_names():
    resnet18 = parameters(build("ResNet18")[0])
    assert resnet18["conv1_weights"] == (64, 3, 7, 7)
    for suffix in ("scale", "offset", "mean", "variance"):
        assert resnet18["bn_conv1_" + suffix] == (64,)
    assert resnet18["res2a_branch2a_weights"] == (64, 64, 3, 3)
    assert resnet18["res5b_branch2b_weights"] == (512, 512, 3, 3)
    assert resnet18["res3a_branch1_weights"] == (128, 64, 1, 1)
    assert "res2a_branch1_weights" not in resnet18  # 64 -> 64 at stride 1: identity shortcut
    assert "res2a_branch2c_weights" not in resnet18

    resnet50 = parameters(build("ResNet50")[0])
    assert resnet50["res2a_branch1_weights"] == (256, 64, 1, 1)
    assert resnet50["bn2a_branch1_variance"] == (256,)
    assert resnet50["res2c_branch2c_weights"] == (256, 64, 1, 1)
    assert resnet50["bn4f_branch2b_mean"] == (256,)
    assert resnet50["res5c_branch2c_weights"] == (2048, 512, 1, 1)
    assert not any(name.startswith("embedding_fc") for name in resnet50)

    resnet101 = parameters(build("ResNet101")[0])
    assert resnet101["res4a_branch2a_weights"] == (256, 512, 1, 1)
    assert resnet101["res4b22_branch2c_weights"] == (1024, 256, 1, 1)
    assert resnet101["bn4b22_branch2c_offset"] == (1024,)
    assert "res4b23_branch2a_weights" not in resnet101
    assert "res4b_branch2a_weights" not in resnet101

    resnet152 = parameters(build("ResNet152")[0])
    assert resnet152["res3h_branch2a_weights"] == (128, 512, 1, 1)
    assert resnet152["res4b35_branch2b_weights"] == (256, 256, 3, 3)
    assert "res4b36_branch2b_weights" not in resnet152


def test_se_resnext_parameter_names():
    se50 = parameters(build("SE_ResNeXt50_32x4d")[0])
    assert se50["conv1_weights"] == (64, 3, 7, 7)
    assert se50["conv1_bn_mean"] == (64,)
    assert se50["conv2_1_x1_weights"] == (128, 64, 1, 1)
    assert se50["conv2_1_x2_weights"] == (128, 4, 3, 3)  # 32 groups of 4 channels
    assert se50["conv2_1_x3_bn_variance"] == (256,)
    assert se50["conv2_1_prj_weights"] == (256, 64, 1, 1)
    assert "conv2_2_prj_weights" not in se50
    assert se50["fc2_1_sqz_weights"] == (256, 16)
    assert se50["fc2_1_sqz_offset"] == (16,)
    assert se50["fc5_3_exc_weights"] == (128, 2048)
    assert se50["fc5_3_exc_offset"] == (2048,)

    se152 = parameters(build("SE_ResNeXt152_64x4d")[0])
    assert se152["conv1_weights"] == (64, 3, 3, 3)
    assert se152["conv3_weights"] == (128, 64, 3, 3)
    assert se152["conv3_bn_scale"] == (128,)
    assert se152["conv4_1_prj_weights"] == (256, 128, 1, 1)
    assert se152["conv4_1_x2_weights"] == (128, 2, 3, 3)  # 64 groups
    assert se152["conv6_36_x3_weights"] == (1024, 512, 1, 1)
    assert se152["fc7_3_exc_offset"] == (2048,)
    assert not any(name.startswith("conv2_1") for name in se152)


@pytest.mark.parametrize("name", ["ResNet18", "SE_ResNeXt50_32x4d"])
def test_train_and_test_programs_create_the_same_names(name):
    train_params = parameters(build(name, is_test=False)[0])
    test_params = parameters(build(name, is_test=True)[0])
    assert train_params == test_params
    assert len(train_params) > 50


@pytest.mark.parametrize("name,feature_dim", [("ResNet18", 512), ("ResNet50", 2048), ("SE_ResNeXt50_32x4d", 2048)])
def test_forward_pass_runs(name, feature_dim):
    main, startup, output = build(name, is_test=True)
    with paddle.static.scope_guard(paddle.static.Scope()):
        paddle.static.Executor(paddle.CPUPlace()).run(startup)
        features = run(main, output, images(2))
    assert features.shape == (2, feature_dim)
    assert np.isfinite(features).all()
    assert (features >= 0).all() and features.max() > 0  # pooled after a relu
    assert not np.allclose(features[0], features[1])


def test_batch_norm_uses_batch_statistics_in_train_and_moving_averages_in_test():
    train_main, startup, train_out = build("ResNet18", is_test=False)
    test_main, _, test_out = build("ResNet18", is_test=True)
    # The alternative to is_test=True: build in train mode, then switch the whole program.
    switched_main, _, switched_out = build_fresh("ResNet18", is_test=False)
    switched_main.set_is_test_attr()
    first = images(1, seed=1)
    batch_a = np.concatenate([first, images(2, seed=2)])
    batch_b = np.concatenate([first, images(2, seed=3)])
    with paddle.static.scope_guard(paddle.static.Scope()):
        paddle.static.Executor(paddle.CPUPlace()).run(startup)
        # Test-mode runs first: a train-mode run updates the moving averages.
        test_a = run(test_main, test_out, batch_a)
        test_b = run(test_main, test_out, batch_b)
        test_alone = run(test_main, test_out, first)
        switched_a = run(switched_main, switched_out, batch_a)
        train_a = run(train_main, train_out, batch_a)
        train_b = run(train_main, train_out, batch_b)
    np.testing.assert_allclose(test_a[0], test_b[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(test_a[0], test_alone[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(switched_a, test_a, rtol=1e-5, atol=1e-6)
    assert np.abs(train_a[0] - train_b[0]).max() > 1e-2


def numpy_conv3x3_stride2(x, weights):
    """Cross-correlation with padding 1 and stride 2, NCHW / OIHW."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out_size = (x.shape[2] - 1) // 2 + 1
    out = np.zeros((x.shape[0], weights.shape[0], out_size, out_size))
    for i in range(out_size):
        for j in range(out_size):
            window = padded[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
            out[:, :, i, j] = np.einsum("nckl,ockl->no", window, weights)
    return out


@pytest.mark.parametrize("is_test", [True, False])
def test_conv_bn_layer_matches_numpy(is_test):
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.utils.unique_name.guard(), paddle.static.program_guard(main, startup):
        image = paddle.static.data("image", [-1, 3, 5, 5], "float32")
        output = conv_bn_layer(image, 4, 3, "conv1", "bn_conv1", stride=2, relu=True, is_test=is_test)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 5)).astype("float32")
    values = {
        "conv1_weights": rng.standard_normal((4, 3, 3, 3)).astype("float32"),
        "bn_conv1_scale": rng.uniform(0.5, 2.0, 4).astype("float32"),
        "bn_conv1_offset": rng.standard_normal(4).astype("float32"),
        "bn_conv1_mean": rng.standard_normal(4).astype("float32"),
        "bn_conv1_variance": rng.uniform(0.5, 2.0, 4).astype("float32"),
    }
    scope = paddle.static.Scope()
    with paddle.static.scope_guard(scope):
        paddle.static.Executor(paddle.CPUPlace()).run(startup)
        for name, value in values.items():
            scope.find_var(name).get_tensor().set(value, paddle.CPUPlace())
        result = run(main, output, x)
        moving_mean = np.array(scope.find_var("bn_conv1_mean").get_tensor())
        moving_variance = np.array(scope.find_var("bn_conv1_variance").get_tensor())

    conv = numpy_conv3x3_stride2(x.astype("float64"), values["conv1_weights"])
    batch_mean, batch_variance = conv.mean(axis=(0, 2, 3)), conv.var(axis=(0, 2, 3))
    mean, variance = (values["bn_conv1_mean"], values["bn_conv1_variance"]) if is_test else (batch_mean, batch_variance)
    per_channel = (slice(None), None, None)
    expected = (conv - mean[per_channel]) / np.sqrt(variance[per_channel] + 1e-5)
    expected = np.maximum(expected * values["bn_conv1_scale"][per_channel] + values["bn_conv1_offset"][per_channel], 0)
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-4)
    if is_test:  # inference leaves the moving averages alone
        np.testing.assert_array_equal(moving_mean, values["bn_conv1_mean"])
    else:  # momentum 0.9, biased batch variance
        np.testing.assert_allclose(moving_mean, 0.9 * values["bn_conv1_mean"] + 0.1 * batch_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            moving_variance, 0.9 * values["bn_conv1_variance"] + 0.1 * batch_variance, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("data_format, stride", [("NCHW", 1), ("NHWC", 1), ("NCHW", 2)])
def test_training_convolves_a_one_by_one_activation_with_the_centre_tap_alone(data_format, stride):
    """The same output and gradients as the 3x3 convolution, whose other taps only ever multiply padding."""
    shape = [4, 6, 1, 1] if data_format == "NCHW" else [4, 1, 1, 6]
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.utils.unique_name.guard(), paddle.static.program_guard(main, startup):
        image = paddle.static.data("image", shape, "float32")
        image.stop_gradient = False
        conv = paddle.nn.Conv2D(6, 5, 3, stride=stride, padding=1, bias_attr=False, data_format=data_format)
        centre_only, plain = _train_convolution(conv, image, 3, stride, 1, data_format), conv(image)
        weighting = paddle.static.data("weighting", [4, 5], "float32")
        fetched = [centre_only, plain]
        for output in (centre_only, plain):
            loss = paddle.sum(paddle.reshape(output, [4, 5]) * weighting)
            fetched += paddle.static.gradients([loss], [conv.weight, image])
    assert [op.name() for op in main.global_block().ops].count("pd_op.conv2d") == 2
    rng = np.random.default_rng(0)
    x, weighting = rng.standard_normal(shape).astype("float32"), rng.standard_normal((4, 5)).astype("float32")
    executor = paddle.static.Executor(paddle.CPUPlace())
    executor.run(startup)
    centre_only, plain, centre_weight_grad, centre_image_grad, plain_weight_grad, plain_image_grad = executor.run(
        main, feed={"image": x, "weighting": weighting}, fetch_list=fetched)
    weights = np.array(paddle.static.global_scope().find_var(conv.weight.name).get_tensor())
    expected = x.reshape(4, 6).astype("float64") @ weights[:, :, 1, 1].T
    np.testing.assert_allclose(centre_only.reshape(4, 5), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(centre_only, plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(centre_image_grad, plain_image_grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(centre_weight_grad, plain_weight_grad, rtol=1e-5, atol=1e-6)
    off_centre = np.ones((3, 3), bool)
    off_centre[1, 1] = False
    assert not centre_weight_grad[:, :, off_centre].any() and not plain_weight_grad[:, :, off_centre].any()
    np.testing.assert_allclose(centre_weight_grad[:, :, 1, 1], weighting.T @ x.reshape(4, 6), rtol=1e-5, atol=1e-6)


def test_only_training_programs_take_the_centre_tap():
    """ResNet18 at 3x32x32 ends in 1x1 activations: its training network slices the last stage's 3x3 weights, its
    feature network (and so an exported model) convolves with them whole."""
    def slices(is_test):
        main = paddle.static.Program()
        with paddle.utils.unique_name.guard(), paddle.static.program_guard(main, paddle.static.Program()):
            image = paddle.static.data("image", [-1, 3, 32, 32], "float32")
            models.MODELS["ResNet18"]().net(image, is_test=is_test)
        return [op.name() for op in main.global_block().ops].count("pd_op.slice")

    assert slices(is_test=False) == 3  # layer 4's three stride-1 3x3 convolutions; its first has a 2x2 input
    assert slices(is_test=True) == 0


@pytest.mark.parametrize("name", ["ResNet18", "ResNet50", "SE_ResNeXt50_32x4d"])
def test_channels_last_network_has_the_same_parameters_and_features(name):
    """data_format="NHWC" (training on oneDNN) changes the activations' layout only: same parameter names and shapes
    (weights stay OIHW, so checkpoints load either way), same features from the same weights."""
    programs_by_format = {}
    for data_format in ("NCHW", "NHWC"):
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.utils.unique_name.guard(), paddle.static.program_guard(main, startup):
            image = paddle.static.data("image", [-1, 3, 32, 32], "float32")
            # Batch norm on its moving averages: batch statistics of 4 images at 1x1 (ResNet50's last stage at 32
            # px) would amplify float32 rounding far beyond any tolerance.
            feature = models.get_model(name).net(image, embedding_size=8, is_test=True, data_format=data_format)
        programs_by_format[data_format] = (main, startup, feature)
    assert parameters(programs_by_format["NHWC"][0]) == parameters(programs_by_format["NCHW"][0])
    with paddle.static.scope_guard(paddle.static.Scope()):
        executor = paddle.static.Executor(paddle.CPUPlace())
        executor.run(programs_by_format["NCHW"][1])  # the NHWC program reads the same variables
        images = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype("float32")
        features = {data_format: executor.run(main, feed={"image": images}, fetch_list=[feature])[0]
                    for data_format, (main, _, feature) in programs_by_format.items()}
    np.testing.assert_allclose(features["NHWC"], features["NCHW"], rtol=1e-4,
                               atol=1e-5 * np.abs(features["NCHW"]).max())


def test_unknown_data_format_is_rejected():
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        image = paddle.static.data("image", [-1, 3, 32, 32], "float32")
        with pytest.raises(ValueError, match="data_format"):
            models.get_model("ResNet18").net(image, data_format="NDHW")
