"""oneDNN on CPU: the convolutions of a training program, and Paddle Inference's predictor for feature extraction.

Paddle 3.3.1's own switch, `FLAGS_use_mkldnn`, is read when the executor first lowers a program to kernels and moves
every op that has a oneDNN kernel onto oneDNN. Forward-only programs come out right and fast; training programs do
not (measured on this suite's programs, details in docs/benchmarks.md, "Why not Paddle's own switch"):
`pool2d_grad` of max pooling fails (`dnnl::error`: the gradient arrives in another memory layout than the forward
pass's workspace), `subtract_grad` and `divide_grad` return wrong gradients, `multiply`, `add` and `add_n` raise in
some backward passes, and with the in-place pass on, an op placed after a oneDNN op can overwrite that op's output.

Almost all of the time goes into convolutions, so `place_on_onednn` moves only those of a training program: it
rewrites each float32 `pd_op.conv2d` and `pd_op.conv2d_grad` into `onednn_op.conv2d` / `onednn_op.conv2d_grad`, the
same operation with the same attributes in Paddle's oneDNN dialect. The executor then runs exactly those ops with
oneDNN kernels and every other op (batch norm, pooling, the losses, the optimizer) with the default CPU kernels, in
that program only and with the global flag off. The network's mathematics is unchanged; results differ from the
default kernels by float32 rounding.

Features (eval.py, infer.py and the training scripts' periodic test) go through `InferenceExecutor`: Paddle
Inference's predictor, which folds batch norm into the convolutions and fuses relu and the residual additions into
them, from the weights as they are when it is made.
"""
import os
import tempfile

import numpy as np
import paddle
from paddle import pir
from paddle.base.libpaddle.pir import get_op_inplace_info

import utility

CONV_ATTRIBUTES = ("strides", "paddings", "padding_algorithm", "dilations", "groups", "data_format")
# op: (inputs, outputs, attributes it keeps, the oneDNN op's extra attributes as FLAGS_use_mkldnn's lowering sets them).
# Measured on this suite's ResNets (docs/benchmarks.md): oneDNN's batch-norm gradient is slow, its batch-norm forward
# pass does not fit Paddle's gradient, and oneDNN relu made steps slower and changed the losses; convolutions alone are
# fastest.
OPS = {
    "conv2d": (("input", "filter"), ("out",), CONV_ATTRIBUTES,
               {"mkldnn_data_type": "float32", "onednn_data_type": "", "is_test": False, "force_fp32_output": False}),
    "conv2d_grad": (("input", "filter", "out_grad"), ("input_grad", "filter_grad"), CONV_ATTRIBUTES,
                    {"is_test": False}),
}


def available():
    return paddle.base.core.is_compiled_with_onednn()


def wanted(use_gpu, use_mkldnn):
    """Whether to place ops on oneDNN: the --use_mkldnn flag, on a CPU run of a oneDNN build."""
    return use_mkldnn and not use_gpu and available()


def _float32_images_only(input_name):
    """Only float32 NCHW images: bfloat16 (AMP) convolutions already run on oneDNN with other extra attributes."""
    def constraint(match):
        tensor = match.Tensor(input_name)
        return tensor.dtype == paddle.float32 and len(tensor.shape) == 4
    return constraint


def _attribute(result, value):
    return result.BoolAttr(value) if isinstance(value, bool) else result.StrAttr(value)


def _rewrite_pattern(op_name):
    inputs, outputs, kept_attributes, extra_attributes = OPS[op_name]
    context = pir.DrrPatternContext()
    source = context.SourcePattern()
    found = source.Op("pd_op." + op_name, {name: source.Attr(name) for name in kept_attributes})
    found([source.Tensor(name) for name in inputs], [source.Tensor(name) for name in outputs])
    source.AddConstraint(_float32_images_only(inputs[0]))
    result = source.ResultPattern()
    attributes = {name: source.Attr(name) for name in kept_attributes}
    attributes.update({name: _attribute(result, value) for name, value in extra_attributes.items()})
    replacement = result.Op("onednn_op." + op_name, attributes)
    replacement([result.Tensor(name) for name in inputs], [result.Tensor(name) for name in outputs])
    return context


def place_on_onednn(program, executor):
    """Rewrites the float32 convolutions of a PIR training `program` and their gradients into oneDNN ops, in place.

    Call it after the program is complete (backward and optimizer included) and before its first run; `executor`
    is the CPU executor that will run it. Returns the number of oneDNN ops in the program afterwards.
    """
    # Lowering any program registers the oneDNN dialect; until then the rewrite would create nameless ops. The
    # caller's executor does the lowering: a throwaway one can be garbage-collected inside a forked reader worker,
    # and its destructor crashes there.
    executor.run(paddle.static.Program())
    passes = pir.PassManager()
    for op_name in OPS:
        passes.register_pass("place_%s_on_onednn" % op_name, _rewrite_pattern(op_name))
    passes.run(program)
    _skip_unused_input_gradients(program)
    _copy_before_in_place_updates(program)
    names = [op.name() for op in program.global_block().ops]
    if "" in names:
        raise RuntimeError("the oneDNN rewrite left unnamed ops in the program: is Paddle's oneDNN dialect missing?")
    return sum(name.startswith("onednn_op.") for name in names)


def _skip_unused_input_gradients(program):
    """Drops the input gradient of every oneDNN convolution gradient that nothing reads: the first convolution's,
    whose input is the image. Paddle's backward pass gives it one anyway; the oneDNN kernel skips an output whose
    value has no type (as an optional output that is absent), and that gradient was 15 ms of a 270 ms ResNet18 step
    at 3x64x64, batch 64 (its strided 7x7 backward-data convolution is oneDNN's slowest kind)."""
    absent = pir.Value().type()
    for op in program.global_block().ops:
        if op.name() == "onednn_op.conv2d_grad" and op.result(0).use_empty():
            op.result(0).set_type(absent)


def _updates_in_place(op, value):
    """Whether `op` writes its result into `value`'s memory (an in-place op such as all_reduce_)."""
    in_place_inputs = set(get_op_inplace_info(op).values())
    return any(operand.index() in in_place_inputs and operand.source().is_same(value) for operand in op.operands())


def _copy_before_in_place_updates(program):
    """Gives every in-place update of a oneDNN op's output a plain copy to update, read by all later users too.

    The executor converts a oneDNN result out of oneDNN's layout separately for each default-kernel op that reads it.
    An in-place op (the all-reduce that averages data-parallel gradients) then updates only its own converted copy,
    and the ops that should read the updated value (the division after the all-reduce) read another one: tests/
    test_distributed.py caught the unaveraged gradients.
    """
    for op in list(program.global_block().ops):
        if not op.name().startswith("onednn_op."):
            continue
        for value in op.results():
            users = value.all_used_ops()
            if not any(_updates_in_place(user, value) for user in users):
                continue
            with paddle.static.program_guard(program):
                pir.set_insertion_point_after(op)
                copy = paddle.assign(value)
                pir.reset_insertion_point_to_end()
            for user in users:
                for operand in user.operands():
                    if operand.source().is_same(value):
                        operand.set_source(copy)


class InferenceExecutor:
    """Runs a feature program through Paddle Inference's CPU predictor, with the weights `executor`'s scope holds now.

    The predictor's oneDNN passes fold batch norm into the convolutions and fuse relu and the residual additions into
    them: 6 to 12 times the default kernels (docs/benchmarks.md). It stands in for the `paddle.static.Executor` of
    that one program: `run(program, feed={"image": images}, fetch_list=[feature])` returns `[features]`. Training
    changes the weights, so the training scripts make a new one for each test.
    """

    def __init__(self, feature_program, executor):
        self.program, self.feature = feature_program.program, feature_program.feature
        with utility.signals_held(), tempfile.TemporaryDirectory() as directory:
            prefix = os.path.join(directory, "inference")
            paddle.static.save_inference_model(prefix, [feature_program.image], [feature_program.feature], executor,
                                               program=feature_program.program)
            config = paddle.inference.Config(prefix + ".json", prefix + ".pdiparams")
            config.disable_gpu()
            config.enable_mkldnn()
            # Paddle's default (a cache per input shape) also switches oneDNN's caching for the executor in this
            # thread: a ResNet18 training step ran at 128 instead of 204 images/s after a predictor had run.
            config.set_mkldnn_cache_capacity(0)
            self.threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
            config.set_cpu_math_library_num_threads(self.threads)
            config.disable_glog_info()
            self.predictor = paddle.inference.create_predictor(config)
        self.input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self.output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])

    def run(self, program, feed, fetch_list):
        if program is not self.program or list(feed) != ["image"] or len(fetch_list) != 1 \
                or fetch_list[0] is not self.feature:
            raise ValueError("an InferenceExecutor runs its feature program only: image in, feature out")
        self.input.copy_from_cpu(np.ascontiguousarray(feed["image"], dtype=np.float32))
        self.predictor.run()
        # A run leaves this thread's CPU math library on one thread, which would halve the speed of Paddle's default
        # kernels in the training that goes on after a test: batch norm, pooling, the losses (measured: a ResNet18
        # step on the default kernels at 3x224x224 went from 4.8 to 3.4 images/s, and from 2 busy cores to 1.1).
        paddle.base.core.set_num_threads(self.threads)
        return [self.output.copy_to_cpu()]
