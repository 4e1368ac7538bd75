"""One training process for tests/test_distributed.py, started by `python -m paddle.distributed.launch` or alone.

    python tests/data_parallel_worker.py DUMP_DIR train_elem|train_pair --flag=value ...

Trains through trainer.TrainingRun exactly as the scripts do, then writes this process's variables (parameters,
velocities, batch-norm statistics) to DUMP_DIR/rank<N>.npz, also when training stopped on a signal.
`--model=TinyNet` is a small network without batch norm, for which processes on parts of a batch must compute
exactly what one process computes on the whole batch.
"""
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import core  # noqa: E402,F401  (sets the CPU thread count before Paddle loads)
import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddle.nn.functional as F  # noqa: E402
from paddle import ParamAttr, nn  # noqa: E402

import models  # noqa: E402
import train_elem  # noqa: E402
import train_pair  # noqa: E402
from core import trainer  # noqa: E402

SCRIPTS = {"train_elem": train_elem, "train_pair": train_pair}


class TinyNet:
    """conv 3×3 stride 2 → relu → 2×2 average pooling → a 16-d feature; no batch norm."""

    def net(self, input, embedding_size=0, is_test=False):
        conv = nn.Conv2D(input.shape[1], 4, 3, stride=2, weight_attr=ParamAttr(name="tiny_conv_weights"),
                         bias_attr=ParamAttr(name="tiny_conv_offset"))
        return paddle.flatten(nn.AdaptiveAvgPool2D(2)(F.relu(conv(input))), start_axis=1)


def main(dump_dir, script_name, flags):
    models.MODELS["TinyNet"] = TinyNet
    script = SCRIPTS[script_name]
    args = script.make_parser().parse_args(flags)
    run = trainer.TrainingRun(args, trainer.prepare(args, paddle.distributed.ParallelEnv().rank))
    with open(os.path.join(dump_dir, "pid%d" % run.rank), "w") as pid_file:
        pid_file.write(str(os.getpid()))
    try:
        run.run()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the launcher repeats its SIGTERM 0.2 s and 0.4 s later
        state = run.train_program.program.state_dict()
        np.savez(os.path.join(dump_dir, "rank%d.npz" % run.rank),
                 **{name: np.array(value) for name, value in state.items()})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
