"""oneDNN on CPU: the convolutions and max pooling of a training program (features go through Paddle Inference's
predictor, core/predictor.py).

Paddle 3.3.1's own switch, `FLAGS_use_mkldnn`, is read when the executor first lowers a program to kernels and moves
every op that has a oneDNN kernel onto oneDNN. Forward-only programs come out right and fast; training programs do
not (measured on this suite's programs, details in docs/benchmarks.md, "Why not Paddle's own switch"):
`subtract_grad` and `divide_grad` return wrong gradients, `multiply`, `add` and `add_n` raise in some backward
passes, and with the in-place pass on, an op placed after a oneDNN op can overwrite that op's output.

Almost all of the time goes into convolutions, so `place_on_onednn` moves only those of a training program and its
max pooling: it rewrites each float32 `pd_op.conv2d` / `pd_op.conv2d_grad` and max-pooling `pd_op.pool2d` /
`pd_op.pool2d_grad` into the `onednn_op.` op of the same name, the same operation with the same attributes in
Paddle's oneDNN dialect. The executor then runs exactly those ops with oneDNN kernels and every other op with the
default CPU kernels (batch norm, relu and the Momentum update with the suite's, cpu_ops.py), in that program only and
with the global flag off.
The network's mathematics is unchanged; results differ from the default kernels by float32 rounding.

Such a program is built channels-last (`training_data_format`, models/resnet.py): oneDNN's forward convolutions
read and write NHWC whatever the network's layout, so in an NCHW network every convolution output is converted to
NCHW for batch norm and back, a third of a step's layout conversions; in NHWC they are shared as they are.
"""

import paddle
from paddle import pir
from paddle.base.libpaddle.pir import get_op_inplace_info


# The layout of the activations of a training program whose convolutions run on oneDNN (see the module docstring).
DATA_FORMAT = "NHWC"
CONV_ATTRIBUTES = ("strides", "paddings", "padding_algorithm", "dilations", "groups", "data_format")
POOL_ATTRIBUTES = ("strides", "paddings", "ceil_mode", "exclusive", "data_format", "pooling_type", "global_pooling",
                   "adaptive", "padding_algorithm")
ONEDNN_EXTRA = {"mkldnn_data_type": "float32", "onednn_data_type": "", "use_quantizer": False, "is_test": False}
# op: (inputs, outputs, attributes it keeps, the oneDNN op's extra attributes as FLAGS_use_mkldnn's lowering sets them).
# Measured on this suite's ResNets (docs/benchmarks.md): oneDNN's batch norm takes 5-21 ms a call here, channels-last
# too (Paddle's under 1 ms), and keeps its own saved statistics; oneDNN relu made steps slower and changed the losses.
# Convolutions and max pooling it is; batch norm, relu and the Momentum update run on the suite's own multithreaded
# kernels (cpu_ops.py) in these programs.
OPS = {
    "conv2d": (("input", "filter"), ("out",), CONV_ATTRIBUTES,
               {"mkldnn_data_type": "float32", "onednn_data_type": "", "is_test": False, "force_fp32_output": False}),
    "conv2d_grad": (("input", "filter", "out_grad"), ("input_grad", "filter_grad"), CONV_ATTRIBUTES,
                    {"is_test": False}),
    "pool2d": (("x", "kernel_size"), ("out",), POOL_ATTRIBUTES, ONEDNN_EXTRA),
    # The oneDNN gradient takes the kernel size as an attribute, not as the tensor Paddle's does.
    "pool2d_grad": (("x", "out", "out_grad"), ("x_grad",), POOL_ATTRIBUTES, ONEDNN_EXTRA),
}
# bfloat16 (AMP) convolutions run on oneDNN whatever the flags, as no other CPU kernel has them; but lowered from
# pd_op.conv2d, the forward pass converts its bfloat16 operands to float32 and convolves in float32. As onednn_op.conv2d
# with this attribute it convolves in bfloat16 (AVX512-BF16), as PyTorch's autocast does.
BFLOAT16_EXTRA = {"mkldnn_data_type": "bfloat16", "onednn_data_type": "bfloat16"}
# The convolution gradients that run on oneDNN: the rewritten float32 ones, and bfloat16 (AMP) ones, which have no
# other CPU kernel.
CONV_GRADIENT_OPS = ("onednn_op.conv2d_grad", "pd_op.conv2d_grad")


def available():
    return paddle.base.core.is_compiled_with_onednn()


def wanted(use_gpu, use_mkldnn):
    """Whether to place ops on oneDNN: the --use_mkldnn flag, on a CPU run of a oneDNN build."""
    return use_mkldnn and not use_gpu and available()


def training_data_format(use_gpu, use_mkldnn):
    """The activations' layout for a training program: `DATA_FORMAT` when `place_on_onednn` will rewrite it (see
    `wanted`), else NCHW.

    The executor reads oneDNN results back into the layout of the last NHWC tensor a oneDNN kernel took in the thread,
    and never goes back to NCHW: after a channels-last oneDNN program has run, an NCHW program whose convolutions run
    on oneDNN (bfloat16 AMP with --use_mkldnn=False) would get its results in the wrong layout in that thread. The
    training scripts run one training program per process.
    """
    return DATA_FORMAT if wanted(use_gpu, use_mkldnn) else "NCHW"


def _images_only(input_name, dtype=paddle.float32):
    """Only 4-D `dtype` images."""
    def constraint(match):
        tensor = match.Tensor(input_name)
        return tensor.dtype == dtype and len(tensor.shape) == 4
    return constraint


def _attribute(result, value):
    return result.BoolAttr(value) if isinstance(value, bool) else result.StrAttr(value)


def _rewrite_pattern(op_name, kernel_size=None, dtype=paddle.float32):
    """The DRR rewrite of `dtype` pd_op.`op_name` into onednn_op.`op_name`; for pool2d_grad, of those with
    `kernel_size` (an attribute of the oneDNN op)."""
    inputs, outputs, kept_attributes, extra_attributes = OPS[op_name]
    if dtype == paddle.bfloat16:
        extra_attributes = dict(extra_attributes, **BFLOAT16_EXTRA)
    context = pir.DrrPatternContext()
    source = context.SourcePattern()
    source_inputs = inputs
    if op_name == "pool2d_grad":
        source.Op("pd_op.full_int_array", {"value": source.Attr("kernel_size_value")})(
            [], [source.Tensor("kernel_size")])
        source_inputs = inputs + ("kernel_size",)
    found = source.Op("pd_op." + op_name, {name: source.Attr(name) for name in kept_attributes})
    found([source.Tensor(name) for name in source_inputs], [source.Tensor(name) for name in outputs])
    source.AddConstraint(_images_only(inputs[0], dtype))
    if op_name.startswith("pool2d"):
        source.AddConstraint(lambda match: _is_max_pooling(match.Tensor(outputs[0]).get_defining_op(), kernel_size))
    result = source.ResultPattern()
    attributes = {name: source.Attr(name) for name in kept_attributes}
    attributes.update({name: _attribute(result, value) for name, value in extra_attributes.items()})
    if op_name == "pool2d_grad":
        attributes["kernel_size"] = result.VectorInt64Attr(kernel_size)
    replacement = result.Op("onednn_op." + op_name, attributes)
    replacement([result.Tensor(name) for name in inputs], [result.Tensor(name) for name in outputs])
    return context


def _is_max_pooling(op, kernel_size=None):
    """A max pooling (or its gradient) with a fixed window: the ResNet stem's; `kernel_size`, if given, its window."""
    attributes = op.attrs()
    if attributes["pooling_type"] != "max" or attributes["adaptive"] or attributes["global_pooling"]:
        return False
    return kernel_size is None or _kernel_size(op) == kernel_size


def _kernel_size(pooling_op):
    return list(pooling_op.operand_source(pooling_op.num_operands() - 1).get_defining_op().attrs()["value"])


def place_on_onednn(program, executor):
    """Rewrites the float32 convolutions and max pooling of a PIR training `program` and their gradients into oneDNN
    ops, in place.

    Build the program in `training_data_format(...)`. Call this after the program is complete (backward and
    optimizer included) and before its first run; `executor` is the CPU executor that will run it. Returns the number
    of oneDNN convolutions (forward and gradient) in the program afterwards.
    """
    # Lowering any program registers the oneDNN dialect; until then the rewrite would create nameless ops. The
    # caller's executor does the lowering: a throwaway one can be garbage-collected inside a forked reader worker,
    # and its destructor crashes there.
    executor.run(paddle.static.Program())
    kernel_sizes = _own_kernel_sizes_for_pooling_gradients(program)
    passes = pir.PassManager()
    for op_name in OPS:
        if op_name != "pool2d_grad":
            passes.register_pass("place_%s_on_onednn" % op_name, _rewrite_pattern(op_name))
    for index, kernel_size in enumerate(kernel_sizes):
        passes.register_pass("place_pool2d_grad_%d_on_onednn" % index, _rewrite_pattern("pool2d_grad", kernel_size))
    passes.register_pass("place_bfloat16_conv2d_on_onednn", _rewrite_pattern("conv2d", dtype=paddle.bfloat16))
    passes.run(program)
    _skip_unused_input_gradients(program)
    _keep_filter_gradients_oihw(program)
    _convert_for_custom_ops(program)
    _copy_before_in_place_updates(program)
    _keep_shared_results_from_in_place_reuse(program)
    names = [op.name() for op in program.global_block().ops]
    if "" in names:
        raise RuntimeError("the oneDNN rewrite left unnamed ops in the program: is Paddle's oneDNN dialect missing?")
    return sum(name in ("onednn_op.conv2d", "onednn_op.conv2d_grad") for name in names)


def _own_kernel_sizes_for_pooling_gradients(program):
    """Gives each max-pooling gradient a kernel-size tensor of its own (Paddle's backward pass shares the forward
    pass's), so that the rewrite can match it and turn it into the oneDNN op's attribute; returns the sizes found."""
    kernel_sizes = []
    for op in list(program.global_block().ops):
        if op.name() != "pd_op.pool2d_grad" or not _is_max_pooling(op):
            continue
        kernel_size = _kernel_size(op)
        with paddle.static.program_guard(program):
            pir.set_insertion_point(op)
            own = paddle._C_ops.full_int_array(kernel_size, paddle.int64, paddle.CPUPlace())
            pir.reset_insertion_point_to_end()
        op.operand(op.num_operands() - 1).set_source(own)
        if kernel_size not in kernel_sizes:
            kernel_sizes.append(kernel_size)
    return kernel_sizes


def _skip_unused_input_gradients(program):
    """Drops the input gradient of every oneDNN convolution gradient that nothing reads: the first convolution's,
    whose input is the image. Paddle's backward pass gives it one anyway; the oneDNN kernel skips an output whose
    value has no type (as an optional output that is absent), and that gradient was 15 ms of a 270 ms ResNet18 step
    at 3x64x64, batch 64 (its strided 7x7 backward-data convolution is oneDNN's slowest kind)."""
    absent = pir.Value().type()
    for op in program.global_block().ops:
        if op.name() == "onednn_op.conv2d_grad" and op.result(0).use_empty():
            op.result(0).set_type(absent)


def _is_channels_last_filter_gradient(value):
    op = value.get_defining_op()
    return (op is not None and op.name() in CONV_GRADIENT_OPS and op.result(1).is_same(value)
            and op.attrs().get("data_format") == "NHWC")


def _keep_filter_gradients_oihw(program):
    """Reads the filter gradients of channels-last convolutions out of oneDNN as OIHW, as the parameters are.

    The executor converts a oneDNN result for Paddle's kernels into the layout of the last NHWC tensor oneDNN took in
    this thread (`cur_paddle_data_layout`, set by any NHWC convolution input), and for a filter gradient that is
    wrong: OHWI memory with dimensions [O, H, W, I], which momentum would apply to the OIHW weights. Flattened by a
    oneDNN reshape to [O, I*H*W], a 2-D result, the gradient comes out in its logical OIHW order (2-D tensors have
    one layout only), and Paddle's reshape gives it back its shape.
    """
    flattened = False
    for op in list(program.global_block().ops):
        if op.name() not in CONV_GRADIENT_OPS or op.attrs().get("data_format") != "NHWC":
            continue
        gradient = op.result(1)
        users = gradient.all_used_ops()
        if not users:
            continue
        shape = list(gradient.shape)
        with paddle.static.program_guard(program):
            pir.set_insertion_point_after(op)
            oihw = paddle.reshape(paddle.reshape(gradient, [shape[0], -1]), shape)
            pir.reset_insertion_point_to_end()
        for user in users:
            for operand in user.operands():
                if operand.source().is_same(gradient):
                    operand.set_source(oihw)
        flattened = True
    if flattened:
        passes = pir.PassManager()
        passes.register_pass("flatten_filter_gradients_on_onednn", _flatten_filter_gradient_pattern())
        passes.run(program)


def _flatten_filter_gradient_pattern():
    context = pir.DrrPatternContext()
    source = context.SourcePattern()
    source.Op("pd_op.reshape")([source.Tensor("x"), source.Tensor("shape")], [source.Tensor("out")])
    source.AddConstraint(lambda match: _is_channels_last_filter_gradient(match.Tensor("x")))
    result = source.ResultPattern()
    flatten = result.Op("onednn_op.reshape", {name: _attribute(result, ONEDNN_EXTRA[name])
                                              for name in ("mkldnn_data_type", "onednn_data_type", "use_quantizer")})
    flatten([result.Tensor("x"), result.Tensor("shape")], [result.Tensor("out")])
    return context


def _convert_for_custom_ops(program):
    """Puts a reshape to its own shape, a Paddle op that shares the data, between each oneDNN result and the custom ops
    (cpu_ops.py) that read it.

    The executor converts a oneDNN result out of oneDNN's memory layout before each Paddle op that reads it, but not
    before a custom op, which then read blocked memory as if it were plain: an NCHW network's filter gradients reached
    the Momentum update permuted (tests/test_cpu_ops.py). For a channels-last convolution output the conversion is
    free.
    """
    for op in list(program.global_block().ops):
        if not op.name().startswith("custom_op."):
            continue
        for operand in op.operands():
            source = operand.source()
            producer = source.get_defining_op()
            if producer is None or not producer.name().startswith("onednn_op."):
                continue
            with paddle.static.program_guard(program):
                pir.set_insertion_point(op)
                converted = paddle.reshape(source, [0] * len(source.shape))
                pir.reset_insertion_point_to_end()
            operand.set_source(converted)


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


# Ops whose in-place variant writes no data into their first operand: the copy below (an identity transpose), and
# the reshape of `_convert_for_custom_ops`, which only relabels the shape.
_WRITE_NO_DATA = ("pd_op.transpose", "pd_op.reshape")


def _may_reuse_in_place(op, index):
    """Whether the executor's in-place pass may write `op`'s result into its operand `index`: Paddle ops that have an
    in-place variant (`add` -> `add_`, `relu` -> `relu_`, ...) take over their first operand, when its dtype is the
    result's and nothing reads it afterwards."""
    if op.name().startswith("onednn_op.") or not op.name().startswith("pd_op.") or op.name().endswith("_"):
        return False
    if not hasattr(paddle._C_ops, op.name()[len("pd_op."):] + "_") or op.name() in _WRITE_NO_DATA:
        return False
    return index == 0 and op.num_results() > 0 and op.result(0).dtype == op.operand_source(0).dtype


def _keep_shared_results_from_in_place_reuse(program):
    """Gives a private copy of a oneDNN result to each Paddle op that the in-place pass could let overwrite it while
    other ops still read it.

    When a oneDNN result is already in the layout Paddle's kernel wants (NHWC max pooling, channels-last convolution
    outputs), each conversion for a Paddle op shares its memory, and the executor's in-place pass, which sees only
    the conversion's value, lets an op such as `add` write its sum into it: the max-pooling gradient then read the
    sum instead of the pooling output (measured: ResNet18's res2a gradients off by 100%). The ResNets add the
    shortcut second, so that `add` overwrites the branch's batch-norm output instead, and no copy is needed there.
    A copy is an identity transpose, an op the in-place pass leaves alone.
    """
    for op in list(program.global_block().ops):
        if not op.name().startswith("onednn_op."):
            continue
        for value in op.results():
            users = value.all_used_ops()
            if len(users) < 2:
                continue
            for user in users:
                at_risk = [operand for operand in user.operands()
                           if operand.source().is_same(value) and _may_reuse_in_place(user, operand.index())]
                if not at_risk:
                    continue
                with paddle.static.program_guard(program):
                    pir.set_insertion_point(user)
                    copy = paddle.transpose(value, list(range(len(value.shape))))
                    pir.reset_insertion_point_to_end()
                for operand in at_risk:
                    operand.set_source(copy)
