"""The suite's own CPU kernels for the training program of a oneDNN run, on every OpenMP thread: training-mode batch
norm with its relu, or with a residual block's addition and relu (channels-last, batch_norm_ops.cc), the Momentum
update (momentum_ops.cc), and the convolutions whose outputs have a few pixels (conv_ops.cc).

Paddle 3.3.1's CPU batch norm, relu, addition, their gradients and its Momentum update run on one thread, where
PyTorch uses all of them; on this project's 2-core machine they were a quarter of a ResNet training step on oneDNN
(docs/benchmarks.md). The kernels here compute what `paddle.nn.BatchNorm2D` followed by relu (or by an addition
and relu), and what `paddle.optimizer.Momentum` with L2 decay, compute, with the same parameters, running statistics
and velocities: programs keep their variables, and checkpoints their names. oneDNN's convolutions of 2x2 and 1x1
outputs (a ResNet's last stages at 3x64x64 and 3x32x32) were slow on both CPUs measured, and on AVX2 their weight
gradient took 30-40 ms a call; `conv2d` runs them as three matrix products over the batch instead, with the same
weights.

They are a Paddle custom op, compiled by `paddle.utils.cpp_extension` on first use (g++ needed; about 25 s) as
native_build.py builds the suite's kernels, and loaded from there after; the convolution calls the sgemm of the
oneDNN library in Paddle's wheel and is left out where that library is not there. Where they cannot be built, one
warning says why and the program runs on Paddle's kernels: slower, the same results within float32 rounding.

`conv_bn_layer` (models/resnet.py) builds every convolution through `conv2d` and every batch norm through
`batch_norm`, or `batch_norm_add_relu` where it ends a residual block, and the training optimizer is a `Momentum`;
only what is built inside `used_for_training(True)` (core/programs.py: the channels-last float32 training program of
a oneDNN run) gets these kernels.
`METRIC_LEARNING_CPU_OPS=0` in the environment keeps every program on Paddle's kernels (to compare them, as
bench/cpu_ops_speed.py does, or to rule these out).
"""
import contextlib
import logging
import os
import subprocess
import sys
import warnings

import numpy as np
import paddle
import paddle.nn.functional as F

from core import native_build

NAME = "metric_learning_cpu_ops"
# Parameters with fewer elements stay on Paddle's Momentum update (measured: a custom op costs about 10 us more to run).
MOMENTUM_MIN_SIZE = 1 << 15
# Convolutions whose output has at most this many pixels an image run on the suite's (conv_ops.cc); taking 4x4
# outputs as well made whole steps no faster (docs/benchmarks.md, "The suite's own CPU kernels").
CONV_MAX_OUTPUT_PIXELS = 4
# Residual blocks end in batch_norm_add_relu's fused passes (False: the batch norm, then Paddle's addition and relu;
# bench/cpu_ops_speed.py times both).
FUSE_RESIDUAL_JOINS = True
_HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = [os.path.join(_HERE, name) for name in ("batch_norm_ops.cc", "momentum_ops.cc")]
CONV_SOURCE = os.path.join(_HERE, "conv_ops.cc")
HEADER = os.path.join(_HERE, "cpu_ops.h")  # included by SOURCES: part of the build's version
LIBDNNL = "libdnnl.so.3"  # the oneDNN library in Paddle 3.3.1's wheels
# Without -fno-trapping-math GCC keeps the relu's comparison out of the vectorised loops (10x slower).
COMPILE_FLAGS = ["-O3", "-fopenmp", "-fno-trapping-math"]
# The OpenMP runtime that oneDNN's convolutions run on in Paddle's CPU wheels is the libiomp5 it ships. The kernels
# must use the same one: with GCC's libgomp there were two teams of threads, each spinning on the 2 cores while the
# other worked (a step took 3x as long).
_IOMP = os.path.join(os.path.dirname(paddle.__file__), "libs", "libiomp5.so")
LINK_FLAGS = (["-L" + os.path.dirname(_IOMP), "-l:libiomp5.so", "-Wl,-rpath," + os.path.dirname(_IOMP)]
              if os.path.exists(_IOMP) else ["-fopenmp"])

_module = None
_load_failed = False
_in_use = False


def _build():
    """The sources and the compiler and linker flags of the op library: the convolution's only where Paddle's wheel
    has the oneDNN library whose sgemm it calls."""
    libs = os.path.dirname(_IOMP)
    if not os.path.exists(os.path.join(libs, LIBDNNL)):
        return SOURCES, COMPILE_FLAGS, LINK_FLAGS
    return SOURCES + [CONV_SOURCE], COMPILE_FLAGS, LINK_FLAGS + ["-L" + libs, "-l:" + LIBDNNL, "-Wl,-rpath," + libs]


def _build_directory():
    sources, compile_flags, link_flags = _build()
    return native_build.build_directory(NAME, sources + [HEADER], compile_flags + link_flags)


def _compile(staging):
    """Builds the op library into `staging` (native_build.built holds the lock); the compiler's output is kept
    out of the log, its first error line explains a failure."""
    sources, compile_flags, link_flags = _build()
    build = ("from paddle.utils import cpp_extension; cpp_extension.load(name=%r, sources=%r, extra_cxx_cflags=%r, "
             "extra_ldflags=%r, build_directory=%r)" % (NAME, sources, compile_flags, link_flags, staging))
    done = subprocess.run([sys.executable, "-c", build], capture_output=True, text=True)
    if done.returncode != 0:
        raise native_build.CompileError.from_output("the op's build", done.stdout + done.stderr, done.returncode)


def load():
    """The op module, compiled on first use; None (after one warning) where it cannot be built or loaded."""
    global _module, _load_failed
    if _module is not None or _load_failed:
        return _module
    with warnings.catch_warnings():  # that ccache would speed up recompiling is no news either
        warnings.simplefilter("ignore")
        from paddle.utils.cpp_extension.extension_utils import _import_module_from_library
    try:
        directory = native_build.built(_build_directory(), _compile, "the suite's CPU kernels")
        quiet = logging.getLogger("utils.cpp_extension")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # its "using custom operator only" is no news
        try:
            _module = _import_module_from_library(NAME, os.path.join(directory, NAME))
        finally:
            quiet.setLevel(level)
    except Exception as error:  # a missing compiler, headers or write access: Paddle's kernels instead
        _load_failed = True
        native_build.warn_unbuilt("the suite's CPU kernels", error,
                                  "batch norm, the Momentum update and few-pixel convolutions run on Paddle's kernels")
    return _module


@contextlib.contextmanager
def used_for_training(enabled=True):
    """Inside, if `enabled`, `batch_norm` and `Momentum` put what they build on these kernels where they apply."""
    global _in_use
    previous, _in_use = _in_use, enabled
    try:
        yield
    finally:
        _in_use = previous


def _wanted():
    """Whether what is being built gets these kernels: inside `used_for_training(True)`, not switched off, and built."""
    return _in_use and native_build.switched_on() and load() is not None


def batch_norm(layer, x, relu=False):
    """`layer(x)` (a paddle.nn.BatchNorm2D), then relu if asked: on these kernels inside `used_for_training` where
    they apply (training mode, NHWC, float32, batch statistics), else on Paddle's."""
    if _batch_norm_on_suite_kernels(layer, x):
        return _module.batch_norm_relu(x, layer.weight, layer.bias, layer._mean, layer._variance,
                                       float(layer._momentum), float(layer._epsilon), bool(relu))[0]
    y = layer(x)
    return F.relu(y) if relu else y


def batch_norm_add_relu(layer, x, residual):
    """relu(`layer(x)` + `residual`), the end of a residual block: as `batch_norm`, with the addition, the relu and
    their gradients inside the batch norm's own passes on these kernels."""
    if FUSE_RESIDUAL_JOINS and _batch_norm_on_suite_kernels(layer, x):
        return _module.batch_norm_add_relu(x, residual, layer.weight, layer.bias, layer._mean, layer._variance,
                                           float(layer._momentum), float(layer._epsilon))[0]
    return F.relu(batch_norm(layer, x) + residual)


def _batch_norm_on_suite_kernels(layer, x):
    return (layer.training and layer._data_format == "NHWC" and x.dtype == paddle.float32
            and not layer._use_global_stats and _wanted())


def conv2d(x, weight, stride, padding, groups=1, data_format="NCHW"):
    """paddle.nn.functional.conv2d without bias or dilation (`stride`, `padding`: an int or [height, width]): on the
    suite's training convolution (conv_ops.cc) inside `used_for_training` where it applies (NHWC float32, groups 1,
    an output of at most CONV_MAX_OUTPUT_PIXELS pixels), else on Paddle's."""
    stride, padding = _pair(stride), _pair(padding)
    if (data_format == "NHWC" and groups == 1 and x.dtype == paddle.float32 and _wanted()
            and hasattr(_module, "conv2d_training")):
        out_pixels = 1
        for size, kernel, step, pad in zip(x.shape[1:3], weight.shape[2:], stride, padding):
            out_pixels *= (size + 2 * pad - kernel) // step + 1
        if out_pixels <= CONV_MAX_OUTPUT_PIXELS:
            return _module.conv2d_training(x, weight, stride, padding)
    return F.conv2d(x, weight, stride=stride, padding=padding, groups=groups, data_format=data_format)


def _pair(value):
    return [int(value)] * 2 if np.isscalar(value) else [int(v) for v in value]


class Momentum(paddle.optimizer.Momentum):
    """Paddle's Momentum (its L2 decay folded into the update, as Paddle folds it); built inside `used_for_training`,
    the update of each large float32 parameter runs on these kernels."""

    def _append_optimize_op(self, block, param_and_grad):
        if isinstance(param_and_grad, dict) or not self._on_suite_kernels(param_and_grad[0]):
            return super()._append_optimize_op(block, param_and_grad)  # parameter groups, and the rest, as Paddle
        param, grad = param_and_grad
        velocity = self._get_accumulator_master(self._velocity_acc_str, param)
        decay = self._regularization_coeff if self._regularization_method == "l2_decay" else 0.0
        return _module.momentum_update(param, grad, velocity, self._create_param_lr(param_and_grad),
                                       float(self._momentum), float(decay), float(self._rescale_grad))

    def _on_suite_kernels(self, param):
        """Plain float32 Momentum, L2 decay from the optimizer's own weight_decay if any, a parameter large enough to
        share out over threads (below that Paddle's update is as fast and starts sooner), where these are wanted."""
        return (param.dtype == paddle.float32 and int(np.prod(param.shape)) >= MOMENTUM_MIN_SIZE
                and getattr(param, "regularizer", None) is None and not self._use_nesterov
                and self._regularization_method in ("", "l2_decay") and _wanted())
