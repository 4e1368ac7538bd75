"""oneDNN kernels for chosen ops of one static program: the fast path for CPU training and feature extraction.

Paddle 3.3.1's own switch, `FLAGS_use_mkldnn`, is read when the executor first lowers a program to kernels and moves
every op that has a oneDNN kernel onto oneDNN. Forward-only programs come out right and fast; training programs do
not (measured on this suite's programs, details in the README under "Training and feature-extraction speed"):
`pool2d_grad` of max pooling fails (`dnnl::error`: the gradient arrives in another memory layout than the forward
pass's workspace), `subtract_grad` and `divide_grad` return wrong gradients, `multiply`, `add` and `add_n` raise in
some backward passes, and with the in-place pass on, an op placed after a oneDNN op can overwrite that op's output.

Almost all of the time goes into convolutions, so this module moves only chosen ops of one program: `place_on_onednn`
rewrites, say, each float32 `pd_op.conv2d` and `pd_op.conv2d_grad` into `onednn_op.conv2d` / `onednn_op.conv2d_grad`,
the same operation with the same attributes in Paddle's oneDNN dialect. The executor then runs exactly those ops with
oneDNN kernels and every other op (in training: batch norm, pooling, the losses, the optimizer) with the default CPU
kernels, in that program only and with the global flag off. The network's mathematics is unchanged; results differ
from the default kernels by float32 rounding.

Where the weights no longer change (eval.py, infer.py), `InferenceExecutor` goes further: Paddle Inference's predictor
folds batch norm into the convolutions and fuses relu and the residual additions into them.
"""
import os
import tempfile

import numpy as np
import paddle
from paddle import pir
from paddle.base.libpaddle.pir import get_op_inplace_info

CONV_ATTRIBUTES = ("strides", "paddings", "padding_algorithm", "dilations", "groups", "data_format")
BATCH_NORM_ATTRIBUTES = ("is_test", "momentum", "epsilon", "data_format", "use_global_stats", "trainable_statistics")
POOL_ATTRIBUTES = ("pooling_type", "strides", "paddings", "ceil_mode", "exclusive", "data_format", "global_pooling",
                   "adaptive", "padding_algorithm")
FLOAT32 = {"mkldnn_data_type": "float32", "onednn_data_type": ""}
# op: (inputs, outputs, attributes it keeps, the oneDNN op's extra attributes as FLAGS_use_mkldnn's lowering sets them)
OPS = {
    "conv2d": (("input", "filter"), ("out",), CONV_ATTRIBUTES, dict(FLOAT32, is_test=False, force_fp32_output=False)),
    "conv2d_grad": (("input", "filter", "out_grad"), ("input_grad", "filter_grad"), CONV_ATTRIBUTES,
                    {"is_test": False}),
    "batch_norm_": (("x", "mean", "variance", "scale", "bias"),
                    ("out", "mean_out", "variance_out", "saved_mean", "saved_variance", "reserve_space"),
                    BATCH_NORM_ATTRIBUTES, {"fuse_with_relu": False}),
    "relu": (("x",), ("out",), (), FLOAT32),
    "pool2d": (("x", "kernel_size"), ("out",), POOL_ATTRIBUTES, dict(FLOAT32, use_quantizer=False, is_test=False)),
    "add": (("x", "y"), ("out",), (), dict(FLOAT32, use_quantizer=False, scale_x=1.0, scale_y=1.0, scale_out=1.0)),
}
# Measured on this suite's ResNets (README): in training, oneDNN's batch-norm gradient is slow, its forward pass does
# not fit Paddle's gradient, and oneDNN relu made steps slower and changed the losses; in forward-only programs the
# whole chain on oneDNN is about 10% faster than convolutions alone.
TRAINING_OPS = ("conv2d", "conv2d_grad")
FEATURE_OPS = ("conv2d", "batch_norm_", "relu", "pool2d", "add")


def available():
    return paddle.base.core.is_compiled_with_onednn()


def wanted(use_gpu, use_mkldnn):
    """Whether to place ops on oneDNN: the --use_mkldnn flag, on a CPU run of a oneDNN build."""
    return use_mkldnn and not use_gpu and available()


def _image_tensors_only(input_names):
    """Only float32 NCHW images: bfloat16 (AMP) ops already run on oneDNN with other extra attributes, and the
    losses' 1-D and 2-D ops stay on the default kernels."""
    def constraint(match):
        tensors = [match.Tensor(name) for name in input_names]
        return all(tensor.dtype == paddle.float32 and len(tensor.shape) == 4 for tensor in tensors)
    return constraint


def _attribute(result, value):
    if isinstance(value, bool):
        return result.BoolAttr(value)
    if isinstance(value, float):
        return result.Float32Attr(value)
    return result.StrAttr(value)


def _rewrite_pattern(op_name):
    inputs, outputs, kept_attributes, extra_attributes = OPS[op_name]
    context = pir.DrrPatternContext()
    source = context.SourcePattern()
    found = source.Op("pd_op." + op_name, {name: source.Attr(name) for name in kept_attributes})
    found([source.Tensor(name) for name in inputs], [source.Tensor(name) for name in outputs])
    source.AddConstraint(_image_tensors_only(inputs[:2] if op_name == "add" else inputs[:1]))
    result = source.ResultPattern()
    attributes = {name: source.Attr(name) for name in kept_attributes}
    attributes.update({name: _attribute(result, value) for name, value in extra_attributes.items()})
    replacement = result.Op("onednn_op." + op_name, attributes)
    replacement([result.Tensor(name) for name in inputs], [result.Tensor(name) for name in outputs])
    return context


def place_on_onednn(program, executor, op_names):
    """Rewrites the float32 image ops of a PIR `program` named in `op_names` (`TRAINING_OPS` or `FEATURE_OPS`)
    into oneDNN ops, in place.

    Call it after the program is complete (backward and optimizer included) and before its first run; `executor`
    is the CPU executor that will run it. Returns the number of oneDNN ops in the program afterwards.
    """
    # Lowering any program registers the oneDNN dialect; until then the rewrite would create nameless ops. The
    # caller's executor does the lowering: a throwaway one can be garbage-collected inside a forked reader worker,
    # and its destructor crashes there.
    executor.run(paddle.static.Program())
    passes = pir.PassManager()
    for op_name in op_names:
        passes.register_pass("place_%s_on_onednn" % op_name, _rewrite_pattern(op_name))
    passes.run(program)
    _copy_before_in_place_updates(program)
    names = [op.name() for op in program.global_block().ops]
    if "" in names:
        raise RuntimeError("the oneDNN rewrite left unnamed ops in the program: is Paddle's oneDNN dialect missing?")
    return sum(name.startswith("onednn_op.") for name in names)


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
    """Runs a feature program with final weights (eval.py, infer.py) through Paddle Inference's CPU predictor.

    The predictor's oneDNN passes fold batch norm into the convolutions and fuse relu and the residual additions into
    them, which a program that training shares its weights with cannot do: 1.1 to 1.5 times the speed of
    `place_on_onednn(..., FEATURE_OPS)` (README). It stands in for the `paddle.static.Executor` of that one program:
    `run(program, feed={"image": images}, fetch_list=[feature])` returns `[features]`. Once the predictor has run, the
    executor's oneDNN kernels in the same process are slower (a ResNet18 training step by about 40%): use it in
    processes that only extract features.
    """

    def __init__(self, feature_program, executor):
        self.program, self.feature = feature_program.program, feature_program.feature
        with tempfile.TemporaryDirectory() as directory:
            prefix = os.path.join(directory, "inference")
            paddle.static.save_inference_model(prefix, [feature_program.image], [feature_program.feature], executor,
                                               program=feature_program.program)
            config = paddle.inference.Config(prefix + ".json", prefix + ".pdiparams")
            config.disable_gpu()
            config.enable_mkldnn()
            config.set_cpu_math_library_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
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
        return [self.output.copy_to_cpu()]
