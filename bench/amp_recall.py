"""bfloat16 AMP against float32 on the toy set, like for like: the loss curve of train_elem.py and the Recall@1 it
ends with, from the same seed, batches and initialisation.

    python bench/amp_recall.py              # 300 iterations, 3 seeds: about 15 minutes on 2 cores
    python bench/amp_recall.py --quick      # a smoke test on a tiny data set
    python bench/amp_recall.py --seeds=0,1,2,3,4,5 --reuse_logs=True   # 3 more seeds; 0, 1 and 2 read back

Each run is `train_elem.py` with the demo's settings (ResNet18 at 3x32x32, arcmargin with s = 30, batch 64, lr 0.05,
random-resized crops of at least 30%), once as it is and once with --use_amp=True --amp_dtype=bfloat16, for each
seed; the periodic test at the last iteration gives the final Recall@1 on the toy set's test split. Several seeds,
because on this set one seed's Recall@1 moves by several points with any change of rounding (float32 on oneDNN
against Paddle's default kernels too), so one pair of runs cannot tell bfloat16's effect from that. The runs' logs
are kept in --work_dir, each headed by its command line and ended by its exit status; with --reuse_logs=True a run
whose log holds the same command and exit status 0 is read back instead of trained again, so that a long run of many
seeds can be stopped, resumed and extended with more seeds.
"""
import argparse
import math
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import utility  # noqa: E402
from bench import bench_flags  # noqa: E402
from core import programs  # noqa: E402
from data.make_toy_sop import make_toy_sop  # noqa: E402

DTYPES = {"float32": [], "bfloat16": ["--use_amp=True", "--amp_dtype=bfloat16"]}
QUICK = ["--iterations=4", "--seeds=0,1", "--display_iter_step=2", "--train_classes=12", "--test_classes=8",
         "--image_size=40", "--batch_size=12"]
LOSS_LINE = re.compile(r"trainbatch (\d+), lr [\d.]+, loss ([-\d.e]+)")
RECALL_LINE = re.compile(r"test_img_num \d+, trainbatch (\d+), test_recall ([\d.]+)")
EXIT_LINE = "exit status: %d\n"


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--iterations", type=int, default=300, help="Training iterations of each run. Default: %(default)s.")
    add("--display_iter_step", type=int, default=25, help="Iterations per point of the loss curve. Default: "
                                                          "%(default)s.")
    add("--seeds", type=utility.parse_int_list, default=[0, 1, 2],
        help="Comma-separated --seed of the runs, a float32 and a bfloat16 run each. Default: 0,1,2.")
    add("--batch_size", type=int, default=64, help="Training batch. Default: %(default)s.")
    add("--reuse_logs", type=utility.str2bool, default=False,
        help="Read back each run whose log in --work_dir has the same command and ended with exit status 0, instead "
             "of training it again. Default: False.")
    bench_flags.add_toy_set_flags(parser, "/tmp/amp_recall")
    bench_flags.add_quick_flag(parser, QUICK)
    return parser


def parse_args(argv=None):
    return bench_flags.parse_args(make_parser(), QUICK, argv)


def train(args, dtype, seed, data_dir):
    """Runs train_elem.py in `dtype` from `seed`; returns ({iteration: logged loss}, final Recall@1)."""
    name = "%s_seed%d" % (dtype, seed)
    command = [sys.executable, os.path.join(ROOT, "train_elem.py"), "--model=ResNet18", "--image_shape=3,32,32",
               "--use_gpu=False", "--data_dir=%s" % data_dir, "--loss_name=arcmargin", "--arc_scale=30",
               "--class_dim=%d" % args.train_classes, "--train_batch_size=%d" % args.batch_size, "--lr=0.05",
               "--lr_steps=%d" % max(1, args.iterations * 3 // 4), "--total_iter_num=%d" % args.iterations,
               "--display_iter_step=%d" % args.display_iter_step, "--test_iter_step=%d" % args.iterations,
               "--save_iter_step=%d" % args.iterations, "--test_batch_size=128", "--crop_scale_min=0.3",
               "--seed=%d" % seed, "--model_save_dir=%s" % os.path.join(args.work_dir, name),
               "--force=True"] + DTYPES[dtype]
    log_path = os.path.join(args.work_dir, "%s.log" % name)
    header = "$ %s\n" % " ".join(command)
    output = finished_run_output(log_path, header) if args.reuse_logs else None
    if output is None:
        completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        output = completed.stdout + completed.stderr
        with utility.atomic_output(log_path) as log_file:
            log_file.write(header + output + EXIT_LINE % completed.returncode)
        if completed.returncode != 0:
            raise RuntimeError("train_elem.py, %s, failed (exit %d):\n%s" % (name, completed.returncode,
                                                                             completed.stderr[-2000:]))
    losses = {int(iteration): float(loss) for iteration, loss in LOSS_LINE.findall(output)}
    (recall,) = [float(value) for iteration, value in RECALL_LINE.findall(output) if int(iteration) == args.iterations]
    return losses, recall


def finished_run_output(log_path, header):
    """The output kept in `log_path` if it is the log of a run of the command in `header` that exited with status 0,
    else None (no log, a log of other flags, of a failed run, or of a version of this script that kept no header)."""
    if not os.path.isfile(log_path):
        return None
    with open(log_path) as log_file:
        text = log_file.read()
    if not (text.startswith(header) and text.endswith(EXIT_LINE % 0)):
        return None
    return text[len(header):-len(EXIT_LINE % 0)]


def mean(values):
    return sum(values) / len(values)


def comparison(curves, recalls, seeds):
    """The loss table's rows, (iteration, float32 loss, bfloat16 loss, relative difference) with the losses averaged
    over the seeds, and the Recall@1 table's, (seed, float32, bfloat16, difference in points), the seeds' mean last.
    `curves[dtype][seed]` maps an iteration to its logged loss; `recalls[dtype][seed]` is a final Recall@1."""
    loss_rows = []
    for iteration in sorted(curves["float32"][seeds[0]]):
        float32, bfloat16 = (mean([curves[dtype][seed][iteration] for seed in seeds]) for dtype in DTYPES)
        loss_rows.append((iteration, float32, bfloat16, (bfloat16 - float32) / abs(float32)))
    recall_rows = [(str(seed), recalls["float32"][seed], recalls["bfloat16"][seed],
                    100 * (recalls["bfloat16"][seed] - recalls["float32"][seed])) for seed in seeds]
    float32, bfloat16 = (mean([recalls[dtype][seed] for seed in seeds]) for dtype in DTYPES)
    recall_rows.append(("mean", float32, bfloat16, 100 * (bfloat16 - float32)))
    return loss_rows, recall_rows


def difference_summary(recall_rows):
    """The per-seed Recall@1 differences (points) of `comparison`'s rows: their mean, sample standard deviation,
    standard error and the mean's 95% interval (normal, mean +- 1.96 standard errors); None for the spread of one
    seed. Whether bfloat16 is within a point of float32 is whether that interval lies inside -1..+1."""
    differences = [points for seed, float32, bfloat16, points in recall_rows if seed != "mean"]
    mean_difference = mean(differences)
    if len(differences) < 2:
        return mean_difference, None, None, None
    deviation = statistics.stdev(differences)
    error = deviation / math.sqrt(len(differences))
    return mean_difference, deviation, error, (mean_difference - 1.96 * error, mean_difference + 1.96 * error)


def main(argv=None):
    args = parse_args(argv)
    if not programs.cpu_runs_bfloat16():
        sys.exit("amp_recall.py: %s, so there is nothing to compare" % programs.NO_CPU_BFLOAT16)
    seeds = args.seeds
    data_dir = bench_flags.toy_set_dir(args)
    make_toy_sop(data_dir, args.train_classes, args.test_classes, image_size=args.image_size, seed=0)
    curves, recalls = {dtype: {} for dtype in DTYPES}, {dtype: {} for dtype in DTYPES}
    for seed in seeds:
        for dtype in DTYPES:
            curves[dtype][seed], recalls[dtype][seed] = train(args, dtype, seed, data_dir)
    loss_rows, recall_rows = comparison(curves, recalls, seeds)
    print("\ntrain_elem.py, ResNet18 3x32x32, arcmargin, batch %d, %d iterations, seeds %s: the loss logged every "
          "%d iterations (their mean), averaged over the seeds\n"
          % (args.batch_size, args.iterations, ",".join(map(str, seeds)), args.display_iter_step))
    print("| iteration | float32 loss | bfloat16 loss | bf16 / fp32 - 1 |")
    print("|---:|---:|---:|---:|")
    for iteration, float32, bfloat16, difference in loss_rows:
        print("| %d | %.4f | %.4f | %+.2f%% |" % (iteration, float32, bfloat16, 100 * difference))
    print("\nRecall@1 after %d iterations\n" % args.iterations)
    print("| seed | float32 | bfloat16 | difference |")
    print("|---|---:|---:|---:|")
    for seed, float32, bfloat16, points in recall_rows:
        print("| %s | %.2f%% | %.2f%% | %+.2f points |" % (seed, 100 * float32, 100 * bfloat16, points))
    mean_difference, deviation, error, interval = difference_summary(recall_rows)
    if deviation is not None:
        print("\nbf16 - fp32 over %d seeds: %+.2f points, standard deviation %.2f, standard error %.2f, 95%% interval "
              "%+.2f to %+.2f points" % (len(seeds), mean_difference, deviation, error, *interval))
    sys.stdout.flush()
    return curves, recalls


if __name__ == "__main__":
    main()
