"""Evaluates retrieval on the test split: features of every test image, then Recall@K, MAP@R and R-Precision.

    python eval.py --model=ResNet50 --batch_size=50 --pretrained_model=output/ResNet50/30000

Every test image queries all the others, or, with --query_list and --gallery_list, each query searches the
gallery (In-Shop's protocol), where --qe_k (query expansion) and --rerank (k-reciprocal re-ranking) can re-rank the
results: both are then scored, side by side. --cluster_metrics adds the NMI and F1 of a k-means clustering,
--by_super_class Recall@K per super class, and --save_vis draws the retrieval pictures and the Recall@K curve.
"""
import argparse
import json
import os

import core  # noqa: F401  (first: thread counts and signal handling are set before NumPy and Paddle load)
import numpy as np

import reader
import utility
from core import checkpoint, clustering, flags, metrics, neighbours, programs, rerank, visualize
from utility import log


def make_parser():
    parser = utility.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_flags(flags.NETWORK + (flags.BATCH_SIZE,) + flags.EVALUATION + flags.RERANKING
                     + (flags.CLUSTER_METRICS, flags.BY_SUPER_CLASS, flags.SEED), batch_size=10)
    return parser


def format_table(results, recall_ks, num_candidates):
    """The metrics as a Markdown table; with re-ranking, a column before and one after it. A Recall@K whose K reaches
    the `num_candidates` images each query searches is marked, since it only counts the queries that have a positive
    at all."""
    columns = [("value", results)]
    if "reranked" in results:
        columns = [("plain", results), ("re-ranked", results["reranked"])]
    trivial = [k for k in recall_ks if k >= num_candidates]
    names = [("Recall@%d" % k, "recall@%d" % k, " *" if k in trivial else "") for k in recall_ks]
    names += [("MAP@R", "map@r", ""), ("R-Precision", "r_precision", "")]
    rows = ["| metric | %s |" % " | ".join(title for title, _ in columns), "|---|" + "---|" * len(columns)]
    rows += ["| %s | %s |" % (name, " | ".join("%.4f%s" % (column[key], mark) for _, column in columns))
             for name, key, mark in names]
    if "nmi" in results:
        rows += ["| NMI | %.4f |" % results["nmi"] + " |" * (len(columns) - 1),
                 "| F1 | %.4f |" % results["f1"] + " |" * (len(columns) - 1)]
    if trivial:
        rows.append("\n* K is at least the %d images each query searches: every query with a positive in them "
                    "counts." % num_candidates)
    return "\n".join(rows)


def format_super_class_table(by_group, recall_ks):
    rows = ["| super class | queries | %s |" % " | ".join("Recall@%d" % k for k in recall_ks),
            "|---:|---:|" + "---:|" * len(recall_ks)]
    rows += ["| %s | %d | %s |" % (group, result["num_queries"],
                                   " | ".join("%.4f" % result["recall@%d" % k] for k in recall_ks))
             for group, result in sorted(by_group.items())]
    return "\n".join(rows)


def reranked_metrics(args, query_features, query_labels, gallery_features, gallery_labels, recall_ks):
    """The metrics after query expansion (--qe_k) and k-reciprocal re-ranking (--rerank), whichever are on."""
    steps = []
    if args.qe_k:
        indices, scores = neighbours.nearest(query_features, gallery_features, args.qe_k, args.eval_memory_mb)
        query_features = rerank.expand_queries(query_features, gallery_features, indices, scores, args.qe_alpha)
        steps.append("query expansion (k %d, alpha %g)" % (args.qe_k, args.qe_alpha))
    reranker = None
    if args.rerank:
        reranker = rerank.KReciprocal(query_features, gallery_features, args.rerank_k1, args.rerank_k2,
                                      args.rerank_lambda, args.eval_memory_mb)
        steps.append("k-reciprocal re-ranking (k1 %d, k2 %d, lambda %g)"
                     % (args.rerank_k1, args.rerank_k2, args.rerank_lambda))
    results = metrics.retrieval_metrics(query_features, query_labels, gallery_features, gallery_labels,
                                        recall_ks=recall_ks, memory_mb=args.eval_memory_mb, rescore=reranker)
    log("re-ranked by %s: Recall@1 %.5f, MAP@R %.5f" % (" then ".join(steps), results["recall@1"],
                                                          results["map@r"]))
    return results


def list_features(args, executor, feature_program, image_list, description):
    batches = reader.eval_batches(image_list, args.batch_size, args.image_shape, args.num_workers)
    features, _ = programs.extract_features(executor, feature_program, batches, len(image_list.paths), description)
    return features


def save_pictures(args, query_list, query_features, gallery_list, gallery_features, recall_curve):
    gallery = (gallery_list.paths, gallery_list.class_ids, gallery_features) if gallery_list else ()
    grids = visualize.save_retrieval_grids(args.save_vis, args.image_shape, query_list.paths, query_list.class_ids,
                                           query_features, args.vis_queries, args.vis_top_k, *gallery)
    curve = visualize.save_recall_curve(os.path.join(args.save_vis, "recall_at_k.png"), recall_curve,
                                        "Recall@K of %d queries" % len(query_features))
    log("retrieval pictures: %s; Recall@K curve: %s" % (", ".join(grids), curve))


def cluster_metrics(args, query_features, query_labels, gallery_features, gallery_labels):
    """NMI and F1 of k-means on every test image: the queries, and the gallery if there is one."""
    features, labels = query_features, query_labels
    if gallery_features is not None:
        features = np.concatenate([query_features, gallery_features])
        labels = np.concatenate([query_labels, gallery_labels])
    results = clustering.clustering_metrics(features, labels, seed=args.seed, memory_mb=args.eval_memory_mb)
    log("k-means (%s) of %d features into %d clusters: NMI %.5f, F1 %.5f"
        % (results["kmeans"], len(features), results["num_clusters"], results["nmi"], results["f1"]))
    return {"nmi": results["nmi"], "f1": results["f1"]}


@utility.exit_on_signals()
@utility.exit_on(*reader.READ_ERRORS, checkpoint.CheckpointError, utility.OutputError)
def main(argv=None):
    args = make_parser().parse_args(argv)
    flags.check_query_gallery(args)
    utility.print_arguments(args)
    query_list = reader.read_list(args.data_dir, args.query_list or reader.TEST_LIST)
    gallery_list = reader.read_list(args.data_dir, args.gallery_list) if args.gallery_list else None
    executor, feature_program = programs.load_feature_program(args, log, use_predictor=True)
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
                                        memory_mb=args.eval_memory_mb, use_gpu=args.use_gpu,
                                        query_groups=query_list.super_class_ids if args.by_super_class else None)
    recall_curve = {k: results["recall@%d" % k] for k in curve_ks}
    for k in set(curve_ks) - set(args.recall_k):
        del results["recall@%d" % k]
    by_super_class = results.pop("by_group", None)
    if gallery_list:
        log("%d queries searched a gallery of %d images" % (len(query_features), len(gallery_features)))
    log("End test %d, test_recall %.5f" % (len(query_features), results["recall@1"]))
    if args.qe_k or args.rerank:
        results["reranked"] = reranked_metrics(args, query_features, query_list.class_ids, gallery_features,
                                               gallery_labels, args.recall_k)
    if args.cluster_metrics:
        results.update(cluster_metrics(args, query_features, query_list.class_ids, gallery_features, gallery_labels))
    print(format_table(results, args.recall_k, num_candidates), flush=True)
    if by_super_class is not None:
        results["by_super_class"] = {str(group): result for group, result in by_super_class.items()}
        print("\n" + format_super_class_table(by_super_class, args.recall_k), flush=True)
    if args.save_results:
        with utility.atomic_output(args.save_results) as results_file:
            json.dump(results, results_file, indent=1, sort_keys=True)
    if args.save_vis:
        save_pictures(args, query_list, query_features, gallery_list, gallery_features, recall_curve)
    return results


if __name__ == "__main__":
    main()
