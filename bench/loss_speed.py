"""Training-step time of every loss, and what the cross-batch memory adds to it, on CPU.

    python bench/loss_speed.py            # ResNet18, 3x64x64, batch 30, 512-d, memory of 8192: 1 to 15 minutes
    python bench/loss_speed.py --quick    # a smoke test at tiny sizes

For every loss of the registry (train_elem.py's and train_pair.py's; the triplet loss also with each --miner) a
`trainer.TrainingRun` is built from the scripts' own flags, and for every loss that can keep a cross-batch memory a
second one with --xbm_size=N and --xbm_start_iter=0, so that the memory is written and read from the first step.
Two things are timed for each:
  * the step: `TrainingRun.step` on one pre-made batch (decoded once by the real reader), --steps steps a round;
  * the loss alone: the loss (and its memory) built the same way on fixed --embedding_size features, forward and
    backward to the features, --loss_steps steps a round: what the loss adds to the network's step.
A run with the memory and the same loss without it take turns step by step (the first of each turn alternating), so
that the two of a pair meet the same load, and the configurations take turns inside each of --rounds rounds; the
first round starts each with an untimed step. The tables show medians over all steps:
  * XBM step overhead: the median over the paired steps of (with memory / without - 1): the goal is at most 15%,
    but on a machine shared with other work single steps vary by tens of percent;
  * memory's own: the loss alone with the memory minus without, in ms and as a share of the step without memory,
    the steadier figure: it times the memory's ops only.
"""
import argparse
import contextlib
import io
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import core  # noqa: E402,F401  (the CPU thread count, before paddle loads)
import numpy as np  # noqa: E402
import paddle  # noqa: E402

import losses  # noqa: E402
import train_elem  # noqa: E402
import train_pair  # noqa: E402
from bench import bench_flags  # noqa: E402
from bench.loss_runs import loss_variants  # noqa: E402
from core import trainer  # noqa: E402
from data.make_toy_sop import make_toy_sop  # noqa: E402

QUICK = ["--side=32", "--batch_size=6", "--embedding_size=8", "--xbm_size=12", "--steps=1", "--loss_steps=1",
         "--rounds=1", "--classes=6", "--losses=softmax,contrastive"]


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model", default="ResNet18", help="Backbone. Default: %(default)s.")
    add("--side", type=int, default=64, help="Input side (3xSxS). Default: %(default)s.")
    add("--batch_size", type=int, default=30, help="Training batch, divisible by 2 and 3 (pairs and triples). "
                                                   "Default: %(default)s.")
    add("--embedding_size", type=int, default=512, help="Embedding size. Default: %(default)s.")
    add("--xbm_size", type=int, default=8192, help="Cross-batch memory slots. Default: %(default)s.")
    add("--losses", default=",".join(losses.LOSSES), help="Comma-separated losses. Default: all.")
    add("--steps", type=int, default=5, help="Timed steps per measurement. Default: %(default)s.")
    add("--loss_steps", type=int, default=20, help="Timed steps per measurement of a loss alone. Default: "
                                                   "%(default)s.")
    add("--rounds", type=int, default=3, help="Measurements per configuration; medians are shown. Default: 3.")
    add("--classes", type=int, default=40, help="Products in the toy training split. Default: %(default)s.")
    add("--work_dir", default="/tmp/loss_speed", help="Data set and checkpoint directory. Default: %(default)s.")
    bench_flags.add_quick_flag(parser, QUICK)
    return parser


def parse_args(argv=None):
    args = bench_flags.parse_args(make_parser(), QUICK, argv)
    args.losses = bench_flags.registered_names("losses", args.losses, losses.LOSSES)
    bench_flags.check_pair_batch(args)
    bench_flags.check_at_least_one(args, ("steps", "loss_steps", "rounds", "side", "embedding_size"))
    return args


def configurations(loss_names, xbm_size):
    """(name, loss flags, the name of the same loss without memory or None) of every run to time."""
    runs = []
    for loss_name in loss_names:
        for name, flags, keeps_memory in loss_variants(loss_name):
            runs.append((name, flags, None))
            if keeps_memory:
                runs.append((name + " + XBM", dict(flags, xbm_size=xbm_size, xbm_start_iter=0), name))
    return runs


def parsed_flags(flags, args, data_dir):
    script = train_elem if losses.LOSSES[flags["loss_name"]].has_classifier else train_pair
    argv = ["--model=%s" % args.model, "--image_shape=3,%d,%d" % (args.side, args.side),
            "--train_batch_size=%d" % args.batch_size, "--embedding_size=%d" % args.embedding_size,
            "--data_dir=%s" % data_dir, "--use_gpu=False", "--num_workers=0", "--crop_scale_min=0.3",
            "--class_dim=%d" % args.classes, "--model_save_dir=%s" % os.path.join(args.work_dir, "output")]
    return script.make_parser().parse_args(argv + ["--%s=%s" % item for item in flags.items()])


def training_run(parsed):
    """The run and one batch of it."""
    with contextlib.redirect_stdout(io.StringIO()):  # its start-up log lines
        run = trainer.TrainingRun(parsed, trainer.prepare(parsed))
        batches = run.batches()
        with contextlib.closing(batches):
            return run, next(batches)


class LossAlone:
    """The loss of `parsed` (with its memory) on fed features: a step of it is forward and backward to them."""

    def __init__(self, parsed, features, labels):
        self.program, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.utils.unique_name.guard(), paddle.static.program_guard(self.program, startup):
            feature = paddle.static.data("feature", [None, features.shape[1]], "float32")
            feature.stop_gradient = False
            label = paddle.static.data("label", [None, 1], "int64")
            loss = losses.from_flags(parsed, len(labels))
            output = loss.loss(feature, label)
            mean = paddle.mean(output[0] if loss.has_classifier else output)
            self.fetch = [mean] + paddle.static.gradients([mean], [feature])
        self.executor = paddle.static.Executor(paddle.CPUPlace())
        self.executor.run(startup)
        self.feed = {"feature": features, "label": labels}

    def step(self):
        self.executor.run(self.program, feed=self.feed, fetch_list=self.fetch)


def overhead(with_memory, without):
    return with_memory / without - 1.0


def median_ms(seconds):
    return 1000 * statistics.median(seconds)


def print_tables(args, runs, step_times, loss_times):
    print("\nTraining step on %s 3x%dx%d, batch %d, %d-d embedding; memory: %d slots (medians of %d steps and %d "
          "steps of the loss alone)\n" % (args.model, args.side, args.side, args.batch_size, args.embedding_size,
                                          args.xbm_size, args.rounds * args.steps, args.rounds * args.loss_steps))
    print("| loss | ms/step | images/s | XBM step overhead | loss alone, ms | memory's own ms | memory's own / step |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, _, plain in runs:
        step, alone = step_times[name], loss_times[name]
        cells = ["-", "-", "-"]
        if plain is not None:
            paired = [overhead(with_memory, without) for with_memory, without in zip(step, step_times[plain])]
            own = median_ms(alone) - median_ms(loss_times[plain])
            cells = ["%+.1f%%" % (100 * statistics.median(paired)), "%.1f" % own,
                     "%.1f%%" % (100 * own / median_ms(step_times[plain]))]
        rate = args.batch_size / statistics.median(step)
        print("| %s | %.1f | %.1f | %s | %.1f | %s | %s |"
              % (name, median_ms(step), rate, cells[0], median_ms(alone), cells[1], cells[2]))
    sys.stdout.flush()


def timed(step):
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def take_turns(group, steps, times, warm_up):
    """Times `steps` steps of each run of `group` (one run, or a run and its memory twin) taking turns step by step,
    the first of a turn alternating, so that the two of a pair meet the same load. `group`: [(name, scope, step)]."""
    for repeat in range(steps + warm_up):
        for name, scope, step in group if repeat % 2 == 0 else group[::-1]:
            with paddle.static.scope_guard(scope):
                seconds = timed(step)
            if repeat >= warm_up:
                times.setdefault(name, []).append(seconds)


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    print("CPUs: %d, threads: %s, paddle %s, load average at start: %.2f"
          % (os.cpu_count(), os.environ.get("OMP_NUM_THREADS"), paddle.__version__, os.getloadavg()[0]), flush=True)
    data_dir = os.path.join(args.work_dir, "toy_%dclasses" % args.classes)
    make_toy_sop(data_dir, args.classes, 1, image_size=max(40, args.side * 5 // 4), seed=0, overwrite=True)
    paddle.enable_static()
    runs = configurations(args.losses, args.xbm_size)
    features = np.random.default_rng(0).standard_normal((args.batch_size, args.embedding_size)).astype("float32")
    steps, alone_steps, groups = {}, {}, []
    for name, flags, plain in runs:
        parsed = parsed_flags(flags, args, data_dir)
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            run, (images, labels) = training_run(parsed)
            alone = LossAlone(parsed, features, labels)
        steps[name] = (name, scope, lambda run=run, images=images, labels=labels:
                       run.step(images, labels, fetch_feature=False))
        alone_steps[name] = (name, scope, alone.step)
        if plain is None:
            groups.append([name])
        else:
            groups[-1].append(name)  # a memory run follows its plain run
    step_times, loss_times = {}, {}
    for round_index in range(args.rounds):
        for group in groups:
            take_turns([steps[name] for name in group], args.steps, step_times, warm_up=int(round_index == 0))
            take_turns([alone_steps[name] for name in group], args.loss_steps, loss_times, warm_up=1)
        print("round %d of %d done after %.0f s, load average %.2f"
              % (round_index + 1, args.rounds, time.time() - started, os.getloadavg()[0]), flush=True)
    print_tables(args, runs, step_times, loss_times)
    return step_times, loss_times


if __name__ == "__main__":
    main()
