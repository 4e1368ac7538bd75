"""Automatic mixed precision: bfloat16 training on CPU, float32 losses, float16's dynamic loss scaling."""
import re

import numpy as np
import paddle
import pytest

import losses
import models
from core import programs
from script_tools import CPU_BFLOAT16, needs_cpu_bfloat16
import train_elem

LOSS_OPS = ("pd_op.exp", "pd_op.log", "pd_op.logsumexp", "pd_op.rsqrt", "pd_op.softmax", "pd_op.sqrt")


def logged_losses(output):
    return [float(value) for value in re.findall(r"trainbatch \d+, lr [\d.]+, loss ([-\d.e]+)", output)]


@needs_cpu_bfloat16
def test_bfloat16_trains_on_cpu_close_to_float32(toy_root, tmp_path, capsys):
    flags = ["--model=ResNet18", "--image_shape=3,32,32", "--use_gpu=False", "--num_workers=0",
             "--data_dir=%s" % toy_root, "--model_save_dir=%s" % tmp_path, "--loss_name=softmax", "--class_dim=12",
             "--train_batch_size=8", "--total_iter_num=3", "--display_iter_step=1", "--test_iter_step=0",
             "--save_iter_step=1000", "--lr=0.001"]
    train_elem.main(flags)
    float32_losses = logged_losses(capsys.readouterr().out)
    train_elem.main(flags + ["--use_amp=True", "--amp_dtype=bfloat16"])
    bfloat16_losses = logged_losses(capsys.readouterr().out)
    assert len(bfloat16_losses) == 3 and np.all(np.isfinite(bfloat16_losses))
    # Same weights and images at the first step: only the forward arithmetic differs, and it does. After it the
    # weights differ too: convolutions and their gradients run in bfloat16 (8 bits of mantissa) on oneDNN, whose
    # rounding at a batch of 8 moves the next losses by a few percent (bench/amp_recall.py follows a whole run).
    np.testing.assert_allclose(bfloat16_losses[0], float32_losses[0], rtol=0.01)
    assert bfloat16_losses[0] != float32_losses[0]
    np.testing.assert_allclose(bfloat16_losses[1:], float32_losses[1:], rtol=0.05)


def result_dtypes(program, op_name):
    """The dtypes of the main (first) output of every `op_name` op in the program."""
    return [op.results()[0].dtype for op in program.global_block().ops if op.name() == op_name]


def test_network_runs_in_bfloat16_and_the_loss_in_float32():
    paddle.enable_static()
    loss = losses.ArcMarginLoss(class_dim=12, scale=16.0)
    train = programs.build_train_program("ResNet18", 8, (3, 32, 32), loss, 0.01, seed=0, amp_dtype="bfloat16")
    program = train.program
    assert set(result_dtypes(program, "pd_op.conv2d")) == {paddle.bfloat16}
    # The embedding layer's matmul runs in bfloat16, arcmargin's cosines in float32.
    assert result_dtypes(program, "pd_op.matmul") == [paddle.bfloat16, paddle.float32]
    # Batch norm has no bfloat16 kernel on CPU: it gets the conv output back in float32.
    assert set(result_dtypes(program, "pd_op.batch_norm_")) == {paddle.float32}
    loss_ops = [name for name in LOSS_OPS if result_dtypes(program, name)]
    assert len(loss_ops) >= 3
    for name in loss_ops:
        assert set(result_dtypes(program, name)) == {paddle.float32}, name
    assert train.loss.dtype == paddle.float32


class ElementwiseNet:
    """Average pooling times a weight per feature: no op that AMP would run in float16, which CPUs lack."""

    def net(self, input, embedding_size=0, is_test=False):
        pooled = paddle.flatten(paddle.nn.AdaptiveAvgPool2D(2)(input), start_axis=1)
        weight = paddle.static.create_parameter([pooled.shape[1]], "float32",
                                                attr=paddle.ParamAttr(name="elementwise_weights"),
                                                default_initializer=paddle.nn.initializer.Constant(1.0))
        return pooled * weight


def train_one_program(amp_dtype, batches):
    """Trains a fresh program on `batches`; returns the final variables and the loss scale after each step."""
    paddle.enable_static()
    scope = paddle.static.Scope()
    with paddle.static.scope_guard(scope):
        train = programs.build_train_program("ElementwiseNet", 0, (3, 8, 8), losses.SoftmaxLoss(4), 0.1,
                                             seed=5, amp_dtype=amp_dtype)
        executor = paddle.static.Executor(paddle.CPUPlace())
        executor.run(train.startup)
        scale_names = [name for name in train.program.state_dict() if name.startswith("loss_scaling")]
        scales = []
        for images, labels in batches:
            executor.run(train.program, feed={"image": images, "label": labels}, fetch_list=[train.loss])
            scales += [float(np.array(scope.find_var(name).get_tensor())[0]) for name in scale_names]
        variables = {name: np.array(value) for name, value in train.program.state_dict().items()}
    return variables, scales


def test_float16_loss_scaling_unscales_and_survives_an_overflow(monkeypatch):
    monkeypatch.setitem(models.MODELS, "ElementwiseNet", ElementwiseNet)
    rng = np.random.default_rng(2)
    labels = np.array([[0], [1], [2], [3]])
    normal = (rng.normal(size=(4, 3, 8, 8)).astype(np.float32), labels)
    overflowing = (np.full((4, 3, 8, 8), 3e38, np.float32), labels)

    reference, _ = train_one_program(None, [normal])
    scaled, scales = train_one_program("float16", [normal])
    assert scales == [programs.INITIAL_LOSS_SCALING]
    for name in reference:  # the gradients of the scaled loss were divided by the scale again
        np.testing.assert_allclose(scaled[name], reference[name], rtol=1e-5, atol=1e-7, err_msg=name)

    survived, scales = train_one_program("float16", [normal, overflowing, normal])
    assert scales == [programs.INITIAL_LOSS_SCALING, programs.INITIAL_LOSS_SCALING / 2,
                      programs.INITIAL_LOSS_SCALING / 2]
    assert all(np.all(np.isfinite(value)) for value in survived.values())

    # An overflow at the very first step: its gradients are zeroed, so the velocity holds the weight decay only.
    initial, _ = train_one_program("float16", [])
    overflowed, _ = train_one_program("float16", [overflowing])
    velocities = [name for name in initial if name.endswith("_velocity_0")]
    assert len(velocities) == 3
    for name in velocities:
        weights = initial[name[:-len("_velocity_0")]]
        np.testing.assert_allclose(overflowed[name], programs.WEIGHT_DECAY * weights, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("flags, message", [
    (["--amp_dtype=float32"], "--amp_dtype: 'float32' is not one of float16, bfloat16"),
    (["--use_amp=True", "--amp_dtype=float16", "--use_gpu=False"], "--amp_dtype: float16 needs --use_gpu=True"),
])
def test_amp_flag_errors(capsys, flags, message):
    with pytest.raises(SystemExit) as stopped:
        train_elem.main(["--data_dir=unused"] + flags)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(CPU_BFLOAT16, reason="this CPU runs bfloat16 (test_bfloat16_trains_on_cpu_close_to_float32)")
def test_bfloat16_on_a_cpu_without_avx512_stops_at_its_flag(capsys):
    """Rather than a bare "std::exception" from the executor at the first step."""
    with pytest.raises(SystemExit) as stopped:
        train_elem.main(["--data_dir=unused", "--use_amp=True", "--amp_dtype=bfloat16", "--use_gpu=False"])
    assert stopped.value.code == 2
    assert ("--amp_dtype: bfloat16 on CPU needs AVX512, which this CPU lacks (paddle.amp.is_bfloat16_supported('cpu') "
            "is False): train in float32 (--use_amp=False) or on a GPU") in capsys.readouterr().err
