"""Evaluates retrieval on the test split: features of every test image, then Recall@K, MAP@R and R-Precision.

    python eval.py --model=ResNet50 --batch_size=50 --pretrained_model=output/ResNet50/30000

Every test image queries all the others, or, with --query_list and --gallery_list, each query searches the
gallery (In-Shop's protocol). --save_vis also draws the retrieval pictures and the Recall@K curve.
"""
import argparse
import json
import os

import utility  # first: sets the CPU thread count before paddle is imported
import checkpoint
import metrics
import programs
import reader
import visualize
from utility import add_arguments, log


def make_parser():
    parser = utility.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    programs.add_feature_arguments(parser, batch_size_default=10)
    add_arguments("recall_k", utility.parse_int_list, [1, 10, 100, 1000], "The K of Recall@K to report.", parser)
    add_arguments("eval_memory_mb", int, metrics.DEFAULT_MEMORY_MB, "Memory budget of one block of the "
                  "similarity matrix.", parser)
    add_arguments("save_results", str, None, "Also write the metrics to this JSON file.", parser)
    add_arguments("query_list", str, None, "List file (in --data_dir) of queries that search --gallery_list "
                  "instead of all test images searching each other, e.g. Ebay_query.txt of In-Shop.", parser)
    add_arguments("gallery_list", str, None, "List file (in --data_dir) of the gallery --query_list searches, "
                  "e.g. Ebay_gallery.txt of In-Shop.", parser)
    add_arguments("save_vis", str, None, "Directory to draw into: PNG grids of queries with their top results "
                  "(green: same class, red: other), and the Recall@K curve.", parser)
    add_arguments("vis_queries", int, 20, "Queries in the --save_vis grids, spread over the query list.", parser)
    add_arguments("vis_top_k", int, 8, "Results per query in the --save_vis grids.", parser)
    return parser


def format_table(results, recall_ks):
    rows = ["| metric | value |", "|---|---|"]
    rows += ["| Recall@%d | %.4f |" % (k, results["recall@%d" % k]) for k in recall_ks]
    rows += ["| MAP@R | %.4f |" % results["map@r"], "| R-Precision | %.4f |" % results["r_precision"]]
    return "\n".join(rows)


def read_list(args, list_name):
    return reader.read_image_list(os.path.join(args.data_dir, list_name), args.data_dir)


def list_features(args, executor, feature_program, image_list, description):
    batches = reader.eval_batches(args.data_dir, args.batch_size, args.image_shape, args.num_workers,
                                  list_name=os.path.abspath(image_list.list_path))
    features, _ = programs.extract_features(executor, feature_program, batches, len(image_list.paths), description)
    return features


def save_pictures(args, query_list, query_features, gallery_list, gallery_features, recall_curve):
    gallery = (gallery_list.paths, gallery_list.class_ids, gallery_features) if gallery_list else ()
    grids = visualize.save_retrieval_grids(args.save_vis, query_list.paths, query_list.class_ids, query_features,
                                           args.vis_queries, args.vis_top_k, *gallery)
    curve = visualize.save_recall_curve(os.path.join(args.save_vis, "recall_at_k.png"), recall_curve,
                                        "Recall@K of %d queries" % len(query_features))
    log("retrieval pictures: %s; Recall@K curve: %s" % (", ".join(grids), curve))


@utility.exit_on(*reader.READ_ERRORS, checkpoint.CheckpointError)
def main(argv=None):
    args = make_parser().parse_args(argv)
    programs.check_feature_arguments(args)
    if not args.recall_k or min(args.recall_k) < 1:
        utility.flag_error("recall_k", "needs positive integers, got %s" % args.recall_k)
    if args.eval_memory_mb <= 0:
        utility.flag_error("eval_memory_mb", "must be positive")
    if bool(args.query_list) != bool(args.gallery_list):
        utility.flag_error("query_list" if args.query_list else "gallery_list",
                           "give --query_list and --gallery_list together")
    for name in ("vis_queries", "vis_top_k"):
        if getattr(args, name) <= 0:
            utility.flag_error(name, "must be positive, got %d" % getattr(args, name))
    utility.print_arguments(args)
    utility.check_cuda(args.use_gpu)
    query_list = read_list(args, args.query_list or reader.TEST_LIST)
    gallery_list = read_list(args, args.gallery_list) if args.gallery_list else None
    executor, feature_program = programs.load_feature_program(args, log)
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
        with open(args.save_results, "w") as results_file:
            json.dump(results, results_file, indent=1, sort_keys=True)
    if args.save_vis:
        save_pictures(args, query_list, query_features, gallery_list, gallery_features, recall_curve)
    return results


if __name__ == "__main__":
    main()
