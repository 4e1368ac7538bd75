"""Exports a trained model for deployment: `paddle.static.save_inference_model` of image → embedding.

    python export_model.py --model=ResNet50 --pretrained_model=output/ResNet50/30000 --model_save_dir=inference_model
writes inference_model/inference.json and inference_model/inference.pdiparams, loadable with
`paddle.static.load_inference_model("inference_model/inference", executor)` (feed: "image", N×C×H×W float32).
"""
import argparse
import os
import shutil

import utility  # first: sets the CPU thread count before paddle is imported
import paddle

import checkpoint
import programs
from utility import add_arguments, log

EXPORT_PREFIX = "inference"


def make_parser():
    parser = utility.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    programs.add_feature_arguments(parser, batch_size_default=1, runs_network=False)
    add_arguments("model_save_dir", str, "inference_model", "Directory to write the exported model to.", parser)
    return parser


@utility.exit_on(checkpoint.CheckpointError)
def main(argv=None):
    args = make_parser().parse_args(argv)
    programs.check_feature_arguments(args)
    if not args.pretrained_model:
        utility.flag_error("pretrained_model", "is required: the weights to export")
    utility.print_arguments(args)
    utility.check_cuda(args.use_gpu)
    executor, feature_program = programs.load_feature_program(args, log)
    target = os.path.abspath(args.model_save_dir)
    staging = target + ".saving-%d" % os.getpid()
    shutil.rmtree(staging, ignore_errors=True)
    paddle.static.save_inference_model(os.path.join(staging, EXPORT_PREFIX), [feature_program.image],
                                       [feature_program.feature], executor, program=feature_program.program)
    if os.path.isdir(target):
        shutil.rmtree(target)
    os.rename(staging, target)
    log("exported %s to %s" % (args.model, os.path.join(target, EXPORT_PREFIX)))


if __name__ == "__main__":
    main()
