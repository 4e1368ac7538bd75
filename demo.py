"""The whole workflow on the embedded toy data set, on CPU, in a few minutes: `make demo`.

Generates data/toy_sop/ if absent, then runs the scripts exactly as a user would:
train_elem.py (arcmargin) → train_pair.py (eml, from that checkpoint) → eval.py after each → infer.py,
and ends with a table of Recall@1/10 for raw pixels, the untrained network and the two trained stages.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

import reader
import utility
from core import metrics
from data.make_toy_sop import make_toy_sop
from utility import add_arguments, log

ROOT = os.path.dirname(os.path.abspath(__file__))


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments("data_dir", str, os.path.join(ROOT, "data", "toy_sop"), "Toy data set (made if absent).", parser)
    add_arguments("output_dir", str, os.path.join(ROOT, "demo_output"), "Checkpoints, features and results.", parser)
    add_arguments("model", str, "ResNet18", "Backbone.", parser)
    add_arguments("image_shape", str, "3,32,32", "Input shape C,H,W.", parser)
    add_arguments("elem_iters", int, 500, "train_elem.py iterations.", parser)
    add_arguments("pair_iters", int, 150, "train_pair.py iterations.", parser)
    return parser


def run_script(script, *flags):
    command = [sys.executable, os.path.join(ROOT, script)] + list(flags)
    log("$ " + " ".join(["python", script] + list(flags)))
    started = time.time()
    subprocess.run(command, check=True, cwd=ROOT)
    log("%s finished in %.0f s" % (script, time.time() - started))


def raw_pixel_results(args):
    shape = utility.parse_image_shape(args.image_shape)
    images, labels = zip(*reader.eval_batches(reader.read_list(args.data_dir, reader.TEST_LIST), 256, shape,
                                              num_workers=2))
    pixels = np.concatenate(images).reshape(sum(len(batch) for batch in images), -1)
    return metrics.retrieval_metrics(pixels, np.concatenate(labels).ravel(), recall_ks=(1, 10))


def evaluate(args, name, weights=None):
    results_path = os.path.join(args.output_dir, "results_%s.json" % name)
    flags = ["--model=%s" % args.model, "--image_shape=%s" % args.image_shape, "--batch_size=128",
             "--use_gpu=False", "--data_dir=%s" % args.data_dir, "--recall_k=1,10",
             "--save_results=%s" % results_path]
    run_script("eval.py", *(flags + (["--pretrained_model=%s" % weights] if weights else [])))
    with open(results_path) as results_file:
        return json.load(results_file)


def main(argv=None):
    args = make_parser().parse_args(argv)
    started = time.time()
    make_toy_sop(args.data_dir)
    os.makedirs(args.output_dir, exist_ok=True)
    common = ["--model=%s" % args.model, "--image_shape=%s" % args.image_shape, "--use_gpu=False",
              "--data_dir=%s" % args.data_dir, "--test_batch_size=128", "--crop_scale_min=0.3",
              "--display_iter_step=20"]
    elem_dir = os.path.join(args.output_dir, "elem")
    pair_dir = os.path.join(args.output_dir, "pair")
    table = [("raw pixels", raw_pixel_results(args)), ("untrained " + args.model, evaluate(args, "untrained"))]

    run_script("train_elem.py", *(common + [
        "--loss_name=arcmargin", "--arc_scale=30", "--arc_margin=0.15", "--class_dim=300",
        "--train_batch_size=64", "--lr=0.05", "--lr_steps=%d" % (args.elem_iters * 3 // 4),
        "--total_iter_num=%d" % args.elem_iters, "--test_iter_step=%d" % args.elem_iters,
        "--save_iter_step=%d" % args.elem_iters, "--model_save_dir=%s" % elem_dir]))
    elem_checkpoint = os.path.join(elem_dir, args.model, str(args.elem_iters))
    table.append(("after train_elem (arcmargin)", evaluate(args, "elem", elem_checkpoint)))

    run_script("train_pair.py", *(common + [
        "--loss_name=eml", "--samples_each_class=2", "--train_batch_size=64", "--lr=0.001",
        "--lr_steps=%d" % args.pair_iters, "--total_iter_num=%d" % args.pair_iters,
        "--test_iter_step=%d" % args.pair_iters, "--save_iter_step=%d" % args.pair_iters,
        "--pretrained_model=%s" % elem_checkpoint, "--model_save_dir=%s" % pair_dir]))
    pair_checkpoint = os.path.join(pair_dir, args.model, str(args.pair_iters))
    table.append(("after train_pair (eml)", evaluate(args, "pair", pair_checkpoint)))

    features_path = os.path.join(args.output_dir, "features.npy")
    run_script("infer.py", "--model=%s" % args.model, "--image_shape=%s" % args.image_shape, "--batch_size=128",
               "--use_gpu=False", "--data_dir=%s" % args.data_dir, "--pretrained_model=%s" % pair_checkpoint,
               "--save_features=%s" % features_path)

    print("\n| toy SOP test split (%s) | Recall@1 | Recall@10 |\n|---|---|---|" % args.image_shape)
    for name, results in table:
        print("| %s | %.1f%% | %.1f%% |" % (name, 100 * results["recall@1"], 100 * results["recall@10"]))
    print("\ndemo finished in %.0f s; features of the final model: %s" % (time.time() - started, features_path))


if __name__ == "__main__":
    main()
