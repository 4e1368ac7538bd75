"""bfloat16 AMP against float32 on the toy set, like for like: the loss curve of train_elem.py and the Recall@1 it
ends with, from the same seed, batches and initialisation.

    python bench/amp_recall.py              # 300 iterations each: about 10 minutes on 2 cores
    python bench/amp_recall.py --quick      # a smoke test on a tiny data set

Each run is `train_elem.py` with the demo's settings (ResNet18 at 3x32x32, arcmargin with s = 30, batch 64, lr 0.05,
random-resized crops of at least 30%), once as it is and once with --use_amp=True --amp_dtype=bfloat16; the periodic
test at the last iteration gives the final Recall@1 on the toy set's test split. The runs' logs are kept in
--work_dir.
"""
import argparse
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data.make_toy_sop import make_toy_sop  # noqa: E402

DTYPES = {"float32": [], "bfloat16": ["--use_amp=True", "--amp_dtype=bfloat16"]}
QUICK = ["--iterations=4", "--display_iter_step=2", "--train_classes=12", "--test_classes=8", "--image_size=40",
         "--batch_size=12"]
LOSS_LINE = re.compile(r"trainbatch (\d+), lr [\d.]+, loss ([-\d.e]+)")
RECALL_LINE = re.compile(r"test_img_num \d+, trainbatch (\d+), test_recall ([\d.]+)")


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--iterations", type=int, default=300, help="Training iterations of each run. Default: %(default)s.")
    add("--display_iter_step", type=int, default=25, help="Iterations per point of the loss curve. Default: "
                                                          "%(default)s.")
    add("--batch_size", type=int, default=64, help="Training batch. Default: %(default)s.")
    add("--train_classes", type=int, default=300, help="Toy training products. Default: %(default)s.")
    add("--test_classes", type=int, default=300, help="Toy test products. Default: %(default)s.")
    add("--image_size", type=int, default=80, help="Toy JPEG side. Default: %(default)s.")
    add("--work_dir", default="/tmp/amp_recall", help="Data set, checkpoints and logs. Default: %(default)s.")
    add("--quick", action="store_true", help="Tiny sizes for a smoke test: %s." % " ".join(QUICK))
    return parser


def parse_args(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.quick:  # the user's own flags after QUICK, so that they win
        args = parser.parse_args(QUICK + (sys.argv[1:] if argv is None else argv))
    return args


def train(args, dtype, data_dir):
    """Runs train_elem.py in `dtype`; returns ({iteration: logged loss}, final Recall@1)."""
    command = [sys.executable, os.path.join(ROOT, "train_elem.py"), "--model=ResNet18", "--image_shape=3,32,32",
               "--use_gpu=False", "--data_dir=%s" % data_dir, "--loss_name=arcmargin", "--arc_scale=30",
               "--class_dim=%d" % args.train_classes, "--train_batch_size=%d" % args.batch_size, "--lr=0.05",
               "--lr_steps=%d" % max(1, args.iterations * 3 // 4), "--total_iter_num=%d" % args.iterations,
               "--display_iter_step=%d" % args.display_iter_step, "--test_iter_step=%d" % args.iterations,
               "--save_iter_step=%d" % args.iterations, "--test_batch_size=128", "--crop_scale_min=0.3",
               "--model_save_dir=%s" % os.path.join(args.work_dir, dtype), "--force=True"] + DTYPES[dtype]
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    with open(os.path.join(args.work_dir, "%s.log" % dtype), "w") as log_file:
        log_file.write(completed.stdout + completed.stderr)
    if completed.returncode != 0:
        raise RuntimeError("train_elem.py in %s failed (exit %d):\n%s" % (dtype, completed.returncode,
                                                                         completed.stderr[-2000:]))
    losses = {int(iteration): float(loss) for iteration, loss in LOSS_LINE.findall(completed.stdout)}
    (recall,) = [float(value) for iteration, value in RECALL_LINE.findall(completed.stdout)
                 if int(iteration) == args.iterations]
    return losses, recall


def comparison(curves, recalls):
    """The table's rows: (iteration, float32 loss, bfloat16 loss, relative difference), and the Recall@1 difference
    in points."""
    rows = [(iteration, curves["float32"][iteration], curves["bfloat16"][iteration],
             (curves["bfloat16"][iteration] - curves["float32"][iteration]) / abs(curves["float32"][iteration]))
            for iteration in sorted(curves["float32"])]
    return rows, 100 * (recalls["bfloat16"] - recalls["float32"])


def main(argv=None):
    args = parse_args(argv)
    data_dir = os.path.join(args.work_dir, "toy_sop_%d_%d_%dpx" % (args.train_classes, args.test_classes,
                                                                   args.image_size))
    make_toy_sop(data_dir, args.train_classes, args.test_classes, image_size=args.image_size, seed=0)
    curves, recalls = {}, {}
    for dtype in DTYPES:
        curves[dtype], recalls[dtype] = train(args, dtype, data_dir)
    rows, points = comparison(curves, recalls)
    print("\ntrain_elem.py, ResNet18 3x32x32, arcmargin, batch %d, %d iterations: the loss logged every %d "
          "iterations (their mean)\n" % (args.batch_size, args.iterations, args.display_iter_step))
    print("| iteration | float32 loss | bfloat16 loss | bf16 / fp32 - 1 |")
    print("|---:|---:|---:|---:|")
    for iteration, float32, bfloat16, difference in rows:
        print("| %d | %.4f | %.4f | %+.2f%% |" % (iteration, float32, bfloat16, 100 * difference))
    print("\n| | float32 | bfloat16 | difference |")
    print("|---|---:|---:|---:|")
    print("| Recall@1 after %d iterations | %.2f%% | %.2f%% | %+.2f points |"
          % (args.iterations, 100 * recalls["float32"], 100 * recalls["bfloat16"], points))
    sys.stdout.flush()
    return curves, recalls


if __name__ == "__main__":
    main()
