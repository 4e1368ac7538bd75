"""Evaluates retrieval on the test split: features of every test image, then Recall@K, MAP@R and R-Precision.

    python eval.py --model=ResNet50 --batch_size=50 --pretrained_model=output/ResNet50/30000
"""
import argparse
import json

import utility  # first: sets the CPU thread count before paddle is imported
import metrics
import programs
import reader
from utility import add_arguments, log


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    programs.add_feature_arguments(parser, batch_size_default=10)
    add_arguments("recall_k", utility.parse_int_list, [1, 10, 100, 1000], "The K of Recall@K to report.", parser)
    add_arguments("eval_memory_mb", int, metrics.DEFAULT_MEMORY_MB, "Memory budget of one block of the "
                  "similarity matrix.", parser)
    add_arguments("save_results", str, None, "Also write the metrics to this JSON file.", parser)
    return parser


def format_table(results, recall_ks):
    rows = ["| metric | value |", "|---|---|"]
    rows += ["| Recall@%d | %.4f |" % (k, results["recall@%d" % k]) for k in recall_ks]
    rows += ["| MAP@R | %.4f |" % results["map@r"], "| R-Precision | %.4f |" % results["r_precision"]]
    return "\n".join(rows)


def main(argv=None):
    args = make_parser().parse_args(argv)
    programs.check_feature_arguments(args)
    if not args.recall_k or min(args.recall_k) < 1:
        utility.flag_error("recall_k", "needs positive integers, got %s" % args.recall_k)
    if args.eval_memory_mb <= 0:
        utility.flag_error("eval_memory_mb", "must be positive")
    utility.print_arguments(args)
    utility.check_cuda(args.use_gpu)
    executor, feature_program = programs.load_feature_program(args, log)
    features, labels = programs.extract_features(
        executor, feature_program,
        reader.eval_batches(args.data_dir, args.batch_size, args.image_shape, args.num_workers))
    results = metrics.retrieval_metrics(features, labels.ravel(), recall_ks=args.recall_k,
                                        memory_mb=args.eval_memory_mb, use_gpu=args.use_gpu)
    log("End test %d, test_recall %.5f" % (len(features), results["recall@1"]))
    print(format_table(results, args.recall_k), flush=True)
    if args.save_results:
        with open(args.save_results, "w") as results_file:
            json.dump(results, results_file, indent=1, sort_keys=True)
    return results


if __name__ == "__main__":
    main()
