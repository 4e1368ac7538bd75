"""Images per second of a training step and of feature extraction: Paddle's static programs with oneDNN
convolutions and with the default kernels, in bfloat16 AMP, the step end to end through the real reader, Paddle's
dynamic mode, and PyTorch as a reference; or, with --use_gpu=True, the same on a GPU in float32 and float16 AMP.

    python bench/train_throughput.py            # the tables of docs/benchmarks.md: about 15 minutes on 2 cores
    python bench/train_throughput.py --quick    # a smoke test at tiny sizes, well under a minute
    python bench/train_throughput.py --models=ResNet50 --sides=224 --batch_sizes=64 --steps=10 --rounds=3
    python bench/train_throughput.py --use_gpu=True --batch_sizes=256,64 --feature_batch_sizes=256,64

For every model x input side x loss, two `trainer.TrainingRun`s built from the training scripts' own flags, one with
--use_mkldnn=True (the default: convolutions on oneDNN, see onednn.py) and one with --use_mkldnn=False (Paddle's
default CPU kernels), are timed:
  * compute: `TrainingRun.step` on one pre-made batch, fed again every step;
  * end to end (oneDNN run only): `TrainingRun.step` fed by `TrainingRun.batches()`, the reader decoding the JPEGs of
    a toy data set (data/make_toy_sop.py, made once under --work_dir) in --num_workers processes: the loop of
    train_elem.py / train_pair.py without its logs, tests and saves;
  * dynamic: the same models/ and losses/ code run eagerly, with the same Momentum optimizer;
  * bfloat16 (--bf16): the oneDNN run with --use_amp=True --amp_dtype=bfloat16, against PyTorch's CPU bfloat16
    autocast;
  * PyTorch, when installed (pip install torch==2.13.0, an optional extra, into this environment or the one
    --torch_python names): the same ResNet layout with a softmax head, in a process of its own
    (bench/torch_reference.py).
With --use_gpu=True the runs are --use_gpu=True in float32 and with --use_amp=True --amp_dtype=float16, end to end,
and PyTorch on the GPU in float32 and float16 autocast; features through the GPU predictor and the executor.
Feature extraction runs the feature program (programs.build_feature_program) as eval.py, infer.py and the training
scripts' test pass do (Paddle Inference's predictor, predictor.InferenceExecutor) and on the default kernels, against
PyTorch's eval. A measurement times --steps steps (end to end: --e2e_steps; the slow references: --reference_steps),
after an untimed step in the first round and end to end always; all configurations take turns inside each of --rounds
rounds, so that the machine's other load spreads over all of them. The tables show the median over rounds and ratios
of those medians.
"""
import argparse
import contextlib
import io
import itertools
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import core  # noqa: E402,F401  (the CPU thread count, before paddle loads)
import numpy as np  # noqa: E402
import paddle  # noqa: E402

import losses  # noqa: E402
import models  # noqa: E402
import train_elem  # noqa: E402
import train_pair  # noqa: E402
import utility  # noqa: E402
from core import predictor, programs, trainer  # noqa: E402
from bench import bench_flags  # noqa: E402
from bench.throughput_tables import print_tables  # noqa: E402
from bench.timing import images_per_second  # noqa: E402
from data.make_toy_sop import make_toy_sop  # noqa: E402

TORCH_SCRIPT = os.path.join(ROOT, "bench", "torch_reference.py")
# The timed training runs, each the training scripts' flags over the common ones: on CPU, the scripts' default
# (convolutions on oneDNN), the default kernels and bfloat16 AMP; on a GPU, float32 and float16 AMP. The first of
# each is also timed end to end.
CPU_RUNS = {"oneDNN": ["--use_gpu=False", "--use_mkldnn=True"], "default": ["--use_gpu=False", "--use_mkldnn=False"],
            "bfloat16": ["--use_gpu=False", "--use_mkldnn=True", "--use_amp=True", "--amp_dtype=bfloat16"]}
GPU_RUNS = {"float32": ["--use_gpu=True"], "float16": ["--use_gpu=True", "--use_amp=True", "--amp_dtype=float16"]}
QUICK = ["--models=ResNet18", "--sides=32", "--batch_sizes=4", "--feature_batch_sizes=4", "--steps=1",
         "--e2e_steps=2", "--reference_steps=1", "--rounds=1", "--classes=4"]
# Layer constructors and parameter factories that models/ and losses/ call while they build a network.
BUILDERS = [(paddle.nn, name) for name in ("Conv2D", "BatchNorm2D", "Linear", "MaxPool2D", "AdaptiveAvgPool2D")]
BUILDERS.append((paddle.static, "create_parameter"))


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    bench_flags.add_training_grid_flags(parser)
    add("--feature_batch_sizes", type=utility.parse_int_list, default=[64, 16],
        help="Feature-extraction batch per side. Default: 64,16.")
    add("--steps", type=int, default=5, help="Timed steps per measurement of the oneDNN step and of feature "
                                             "extraction. Default: %(default)s.")
    add("--e2e_steps", type=int, default=10, help="Timed end-to-end steps per measurement, more than the reader "
                                                  "prefetches (2 batches per worker). Default: %(default)s.")
    add("--reference_steps", type=int, default=1, help="Timed steps per measurement of the slow references: default "
                                                       "kernels and dynamic mode. Default: %(default)s.")
    add("--rounds", type=int, default=3, help="Measurements per configuration; medians are shown. Default: 3.")
    add("--num_workers", type=int, default=2, help="Reader processes end to end. Default: %(default)s.")
    add("--classes", type=int, default=40, help="Products in the toy training split. Default: %(default)s.")
    add("--torch", type=utility.str2bool, default=True, help="Time PyTorch if it is installed. Default: True.")
    add("--torch_python", default=sys.executable, help="Python to run PyTorch with, e.g. a virtual environment's with "
        "torch installed. Default: this one.")
    add("--bf16", type=utility.str2bool, default=None, help="CPU: also time bfloat16 AMP, against PyTorch's bfloat16 "
        "autocast. Default: where this CPU runs bfloat16 (AVX512).")
    add("--use_gpu", type=utility.str2bool, default=False, help="Time GPU 0 (a CUDA build of Paddle): float32 and "
        "float16 AMP. Default: False.")
    add("--work_dir", default="/tmp/train_throughput", help="Data sets and checkpoint directory. Default: %(default)s.")
    bench_flags.add_quick_flag(parser, QUICK)
    return parser


def parse_args(argv=None):
    args = bench_flags.parse_args(make_parser(), QUICK, argv)
    bench_flags.check_training_grid(args, models.MODELS, losses.LOSSES, ("batch_sizes", "feature_batch_sizes"))
    bench_flags.check_at_least_one(args, ("steps", "e2e_steps", "reference_steps", "rounds", "classes"))
    if args.bf16 is None:
        args.bf16 = programs.cpu_runs_bfloat16()
    elif args.bf16 and not args.use_gpu and not programs.cpu_runs_bfloat16():
        utility.flag_error("bf16", programs.NO_CPU_BFLOAT16)
    return args


def jpeg_side(side):
    """The toy data set's JPEG side for a training input side: a quarter larger, as SOP's photos are larger."""
    return max(40, side * 5 // 4)


def make_data_set(args, side):
    data_dir = os.path.join(args.work_dir, "toy_%dpx_%dclasses" % (jpeg_side(side), args.classes))
    make_toy_sop(data_dir, args.classes, 1, image_size=jpeg_side(side), seed=0, overwrite=True)
    return data_dir


def training_runs(args):
    """The training runs to time: their names and flags."""
    if args.use_gpu:
        return GPU_RUNS
    return {name: flags for name, flags in CPU_RUNS.items() if args.bf16 or name != "bfloat16"}


def training_run(loss_name, model, side, batch_size, data_dir, args, run_flags):
    has_classifier = losses.LOSSES[loss_name].has_classifier
    script = train_elem if has_classifier else train_pair
    argv = ["--model=%s" % model, "--image_shape=3,%d,%d" % (side, side), "--train_batch_size=%d" % batch_size,
            "--loss_name=%s" % loss_name, "--data_dir=%s" % data_dir, "--num_workers=%d" % args.num_workers,
            "--crop_scale_min=0.3", "--model_save_dir=%s" % os.path.join(args.work_dir, "output")] + run_flags
    if has_classifier:
        argv.append("--class_dim=%d" % args.classes)
    parsed = script.make_parser().parse_args(argv)
    with contextlib.redirect_stdout(io.StringIO()):  # its start-up log lines
        return trainer.TrainingRun(parsed, trainer.prepare(parsed))


@contextlib.contextmanager
def reusing(made):
    """Runs models/ and losses/ code eagerly as one network: the first pass records every layer and parameter the code
    creates, later passes get the recorded ones back in the same order instead of new ones."""
    first_pass, position = not made, itertools.count()
    originals = {(module, name): getattr(module, name) for module, name in BUILDERS}

    def builder(create):
        def build(*args, **kwargs):
            if first_pass:
                made.append(create(*args, **kwargs))
                return made[-1]
            return made[next(position)]
        return build

    for (module, name), create in originals.items():
        setattr(module, name, builder(create))
    try:
        yield
    finally:
        for (module, name), create in originals.items():
            setattr(module, name, create)


class DynamicTraining:
    """The training step of `TrainingRun` in Paddle's dynamic mode: same network, loss and optimizer settings."""

    def __init__(self, run):
        self.args, self.loss = run.args, run.data.loss
        self.made, self.optimizer = [], None

    def step(self, images, labels):
        paddle.disable_static()
        try:
            with reusing(self.made):
                feature = models.get_model(self.args.model).net(paddle.to_tensor(images), self.args.embedding_size)
                result = self.loss.loss(feature, paddle.to_tensor(labels))
            loss = paddle.mean(result[0] if self.loss.has_classifier else result)
            if self.optimizer is None:
                parameters = [p for item in self.made
                              for p in (item.parameters() if isinstance(item, paddle.nn.Layer) else [item])]
                self.optimizer = paddle.optimizer.Momentum(
                    learning_rate=programs.make_lr_scheduler(self.args.lr, self.args.lr_steps), parameters=parameters,
                    momentum=programs.MOMENTUM, weight_decay=paddle.regularizer.L2Decay(programs.WEIGHT_DECAY))
            loss.backward()
            self.optimizer.step()
            self.optimizer.clear_grad()
        finally:
            paddle.enable_static()


def end_to_end_rate(run, batch_size, steps):
    batches = run.batches()
    with contextlib.closing(batches):
        # The untimed first step waits for the new reader processes' first batch.
        return images_per_second(lambda: run.step(*next(batches), fetch_feature=False), batch_size, steps)


def batch_for(run):
    """One real training batch, decoded once: the compute-only measurements feed it again and again."""
    batches = run.batches()
    with contextlib.closing(batches):
        return next(batches)


class ModelSide:
    """Everything timed for one backbone at one input side, in a scope of its own (models share parameter names)."""

    def __init__(self, model, side, batch_size, feature_batch_size, args):
        self.model, self.side, self.batch_size, self.feature_batch_size = model, side, batch_size, feature_batch_size
        self.use_gpu = args.use_gpu
        self.scope, self.results = paddle.static.Scope(), {}
        data_dir = make_data_set(args, side)
        run_kinds = training_runs(args)
        self.first_run = next(iter(run_kinds))  # the scripts' default: also timed end to end
        with paddle.static.scope_guard(self.scope):
            self.runs = {(loss, kind): training_run(loss, model, side, batch_size, data_dir, args, flags)
                         for loss in args.losses for kind, flags in run_kinds.items()}
            self.dynamic = {} if args.use_gpu else {loss: DynamicTraining(self.runs[loss, "default"])
                                                    for loss in args.losses}
            self.batches = {loss: batch_for(self.runs[loss, self.first_run]) for loss in args.losses}
            self.features = {kind: self._feature_runner(kind) for kind in ("predictor", "executor")}
        self.feature_images = np.random.default_rng(0).standard_normal(
            (feature_batch_size, 3, side, side)).astype("float32")

    def _feature_runner(self, kind):
        """(executor, feature program) as eval.py and infer.py extract features (Paddle Inference's "predictor", on the
        CPU with oneDNN or on the GPU), or Paddle's "executor" (on the CPU: the default kernels)."""
        feature_program = programs.build_feature_program(self.model, 0, (3, self.side, self.side))
        executor = paddle.static.Executor(programs.make_place(self.use_gpu))
        executor.run(feature_program.startup)
        if kind == "predictor":
            executor = predictor.InferenceExecutor(feature_program, executor, 0 if self.use_gpu else None)
        return executor, feature_program

    def measure(self, args, warm_up):
        """One round: every configuration once; `warm_up` (the first round) adds an untimed step before each."""
        record = lambda key, value: self.results.setdefault(key, []).append(value)  # noqa: E731
        slow_references = {"default"}  # Paddle's default CPU kernels: timed for --reference_steps
        with paddle.static.scope_guard(self.scope):
            for loss in args.losses:
                images, labels = self.batches[loss]
                for (run_loss, kind), run in self.runs.items():
                    if run_loss != loss:
                        continue
                    steps = args.reference_steps if kind in slow_references else args.steps
                    record((loss, kind), images_per_second(lambda: run.step(images, labels, fetch_feature=False),
                                                           self.batch_size, steps, warm_up))
                record((loss, "end to end"), end_to_end_rate(self.runs[loss, self.first_run], self.batch_size,
                                                             args.e2e_steps))
                if loss in self.dynamic:
                    record((loss, "dynamic"), images_per_second(lambda: self.dynamic[loss].step(images, labels),
                                                                self.batch_size, args.reference_steps, warm_up))
            for kind, (executor, feature_program) in self.features.items():
                feed = {"image": self.feature_images}
                steps = args.reference_steps if kind == "executor" and not self.use_gpu else args.steps
                record(("features", kind), images_per_second(
                    lambda: executor.run(feature_program.program, feed=feed, fetch_list=[feature_program.feature]),
                    self.feature_batch_size, steps, warm_up))

    def torch_configs(self, args):
        """The PyTorch measurements beside these: training in float32 (and in the low-precision type timed here),
        and evaluation, on the same device."""
        if not self.model.startswith("ResNet"):
            return []  # the PyTorch reference has the ResNet layout only
        blocks, bottleneck = models.resnet.RESNET_DEPTHS[int(self.model[len("ResNet"):])]
        common = dict(blocks=blocks, bottleneck=bottleneck, shape=[3, self.side, self.side], classes=args.classes,
                      device="cuda" if self.use_gpu else "cpu")
        low_precision = "float16" if self.use_gpu else "bfloat16"
        dtypes = ["float32"] + ([low_precision] if self.use_gpu or args.bf16 else [])
        return ([dict(common, key=self.torch_key("train", dtype), kind="train", batch=self.batch_size, dtype=dtype)
                 for dtype in dtypes]
                + [dict(common, key=self.torch_key("eval", "float32"), kind="eval", batch=self.feature_batch_size,
                        dtype="float32")])

    def torch_key(self, kind, dtype):
        return "%s %d %s %s" % (self.model, self.side, kind, dtype)

    def median(self, key):
        return statistics.median(self.results[key]) if key in self.results else None


def torch_round(configs, steps, python):
    """One round of PyTorch measurements in a process of its own (torch brings its own OpenMP runtime), run by
    `python`; {} with a note on stderr if torch is missing."""
    completed = subprocess.run([python, TORCH_SCRIPT, json.dumps({"steps": steps, "configs": configs})],
                               capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError("bench/torch_reference.py failed:\n" + completed.stderr[-2000:])
    rates = json.loads(completed.stdout.strip().splitlines()[-1])
    if "error" in rates:
        print("PyTorch reference skipped: %s" % rates["error"], file=sys.stderr)
        return {}
    return rates


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    print("CPUs: %d, threads: %s, paddle %s, load average at start: %.2f"
          % (os.cpu_count(), os.environ.get("OMP_NUM_THREADS"), paddle.__version__, os.getloadavg()[0]), flush=True)
    paddle.enable_static()
    paddle.seed(0)
    groups = [ModelSide(model, side, batch_size, feature_batch_size, args)
              for model in args.models
              for side, batch_size, feature_batch_size in zip(args.sides, args.batch_sizes, args.feature_batch_sizes)]
    torch_configs = [config for group in groups for config in group.torch_configs(args)]
    torch_rates = {}
    for round_index in range(args.rounds):
        for group in groups:
            group.measure(args, warm_up=round_index == 0)
        if args.torch:
            for key, value in torch_round(torch_configs, args.steps, args.torch_python).items():
                torch_rates.setdefault(key, []).append(value)
        print("round %d of %d done after %.0f s, load average %.2f"
              % (round_index + 1, args.rounds, time.time() - started, os.getloadavg()[0]), flush=True)
    print_tables(groups, torch_rates, args)
    return groups, torch_rates


if __name__ == "__main__":
    main()
