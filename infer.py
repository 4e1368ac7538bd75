r"""Extracts the feature of every test-list image with a trained model.

    python infer.py --model=ResNet50 --batch_size=1 --pretrained_model=output/ResNet50/30000 \
        --save_features=features.npy
"""
import argparse
import contextlib
import os
import sys

import core  # noqa: F401  (first: thread counts and signal handling are set before NumPy and Paddle load)
import numpy as np

import reader
import utility
from core import checkpoint, flags, programs
from utility import log


def make_parser():
    parser = utility.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_flags(flags.NETWORK + (flags.BATCH_SIZE, flags.SAVE_FEATURES), batch_size=1)
    return parser


def paths_file(features_path):
    return os.path.splitext(features_path)[0] + ".paths.txt"


def save_features(path, features, image_paths):
    """Writes features and paths next to each other, each complete or not at all (utility.atomic_output)."""
    with utility.atomic_output(path, "wb") as features_file:
        np.save(features_file, features)
    with utility.atomic_output(paths_file(path)) as listing:
        listing.writelines(image_path + "\n" for image_path in image_paths)


@utility.exit_on_signals()
@utility.exit_on(*reader.READ_ERRORS, checkpoint.CheckpointError, utility.OutputError)
def main(argv=None):
    args = make_parser().parse_args(argv)
    utility.print_arguments(args)
    image_list = reader.read_list(args.data_dir, reader.TEST_LIST)
    executor, feature_program = programs.load_feature_program(args, log, args.use_mkldnn)
    features, image_paths = [], []
    batches = reader.infer_batches(image_list, args.batch_size, args.image_shape, args.num_workers)
    with contextlib.closing(batches), utility.progress_bar(len(image_list.paths), "infer") as bar:
        for batch_id, (images, batch_paths) in enumerate(batches):
            (batch_features,) = executor.run(feature_program.program, feed={"image": images},
                                             fetch_list=[feature_program.feature])
            batch_features = np.asarray(batch_features).reshape(len(images), -1)
            # the original's per-batch line, through the bar, which clears and redraws itself around it
            bar.write("Test-{0}-feature: {1}".format(batch_id, batch_features[0][:5]), file=sys.stdout)
            sys.stdout.flush()
            bar.update(len(images))
            features.append(batch_features)
            image_paths.extend(batch_paths)
    if args.save_features:
        save_features(args.save_features, np.concatenate(features), image_paths)
        log("saved %d features to %s and their paths to %s"
            % (len(image_paths), args.save_features, paths_file(args.save_features)))


if __name__ == "__main__":
    main()
