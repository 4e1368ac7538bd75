"""On a GPU build of Paddle with a GPU: training steps in float32 and in float16 AMP (loss scaling on), and features
through the GPU predictor against the CPU path. Skipped elsewhere: this suite's CI has no GPU, and nothing here has
been run on one. A GPU user runs it with `.venv/bin/python -m pytest -q tests/test_gpu.py`."""
import re

import numpy as np
import paddle
import pytest

import eval as eval_script
import train_elem
from core import predictor, programs
from script_tools import TINY, train_flags

pytestmark = pytest.mark.skipif(not paddle.is_compiled_with_cuda() or paddle.device.cuda.device_count() < 1,
                                reason="needs a CUDA build of PaddlePaddle and a GPU")


def logged_losses(output):
    return [float(value) for value in re.findall(r"trainbatch \d+, lr [\d.]+, loss ([-\d.e]+)", output)]


def test_training_on_the_gpu_in_float32_and_float16(toy_root, tmp_path, capsys):
    flags = [flag for flag in train_flags(toy_root, tmp_path, "arcmargin", 3, class_dim=12, arc_scale=16)
             if not flag.startswith("--use_gpu")]
    train_elem.main(flags + ["--use_gpu=True", "--model_save_dir=%s" % (tmp_path / "fp32")])
    float32 = logged_losses(capsys.readouterr().out)
    train_elem.main(flags + ["--use_gpu=True", "--use_amp=True", "--amp_dtype=float16",
                             "--model_save_dir=%s" % (tmp_path / "fp16")])
    float16 = logged_losses(capsys.readouterr().out)
    assert len(float32) == len(float16) == 3
    assert np.isfinite(float32).all() and np.isfinite(float16).all()
    # The same initialisation and batches: the first step's losses differ by float16's rounding only.
    assert float16[0] == pytest.approx(float32[0], rel=1e-2)


def test_gpu_predictor_features_equal_the_cpu_path(tmp_path):
    network = [flag for flag in TINY if not flag.startswith("--use_gpu")] + ["--embedding_size=8"]
    images = np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)
    cpu_args = eval_script.make_parser().parse_args(network + ["--use_gpu=False", "--use_mkldnn=False"])
    with paddle.static.scope_guard(paddle.static.Scope()):
        cpu, feature_program = programs.load_feature_program(cpu_args, lambda message: None)
        (on_cpu,) = cpu.run(feature_program.program, feed={"image": images}, fetch_list=[feature_program.feature])
        paddle.static.save(feature_program.program, str(tmp_path / "weights"))
    gpu_args = eval_script.make_parser().parse_args(
        network + ["--use_gpu=True", "--pretrained_model=%s" % (tmp_path / "weights.pdparams")])
    with paddle.static.scope_guard(paddle.static.Scope()):
        gpu, feature_program = programs.load_feature_program(gpu_args, lambda message: None, use_predictor=True)
        assert isinstance(gpu, predictor.InferenceExecutor)
        (on_gpu,) = gpu.run(feature_program.program, feed={"image": images}, fetch_list=[feature_program.feature])
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-3, atol=1e-4 * np.abs(on_cpu).max())
