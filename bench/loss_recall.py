"""Recall@1 of every loss on the toy data set at one fixed budget: the table of docs/loss_benchmark.md.

    nice python bench/loss_recall.py                  # about an hour on 2 cores
    python bench/loss_recall.py --quick               # a smoke test on a tiny data set, a couple of minutes

The toy set (data/make_toy_sop.py: 300 training and 300 test products) is made once under --work_dir. Every run
goes through the scripts as a user runs them, in a process of its own, and is scored by eval.py on the test split:
  * the classifier losses (train_elem.py) train ResNet18 from scratch for --elem_iters iterations;
  * the pair losses (train_pair.py) fine-tune the arcmargin run's final checkpoint for --pair_iters iterations, with
    --samples_each_class images per class, and those that can keep a cross-batch memory once more with
    --xbm_size/--xbm_start_iter;
all with the same seed, batch size and learning-rate schedule, and each loss's default flags except TOY_FLAGS: the
margin losses' scales are set for SOP (arcmargin 80, cosface 64) and, from scratch on 300 classes, stall within this
budget; both run at 30 here (the demo's arcmargin, AM-Softmax's s). One run per row (--seeds runs more and reports
them all). Each run's log is kept in --work_dir/logs.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import losses  # noqa: E402
import utility  # noqa: E402
from bench import bench_flags  # noqa: E402
from bench.loss_runs import loss_variants  # noqa: E402
from data.make_toy_sop import make_toy_sop  # noqa: E402

START_LOSS = "arcmargin"  # the classifier run whose checkpoint the pair losses start from
TOY_FLAGS = {"arcmargin": {"arc_scale": 30}, "cosface": {"cos_scale": 30}}
QUICK = ["--train_classes=12", "--test_classes=8", "--image_size=40", "--elem_iters=2", "--pair_iters=2",
         "--batch_size=12", "--xbm_size=24", "--xbm_start_iter=1", "--losses=arcmargin,contrastive"]


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--losses", default=",".join(losses.LOSSES), help="Comma-separated losses; arcmargin always runs, the pair "
                                                          "losses start from it. Default: all.")
    add("--model", default="ResNet18", help="Backbone. Default: %(default)s.")
    add("--image_shape", default="3,32,32", help="Input shape C,H,W. Default: %(default)s.")
    add("--embedding_size", type=int, default=0, help="Embedding size; 0: ResNet18's pooled 512-d feature, as the "
                                                       "demo. Default: %(default)s.")
    add("--batch_size", type=int, default=60, help="Training batch (divisible by 2 and 3). Default: %(default)s.")
    add("--samples_each_class", type=int, default=3, help="Images per class in the pair losses' batches (npairs: 2). "
                                                          "Default: %(default)s.")
    add("--elem_iters", type=int, default=500, help="train_elem.py iterations. Default: %(default)s.")
    add("--elem_lr", type=float, default=0.01, help="train_elem.py learning rate. Default: %(default)s.")
    add("--pair_iters", type=int, default=200, help="train_pair.py iterations. Default: %(default)s.")
    add("--pair_lr", type=float, default=0.001, help="train_pair.py learning rate. Default: %(default)s.")
    add("--xbm_size", type=int, default=1200, help="Memory slots of the XBM runs (the toy set has about 1800 "
                                                   "training images). Default: %(default)s.")
    add("--xbm_start_iter", type=int, default=50, help="Iterations before the memory is used. Default: %(default)s.")
    add("--seeds", type=utility.parse_int_list, default=[0], help="Seeds; one row per seed. Default: 0.")
    bench_flags.add_toy_set_flags(parser, "/tmp/loss_recall")
    bench_flags.add_quick_flag(parser, QUICK)
    return parser


def parse_args(argv=None):
    args = bench_flags.parse_args(make_parser(), QUICK, argv)
    args.losses = bench_flags.registered_names("losses", args.losses, losses.LOSSES)
    bench_flags.check_pair_batch(args)
    if args.batch_size % args.samples_each_class:
        utility.flag_error("samples_each_class", "must divide --batch_size=%d" % args.batch_size)
    return args


def runs(loss_names, xbm_size, xbm_start_iter):
    """(row name, script, loss flags, whether it starts from the arcmargin checkpoint) of every run, arcmargin first."""
    names = [START_LOSS] + [name for name in loss_names if name != START_LOSS]
    table = []
    for loss_name in names:
        if losses.LOSSES[loss_name].has_classifier:
            table.append((loss_name, "train_elem.py", dict(TOY_FLAGS.get(loss_name, {}), loss_name=loss_name), False))
            continue
        for name, flags, keeps_memory in loss_variants(loss_name):
            table.append((name, "train_pair.py", flags, True))
            if keeps_memory:
                with_memory = dict(flags, xbm_size=xbm_size, xbm_start_iter=xbm_start_iter)
                table.append((name + " + XBM", "train_pair.py", with_memory, True))
    return table


def run_flags(args, script, flags, seed, save_dir, start_checkpoint):
    common = ["--model=%s" % args.model, "--image_shape=%s" % args.image_shape, "--use_gpu=False",
              "--embedding_size=%d" % args.embedding_size, "--data_dir=%s" % bench_flags.toy_set_dir(args),
              "--train_batch_size=%d" % args.batch_size, "--seed=%d" % seed, "--crop_scale_min=0.3",
              "--display_iter_step=20", "--model_save_dir=%s" % save_dir, "--save_best=False", "--num_workers=2"]
    if script == "train_elem.py":
        iterations, lr = args.elem_iters, args.elem_lr
        common += ["--class_dim=%d" % args.train_classes]
    else:
        iterations, lr = args.pair_iters, args.pair_lr
        common += ["--pretrained_model=%s" % start_checkpoint]
        if losses.LOSSES[flags["loss_name"]].batch_layout != losses.TRIPLETS or "miner" in flags:
            common += ["--samples_each_class=%d" % (2 if flags["loss_name"] == "npairs" else args.samples_each_class)]
    common += ["--lr=%g" % lr, "--lr_steps=%d" % max(1, iterations * 3 // 4), "--total_iter_num=%d" % iterations,
               "--test_iter_step=0", "--save_iter_step=%d" % iterations]
    return common + ["--%s=%s" % item for item in flags.items()], iterations


class RunFailed(Exception):
    """A training run stopped with an error (a non-finite loss, say): its row says so and the others go on."""


def run_logged(command, log_path):
    """Runs a script with its output into `log_path`; raises RunFailed with its error line if it fails."""
    with open(log_path, "w") as log_file:
        completed = subprocess.run([sys.executable] + command, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    if completed.returncode != 0:
        with open(log_path) as log_file:
            errors = [line.strip() for line in log_file if line.startswith("error: ")]
        raise RunFailed("%s (exit %d, %s)" % (errors[-1] if errors else "failed", completed.returncode, log_path))


def evaluate(args, checkpoint, results_path, log_path):
    run_logged([os.path.join(ROOT, "eval.py"), "--model=%s" % args.model, "--image_shape=%s" % args.image_shape,
                "--embedding_size=%d" % args.embedding_size, "--use_gpu=False",
                "--data_dir=%s" % bench_flags.toy_set_dir(args),
                "--pretrained_model=%s" % checkpoint, "--batch_size=100", "--recall_k=1,10",
                "--save_results=%s" % results_path], log_path)
    with open(results_path) as results_file:
        return json.load(results_file)


def slug(name):
    return "".join(character if character.isalnum() else "_" for character in name).strip("_")


def train_and_score(args, name, script, flags, seed, start_checkpoint):
    save_dir = os.path.join(args.work_dir, "runs", "seed%d" % seed, slug(name))
    command, iterations = run_flags(args, script, flags, seed, save_dir, start_checkpoint)
    log_dir = os.path.join(args.work_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    started = time.time()
    run_logged([os.path.join(ROOT, script)] + command + ["--force=True"],
               os.path.join(log_dir, "seed%d_%s.train.log" % (seed, slug(name))))
    checkpoint = os.path.join(save_dir, args.model, str(iterations))
    results = evaluate(args, checkpoint, os.path.join(save_dir, "results.json"),
                       os.path.join(log_dir, "seed%d_%s.eval.log" % (seed, slug(name))))
    return checkpoint, results, time.time() - started


def shown_flags(flags):
    """The row's flags beyond --loss_name, as the command line has them."""
    return " ".join("--%s=%s" % item for item in sorted(flags.items()) if item[0] not in ("loss_name", "miner"))


def print_table(args, rows):
    print("\nToy SOP test split (%d products), %s %s, %s, batch %d; classifier losses %d iterations from scratch at "
          "lr %g, pair losses %d more from the arcmargin run at lr %g; memory %d slots from iteration %d\n"
          % (args.test_classes, args.model, args.image_shape.replace(",", "x"),
             "%d-d" % args.embedding_size if args.embedding_size else "pooled features", args.batch_size,
             args.elem_iters, args.elem_lr, args.pair_iters, args.pair_lr, args.xbm_size, args.xbm_start_iter))
    print("| loss | script | flags | seed | Recall@1 | Recall@10 |")
    print("|---|---|---|---:|---:|---:|")
    for name, script, flags, seed, results in rows:
        if isinstance(results, RunFailed):
            print("| %s | %s | %s | %d | %s | - |" % (name, script, shown_flags(flags), seed, results))
            continue
        print("| %s | %s | %s | %d | %.1f%% | %.1f%% |" % (name, script, shown_flags(flags), seed,
                                                           100 * results["recall@1"], 100 * results["recall@10"]))
    sys.stdout.flush()


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    make_toy_sop(bench_flags.toy_set_dir(args), args.train_classes, args.test_classes, image_size=args.image_size,
                 seed=0)
    rows = []
    for seed in args.seeds:
        start_checkpoint = None
        for name, script, flags, from_start in runs(args.losses, args.xbm_size, args.xbm_start_iter):
            try:
                checkpoint, results, seconds = train_and_score(args, name, script, flags, seed,
                                                               start_checkpoint if from_start else None)
            except RunFailed as failure:
                if name == START_LOSS:
                    raise  # the pair losses have nothing to start from
                rows.append((name, script, flags, seed, failure))
                utility.log("%s (seed %d): %s" % (name, seed, failure))
                continue
            if name == START_LOSS:
                start_checkpoint = checkpoint
            rows.append((name, script, flags, seed, results))
            utility.log("%s (seed %d): Recall@1 %.4f in %.0f s; %.0f s so far"
                        % (name, seed, results["recall@1"], seconds, time.time() - started))
    print_table(args, rows)
    return rows


if __name__ == "__main__":
    main()
