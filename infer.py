r"""Extracts the feature of every test-list image with a trained model, or of any images.

    python infer.py --model=ResNet50 --batch_size=1 --pretrained_model=output/ResNet50/30000 \
        --save_features=features.npy
    python infer.py --model=ResNet50 --batch_size=32 --pretrained_model=output/ResNet50/30000 \
        --image_dir=my_photos --save_features=my_photos.npy

The features are the network's output as it is, not L2-normalised (eval.py normalises them before comparing).
Each batch prints its first feature's first values, as the original did; with --save_features, every 20th batch.

Under `python -m paddle.distributed.launch --nproc_per_node=N` (and `--ips=...` for several machines) each process
extracts a contiguous share of the list and process 0 writes all features, in list order.
"""
import argparse
import contextlib
import os
import sys

import core  # noqa: F401  (first: thread counts and signal handling are set before NumPy and Paddle load)
import numpy as np

import reader
import utility
from core import checkpoint, distributed, flags, programs
from utility import log


def make_parser():
    parser = utility.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_flags(flags.NETWORK + (flags.BATCH_SIZE, flags.SAVE_FEATURES) + flags.INFER_IMAGES, batch_size=1)
    return parser


def paths_file(features_path):
    return os.path.splitext(features_path)[0] + ".paths.txt"


def process_share(image_list, rank, world_size):
    """This process's contiguous share of the list (`distributed.shard`), said in the log when there are several."""
    start, stop = distributed.shard(len(image_list.paths), rank, world_size)
    if world_size > 1:
        log("process %d of %d: images %d to %d of %d" % (rank, world_size, start, stop - 1, len(image_list.paths)))
    return reader.subset(image_list, start, stop)


def save_features(path, features, image_paths):
    """Writes features and paths next to each other, each complete or not at all (utility.atomic_output)."""
    with utility.atomic_output(path, "wb") as features_file:
        np.save(features_file, features)
    with utility.atomic_output(paths_file(path)) as listing:
        listing.writelines(image_path + "\n" for image_path in image_paths)


@utility.exit_on_signals()
@utility.exit_on(*reader.READ_ERRORS, checkpoint.CheckpointError, utility.OutputError, distributed.PeerLostError)
def main(argv=None):
    args = make_parser().parse_args(argv)
    flags.check_infer_images(args)
    utility.print_arguments(args)
    rank, world_size, processes = distributed.init()
    source = args.list or args.image_dir
    whole_list = reader.read_images(source) if source else reader.read_list(args.data_dir, reader.TEST_LIST)
    image_list = process_share(whole_list, rank, world_size)
    executor, feature_program = programs.load_feature_program(args, log, use_predictor=True)
    features = []
    batches = reader.infer_batches(image_list, args.batch_size, args.image_shape, args.num_workers)
    with contextlib.closing(batches), utility.progress_bar(len(image_list.paths), "infer") as bar:
        for batch_id, (images, _) in enumerate(batches):
            (batch_features,) = executor.run(feature_program.program, feed={"image": images},
                                             fetch_list=[feature_program.feature])
            batch_features = np.asarray(batch_features).reshape(len(images), -1)
            if not args.save_features or batch_id % programs.TEST_LOG_EVERY == 0:
                # the original's per-batch line, through the bar, which clears and redraws itself around it
                bar.write("Test-{0}-feature: {1}".format(batch_id, batch_features[0][:5]), file=sys.stdout)
                sys.stdout.flush()
            bar.update(len(images))
            features.append(batch_features)
    with distributed.peer_failures(rank, processes):
        features = distributed.gather_rows(np.concatenate(features) if features else np.empty((0, 0)), rank,
                                           world_size)
    if rank == 0 and args.save_features:
        save_features(args.save_features, features, whole_list.paths)
        log("saved %d features to %s and their paths to %s"
            % (len(whole_list.paths), args.save_features, paths_file(args.save_features)))


if __name__ == "__main__":
    main()
