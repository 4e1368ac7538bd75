"""A conv + batch norm + fc network under Momentum: named parameters, batch-norm statistics and velocities."""
import collections

import numpy as np
import paddle

TinyProgram = collections.namedtuple("TinyProgram", "program startup executor train_step")


def program_values(program):
    """Every variable of `program` as a NumPy array, by name."""
    return {name: np.array(tensor) for name, tensor in program.state_dict().items()}


def build_tiny_program():
    paddle.enable_static()
    with paddle.utils.unique_name.guard():
        program, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(program, startup):
            image = paddle.static.data("image", [None, 3, 8, 8], "float32")
            conv = paddle.nn.Conv2D(3, 4, 3, weight_attr=paddle.ParamAttr(name="conv1_weights"), bias_attr=False)
            norm = paddle.nn.BatchNorm2D(4, weight_attr=paddle.ParamAttr(name="bn_conv1_scale"),
                                         bias_attr=paddle.ParamAttr(name="bn_conv1_offset"), name="bn_conv1")
            fc = paddle.nn.Linear(4, 2, weight_attr=paddle.ParamAttr(name="fc_weights"),
                                  bias_attr=paddle.ParamAttr(name="fc_offset"))
            feature = fc(paddle.flatten(paddle.nn.functional.adaptive_avg_pool2d(norm(conv(image)), 1), 1))
            loss = paddle.mean(feature * feature)
            paddle.optimizer.Momentum(0.1, momentum=0.9).minimize(loss)
    executor = paddle.static.Executor(paddle.CPUPlace())
    executor.run(startup)
    batch = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    return TinyProgram(program, startup, executor,
                       lambda: executor.run(program, feed={"image": batch}, fetch_list=[loss]))
