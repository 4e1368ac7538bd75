"""Exports a trained model for deployment: `paddle.static.save_inference_model` of image → embedding.

    python export_model.py --model=ResNet50 --pretrained_model=output/ResNet50/30000 --model_save_dir=inference_model
writes inference_model/inference.json and inference_model/inference.pdiparams, loadable with
`paddle.static.load_inference_model("inference_model/inference", executor)` (feed: "image", N×C×H×W float32).
"""
import argparse
import os
import shutil

import core  # noqa: F401  (first: thread counts and signal handling are set before NumPy and Paddle load)
import utility
from core import checkpoint, flags, predictor, programs
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


def export(executor, feature_program, target):
    """Writes the inference model into a directory beside `target`, then renames it over `target`: `target` is the
    old export or the new one, never a part of one. A failure is an OutputError naming `target`."""
    staging = target + ".saving-%d" % os.getpid()
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with utility.signals_held():
            predictor.save_inference_model(feature_program, executor, os.path.join(staging, EXPORT_PREFIX))
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.rename(staging, target)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, (OSError, RuntimeError)):  # Paddle reports its own failed writes as RuntimeError
            raise utility.OutputError("%s: cannot be written (%s: %s)" % (target, type(error).__name__, error)) \
                from None
        raise


@utility.exit_on_signals()
@utility.exit_on(checkpoint.CheckpointError, utility.OutputError)
def main(argv=None):
    args = make_parser().parse_args(argv)
    if not args.pretrained_model:
        utility.flag_error("pretrained_model", "is required: the weights to export")
    target = os.path.abspath(args.model_save_dir)
    problem = utility.output_problem(target, "renamed directory")
    if problem:
        utility.flag_error("model_save_dir", problem)
    utility.print_arguments(args)
    executor, feature_program = programs.load_feature_program(args, log)
    export(executor, feature_program, target)
    log("exported %s to %s" % (args.model, os.path.join(target, EXPORT_PREFIX)))


if __name__ == "__main__":
    main()
