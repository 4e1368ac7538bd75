"""The suite's CPU kernels (core/cpu_ops.py: batch norm with its relu or a residual block's join, the Momentum update,
the few-pixel convolution) against Paddle's own, in the training step of a oneDNN run.

    python bench/cpu_ops_speed.py --models=ResNet18,ResNet50 --sides=64,224 --batch_sizes=32,8

For each model, input and loss it builds the training program four times in one process: on all the suite's
kernels, on all but the convolution (cpu_ops.CONV_MAX_OUTPUT_PIXELS = 0), on all but the fused residual joins
(cpu_ops.FUSE_RESIDUAL_JOINS = False: Paddle's addition and relu after the suite's batch norm), and with
METRIC_LEARNING_CPU_OPS=0 (Paddle's kernels throughout); places each on oneDNN as the scripts do, and times them in
turns: --rounds rounds of --steps steps each, the order rotated every round, on one pre-made batch. The table shows
each program's median images/s and the medians of the rounds' ratios, so that the machine's load, which moves all
alike within a round, cancels.
"""
import argparse
import contextlib
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import core  # noqa: E402,F401  (the CPU thread count, before paddle loads)
import numpy as np  # noqa: E402
import paddle  # noqa: E402

import losses  # noqa: E402
import models  # noqa: E402
from bench import bench_flags  # noqa: E402
from bench.timing import images_per_second  # noqa: E402
from core import cpu_ops, native_build, onednn, programs  # noqa: E402

QUICK_FLAGS = ["--models=ResNet18", "--sides=32", "--batch_sizes=4", "--losses=arcmargin", "--steps=1", "--rounds=2"]
CLASSES = 40
LOSSES = {  # the two heads train_throughput.py times by default: a classifier's and a pair loss's
    "arcmargin": lambda batch_size: losses.ArcMarginLoss(class_dim=CLASSES),
    "eml": lambda batch_size: losses.EmlLoss(batch_size, 2),
}


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    bench_flags.add_training_grid_flags(parser)
    add("--steps", type=int, default=4, help="Timed steps per program and round. Default: %(default)s.")
    add("--rounds", type=int, default=8, help="Rounds (each program first in a quarter of them); medians are shown. "
        "Default: %(default)s.")
    bench_flags.add_quick_flag(parser, QUICK_FLAGS)
    return parser


def parse_args(argv=None):
    args = bench_flags.parse_args(make_parser(), QUICK_FLAGS, argv)
    bench_flags.check_training_grid(args, models.MODELS, LOSSES)
    bench_flags.check_at_least_one(args, ["steps", "rounds"])
    return args


# Each program timed: (the suite's kernels switched on, the largest convolution output they take in pixels, the
# residual joins fused into the batch norm).
VARIANTS = {"suite": (True, cpu_ops.CONV_MAX_OUTPUT_PIXELS, True), "without_conv": (True, 0, True),
            "without_join": (True, cpu_ops.CONV_MAX_OUTPUT_PIXELS, False), "paddle": (False, 0, False)}


@contextlib.contextmanager
def suite_kernels_taking(conv_pixels, fused_joins):
    """Inside, the suite's convolution takes outputs of at most `conv_pixels` pixels, and residual joins are fused
    into the batch norm if `fused_joins`."""
    previous = cpu_ops.CONV_MAX_OUTPUT_PIXELS, cpu_ops.FUSE_RESIDUAL_JOINS
    cpu_ops.CONV_MAX_OUTPUT_PIXELS, cpu_ops.FUSE_RESIDUAL_JOINS = conv_pixels, fused_joins
    try:
        yield
    finally:
        cpu_ops.CONV_MAX_OUTPUT_PIXELS, cpu_ops.FUSE_RESIDUAL_JOINS = previous


def training_step(model, side, batch_size, loss_name, variant):
    """One step of the oneDNN training program of `variant` (in a scope of its own), as a function of no arguments;
    its `program` attribute is the program."""
    on, conv_pixels, fused_joins = VARIANTS[variant]
    loss = LOSSES[loss_name](batch_size)
    scope = paddle.static.Scope()
    with native_build.switched(on), suite_kernels_taking(conv_pixels, fused_joins), paddle.static.scope_guard(scope):
        train_program = programs.build_train_program(model, 0, (3, side, side), loss, 0.01, seed=0,
                                                     data_format=onednn.DATA_FORMAT)
        executor = paddle.static.Executor(paddle.CPUPlace())
        executor.run(train_program.startup)
        onednn.place_on_onednn(train_program.program, executor)
    rng = np.random.default_rng(0)
    feed = {"image": rng.standard_normal((batch_size, 3, side, side)).astype("float32"),
            "label": (np.arange(batch_size) % CLASSES if loss.has_classifier  # else pairs of a class
                      else np.repeat(np.arange(batch_size // 2), 2)).reshape(-1, 1).astype("int64")}

    def step():
        with paddle.static.scope_guard(scope):
            executor.run(train_program.program, feed=feed, fetch_list=[train_program.loss])
    step.program = train_program.program
    return step


def compare(steps_by_variant, batch_size, steps, rounds):
    """Images/s of each variant per round, in turns, the order rotated every round (all warmed up first)."""
    names = list(steps_by_variant)
    rates = {name: [] for name in names}
    for step in steps_by_variant.values():
        step()
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            rates[name].append(images_per_second(steps_by_variant[name], batch_size, steps, warm_up=False))
    return rates


def summary(rates):
    """(median images/s on all the suite's kernels, on all but the convolution, on all but the fused joins, on
    Paddle's; medians of the rounds' ratios of the first to the fourth, the second and the third)."""
    def median_ratio(name):
        return statistics.median(ours / theirs for ours, theirs in zip(rates["suite"], rates[name]))
    return (statistics.median(rates["suite"]), statistics.median(rates["without_conv"]),
            statistics.median(rates["without_join"]), statistics.median(rates["paddle"]), median_ratio("paddle"),
            median_ratio("without_conv"), median_ratio("without_join"))


def main(argv=None):
    args = parse_args(argv)
    paddle.enable_static()
    if cpu_ops.load() is None:
        sys.exit("the suite's CPU kernels could not be built here: nothing to compare")
    print("CPUs: %d, threads: %s, paddle %s" % (os.cpu_count(), os.environ.get("OMP_NUM_THREADS"), paddle.__version__))
    results = {}
    for model in args.models:
        for side, batch_size in zip(args.sides, args.batch_sizes):
            for loss_name in args.losses:
                steps = {variant: training_step(model, side, batch_size, loss_name, variant) for variant in VARIANTS}
                results[(model, side, batch_size, loss_name)] = compare(steps, batch_size, args.steps, args.rounds)
                print("%s 3x%dx%d batch %d %s done" % (model, side, side, batch_size, loss_name), flush=True)
    print("\n| model | input | batch | loss | suite's kernels | all but the convolution | all but the fused joins "
          "| Paddle's kernels | suite / Paddle | suite / all but the convolution | suite / all but the fused joins |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for (model, side, batch_size, loss_name), rates in results.items():
        print("| %s | 3x%dx%d | %d | %s | %.1f | %.1f | %.1f | %.1f | %.3f | %.3f | %.3f |"
              % ((model, side, side, batch_size, loss_name) + summary(rates)))
    return results


if __name__ == "__main__":
    main()
