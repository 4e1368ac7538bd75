"""Exports a trained model for deployment: `paddle.static.save_inference_model` of image → embedding.

    python export_model.py --model=ResNet50 --pretrained_model=output/ResNet50/30000 --model_save_dir=inference_model
writes inference_model/inference.json and inference_model/inference.pdiparams, loadable with
`paddle.static.load_inference_model("inference_model/inference", executor)` (feed: "image", N×C×H×W float32).
"""
import argparse
import os
import shutil

import utility
from core import checkpoint, flags, programs
from utility import log

EXPORT_PREFIX = "inference"


def make_parser():
    parser = utility.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # No --use_mkldnn: the export holds Paddle's standard ops, which Paddle Inference runs with oneDNN on a CPU.
    # --batch_size is accepted, as eval.py's and infer.py's, though an export takes batches of any size.
    network = tuple(flag for flag in flags.NETWORK if flag is not flags.USE_MKLDNN)
    parser.add_flags(network + (flags.BATCH_SIZE, flags.MODEL_SAVE_DIR), batch_size=1,
                     model_save_dir="inference_model")
    return parser


@utility.exit_on(checkpoint.CheckpointError)
def main(argv=None):
    args = make_parser().parse_args(argv)
    if not args.pretrained_model:
        utility.flag_error("pretrained_model", "is required: the weights to export")
    utility.print_arguments(args)
    executor, feature_program = programs.load_feature_program(args, log)
    target = os.path.abspath(args.model_save_dir)
    staging = target + ".saving-%d" % os.getpid()
    shutil.rmtree(staging, ignore_errors=True)
    programs.save_inference_model(feature_program, executor, os.path.join(staging, EXPORT_PREFIX))
    if os.path.isdir(target):
        shutil.rmtree(target)
    os.rename(staging, target)
    log("exported %s to %s" % (args.model, os.path.join(target, EXPORT_PREFIX)))


if __name__ == "__main__":
    main()
