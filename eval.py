"""Evaluates retrieval on the test split: features of every test image, then Recall@K, MAP@R and R-Precision.

    python eval.py --model=ResNet50 --batch_size=50 --pretrained_model=output/ResNet50/30000

Every test image queries all the others, or, with --query_list and --gallery_list, each query searches the
gallery (In-Shop's protocol). --save_vis also draws the retrieval pictures and the Recall@K curve.
"""
import argparse
import json
import os

import core  # noqa: F401  (first: thread counts and signal handling are set before NumPy and Paddle load)
import reader
import utility
from core import checkpoint, flags, metrics, programs, visualize
from utility import log


def make_parser():
    parser = utility.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_flags(flags.NETWORK + (flags.BATCH_SIZE,) + flags.EVALUATION, batch_size=10)
    return parser


def format_table(results, recall_ks):
    rows = ["| metric | value |", "|---|---|"]
    rows += ["| Recall@%d | %.4f |" % (k, results["recall@%d" % k]) for k in recall_ks]
    rows += ["| MAP@R | %.4f |" % results["map@r"], "| R-Precision | %.4f |" % results["r_precision"]]
    return "\n".join(rows)


def list_features(args, executor, feature_program, image_list, description):
    batches = reader.eval_batches(image_list, args.batch_size, args.image_shape, args.num_workers)
    features, _ = programs.extract_features(executor, feature_program, batches, len(image_list.paths), description)
    return features


def save_pictures(args, query_list, query_features, gallery_list, gallery_features, recall_curve):
    gallery = (gallery_list.paths, gallery_list.class_ids, gallery_features) if gallery_list else ()
    grids = visualize.save_retrieval_grids(args.save_vis, query_list.paths, query_list.class_ids, query_features,
                                           args.vis_queries, args.vis_top_k, *gallery)
    curve = visualize.save_recall_curve(os.path.join(args.save_vis, "recall_at_k.png"), recall_curve,
                                        "Recall@K of %d queries" % len(query_features))
    log("retrieval pictures: %s; Recall@K curve: %s" % (", ".join(grids), curve))


@utility.exit_on_signals()
@utility.exit_on(*reader.READ_ERRORS, checkpoint.CheckpointError, utility.OutputError)
def main(argv=None):
    args = make_parser().parse_args(argv)
    flags.check_query_gallery(args)
    utility.print_arguments(args)
    query_list = reader.read_list(args.data_dir, args.query_list or reader.TEST_LIST)
    gallery_list = reader.read_list(args.data_dir, args.gallery_list) if args.gallery_list else None
    executor, feature_program = programs.load_feature_program(args, log, args.use_mkldnn)
    query_features = list_features(args, executor, feature_program, query_list, "queries" if gallery_list else "test")
    gallery_features = gallery_labels = None
    num_candidates = len(query_list.paths) - 1
    if gallery_list:
        gallery_features = list_features(args, executor, feature_program, gallery_list, "gallery")
        gallery_labels = gallery_list.class_ids
        num_candidates = len(gallery_list.paths)
    curve_ks = visualize.curve_ks(num_candidates) if args.save_vis else []
    results = metrics.retrieval_metrics(query_features, query_list.class_ids, gallery_features, gallery_labels,
                                        recall_ks=sorted(set(args.recall_k) | set(curve_ks)),
                                        memory_mb=args.eval_memory_mb, use_gpu=args.use_gpu)
    recall_curve = {k: results["recall@%d" % k] for k in curve_ks}
    for k in set(curve_ks) - set(args.recall_k):
        del results["recall@%d" % k]
    if gallery_list:
        log("%d queries searched a gallery of %d images" % (len(query_features), len(gallery_features)))
    log("End test %d, test_recall %.5f" % (len(query_features), results["recall@1"]))
    print(format_table(results, args.recall_k), flush=True)
    if args.save_results:
        with utility.atomic_output(args.save_results) as results_file:
            json.dump(results, results_file, indent=1, sort_keys=True)
    if args.save_vis:
        save_pictures(args, query_list, query_features, gallery_list, gallery_features, recall_curve)
    return results


if __name__ == "__main__":
    main()
