"""The whole workflow on the embedded toy data set, on CPU, in a few minutes: `make demo`.

Generates data/toy_sop/ if absent, then runs the scripts exactly as a user would:
train_elem.py (arcmargin) → train_pair.py (eml, from that checkpoint) → eval.py after each → infer.py,
and ends with a table of Recall@1/10 for raw pixels, the untrained network and the two trained stages, and the
commands to try next. `--update_readme=True` writes that table into README.md and README_cn.md, which
tests/test_demo.py checks against a fresh run, so the published figures are always the demo's own.
"""
import argparse
import json
import os
import re
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
DEFAULT_DATA_DIR = os.path.join(ROOT, "data", "toy_sop")
DEFAULT_OUTPUT_DIR = os.path.join(ROOT, "demo_output")
README_TABLE = re.compile(r"(<!-- demo table: written by `python demo.py --update_readme=True` -->\n\n)(.*?)"
                          r"(\n<!-- end of demo table -->)", re.S)
# The rows of the README tables, in each README's language.
ROW_NAMES = {
    "README.md": ("| toy SOP test split, %(images)s images of %(classes)d products | Recall@1 | Recall@10 |",
                  ["raw pixels (%(shape)s, L2-normalised)", "untrained %(model)s (seeded random weights)",
                   "after train_elem.py (arcmargin, %(elem_iters)d iterations of 64)",
                   "after train_pair.py (eml, %(pair_iters)d iterations of 64, from that checkpoint)"]),
    "README_cn.md": ("| 玩具SOP测试集（%(classes)d个商品，%(image_count)d张图） | Recall@1 | Recall@10 |",
                     ["原始像素（%(shape)s，L2归一化）", "未训练的%(model)s（固定种子的随机权重）",
                      "train_elem.py之后（arcmargin，%(elem_iters)d次迭代，batch 64）",
                      "train_pair.py之后（eml，从上面的模型开始，%(pair_iters)d次迭代，batch 64）"]),
}


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments("data_dir", str, DEFAULT_DATA_DIR, "Toy data set (made if absent).", parser)
    add_arguments("output_dir", str, DEFAULT_OUTPUT_DIR, "Checkpoints, features and results.", parser)
    add_arguments("model", str, "ResNet18", "Backbone.", parser)
    add_arguments("image_shape", str, "3,32,32", "Input shape C,H,W.", parser)
    add_arguments("elem_iters", int, 500, "train_elem.py iterations.", parser)
    add_arguments("pair_iters", int, 150, "train_pair.py iterations.", parser)
    add_arguments("update_readme", bool, False, "Write the results table into README.md and README_cn.md.", parser)
    return parser


def python_command():
    """How to call this Python from the suite's directory: `.venv/bin/python` after `make`, else `python`."""
    relative = os.path.relpath(sys.executable, ROOT)
    return relative if not relative.startswith("..") else "python"


def shown(path):
    relative = os.path.relpath(path, ROOT)
    return relative if not relative.startswith("..") else path


def run_script(script, *flags):
    command = [sys.executable, os.path.join(ROOT, script)] + list(flags)
    log("$ " + " ".join([python_command(), script] + list(flags)))
    started = time.time()
    subprocess.run(command, check=True, cwd=ROOT)
    log("%s finished in %.0f s" % (script, time.time() - started))


def raw_pixel_results(args, test_list):
    shape = utility.parse_image_shape(args.image_shape)
    images, labels = zip(*reader.eval_batches(test_list, 256, shape, num_workers=2))
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


def results_table(readme, args, test_list, results):
    """The Markdown table of `results` (one metrics dict per row) on `test_list` with `readme`'s row names."""
    header, names = ROW_NAMES[readme]
    values = dict(vars(args), images="{:,}".format(len(test_list.paths)), image_count=len(test_list.paths),
                  classes=len(set(test_list.class_ids)), shape=args.image_shape.replace(",", "×"))
    rows = [header % values, "|---|---|---|"]
    rows += ["| %s | %.1f%% | %.1f%% |" % (name % values, 100 * result["recall@1"], 100 * result["recall@10"])
             for name, result in zip(names, results)]
    return "\n".join(rows) + "\n"


def update_readme(readme, table):
    path = os.path.join(ROOT, readme)
    with open(path, encoding="utf-8") as page:
        text = page.read()
    if not README_TABLE.search(text):
        raise ValueError("%s: no demo table markers to write between" % path)
    with utility.atomic_output(path, "wb") as page:
        page.write(README_TABLE.sub(lambda match: match.group(1) + table + match.group(3), text).encode("utf-8"))


def next_steps(args, pair_checkpoint):
    python = python_command()
    network = "--model=%s --image_shape=%s" % (args.model, args.image_shape)
    data = "--data_dir=%s" % shown(args.data_dir)
    return "\n".join([
        "Next, on the demo's data: the nearest images of some test queries, and the features of every test image",
        "  %s eval.py %s %s --pretrained_model=%s --save_vis=%s" % (
            python, data, network, shown(pair_checkpoint), shown(os.path.join(args.output_dir, "vis"))),
        "  %s infer.py %s %s --batch_size=64 --pretrained_model=%s --save_features=features.npy" % (
            python, data, network, shown(pair_checkpoint)),
        "On your own images, one folder per class (docs/your_own_data.md):",
        "  %s data/prepare_folder.py --data_dir=my_images" % python,
        "  %s train_elem.py --data_dir=my_images --class_dim=<the training classes it reports> "
        "--loss_name=arcmargin ..." % python,
    ])


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
    test_list = reader.read_list(args.data_dir, reader.TEST_LIST)
    results = [raw_pixel_results(args, test_list), evaluate(args, "untrained")]

    run_script("train_elem.py", *(common + [
        "--loss_name=arcmargin", "--arc_scale=30", "--arc_margin=0.15", "--class_dim=300",
        "--train_batch_size=64", "--lr=0.05", "--lr_steps=%d" % (args.elem_iters * 3 // 4),
        "--total_iter_num=%d" % args.elem_iters, "--test_iter_step=%d" % args.elem_iters,
        "--save_iter_step=%d" % args.elem_iters, "--model_save_dir=%s" % elem_dir]))
    elem_checkpoint = os.path.join(elem_dir, args.model, str(args.elem_iters))
    results.append(evaluate(args, "elem", elem_checkpoint))

    run_script("train_pair.py", *(common + [
        "--loss_name=eml", "--samples_each_class=2", "--train_batch_size=64", "--lr=0.001",
        "--lr_steps=%d" % args.pair_iters, "--total_iter_num=%d" % args.pair_iters,
        "--test_iter_step=%d" % args.pair_iters, "--save_iter_step=%d" % args.pair_iters,
        "--pretrained_model=%s" % elem_checkpoint, "--model_save_dir=%s" % pair_dir]))
    pair_checkpoint = os.path.join(pair_dir, args.model, str(args.pair_iters))
    results.append(evaluate(args, "pair", pair_checkpoint))

    features_path = os.path.join(args.output_dir, "features.npy")
    run_script("infer.py", "--model=%s" % args.model, "--image_shape=%s" % args.image_shape, "--batch_size=128",
               "--use_gpu=False", "--data_dir=%s" % args.data_dir, "--pretrained_model=%s" % pair_checkpoint,
               "--save_features=%s" % features_path)

    tables = {readme: results_table(readme, args, test_list, results) for readme in ROW_NAMES}
    with open(os.path.join(args.output_dir, "results.md"), "w") as results_file:
        results_file.write(tables["README.md"])
    if args.update_readme:
        for readme, table in tables.items():
            update_readme(readme, table)
    print("\n" + tables["README.md"])
    print("demo finished in %.0f s; features of the final model: %s\n" % (time.time() - started,
                                                                          shown(features_path)))
    print(next_steps(args, pair_checkpoint), flush=True)
    return tables


if __name__ == "__main__":
    main()
