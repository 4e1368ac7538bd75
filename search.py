r"""Indexes a gallery once, then finds the gallery images nearest to query images: build, add, query.

    python search.py build --index_dir=sop_index --images=data/Stanford_Online_Products/Ebay_test.txt \
        --model=ResNet50 --pretrained_model=output/ResNet50/best
    python search.py add --index_dir=sop_index --images=new_products/ --model=ResNet50 --pretrained_model=...
    python search.py query --index_dir=sop_index --images=photo.jpg --top_k=5 --model=ResNet50 --pretrained_model=...

Images are a folder, one image, an SOP list (its labels are kept) or a plain list of paths. build writes an index
directory: the features, paths and labels, the model's fingerprint and the suite's version (core/gallery_index.py),
atomically; add appends to it and refuses another model. Under `python -m paddle.distributed.launch
--nproc_per_node=N` (and --ips for several machines) build and add extract in shards, one per process.
query prints each query's --top_k results (rank, score, label, path), best first; the score is the cosine
similarity, or 1 - the re-ranked distance with --rerank. Search is exact, in blocks of --memory_mb, unless the index
was built with a faiss structure (--index_type=flat|ivf|hnsw, faiss installed); --qe_k and --rerank re-rank.
"""
import argparse
import json
import os
import sys

from core import (checkpoint, distributed, faiss_search, flags, gallery_index, neighbours, programs, rerank,
                  visualize)
import infer
import numpy as np
import reader
import utility
from utility import log

COMMANDS = {
    "build": ("write a new index of the images (replacing any index in --index_dir)",
              (flags.SEARCH_FEATURES,) + flags.SEARCH_BUILD),
    "add": ("append the images to an index built with the same model", (flags.SEARCH_FEATURES,)),
    "query": ("search the index for each query image", flags.SEARCH_QUERY + flags.RERANKING),
}


class SearchError(RuntimeError):
    """A file search.py was given that it cannot use; the message names it."""


def make_parser():
    """The parser and one sub-parser per command."""
    parser = utility.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=utility.ArgumentParser)
    network = tuple(flag for flag in flags.NETWORK if flag is not flags.DATA_DIR)
    subparsers = {}
    for name, (summary, own_flags) in COMMANDS.items():
        subparsers[name] = commands.add_parser(name, help=summary, description=summary)
        subparsers[name].add_flags(network + (flags.BATCH_SIZE,) + flags.SEARCH_INDEX + own_flags, batch_size=32)
    return parser, subparsers


def parse_args(argv=None):
    args = make_parser()[0].parse_args(argv)
    flags.check_search(args)
    return args


def load_model(args):
    """The feature program with its weights, and the model's fingerprint."""
    executor, feature_program = programs.load_feature_program(args, log, use_predictor=True)
    model = gallery_index.fingerprint(args.model, args.embedding_size, args.image_shape,
                                      programs.weights_checksum(feature_program.program))
    return executor, feature_program, model


def extract(args, executor, feature_program, image_list, rank, world_size):
    """Features of the list: this process's share, gathered on process 0 (None on the others)."""
    share = infer.process_share(image_list, rank, world_size)
    features = np.empty((0, 0), np.float32)
    if share.paths:
        batches = reader.infer_batches(share, args.batch_size, args.image_shape, args.num_workers)
        features, _ = programs.extract_features(executor, feature_program, batches, len(share.paths), "features")
    return distributed.gather_rows(features, rank, world_size)


def saved_features(args, feature_program):
    """infer.py --save_features output: features, paths, and labels from --images if it is an SOP list of them."""
    try:
        features = np.load(args.features, mmap_mode="r")
        with open(infer.paths_file(args.features), encoding="utf-8") as listing:
            paths = listing.read().split("\n")[:-1]
    except (OSError, ValueError) as error:
        raise SearchError("--features: %s" % error) from None
    size = programs.feature_size(feature_program)
    if features.ndim != 2 or features.shape != (len(paths), size):
        raise SearchError("%s holds features of shape %s; %s gives %d-d features and %s lists %d paths: extract "
                          "them with the same model flags" % (args.features, features.shape, args.model, size,
                                                              infer.paths_file(args.features), len(paths)))
    labels = None
    if args.images:
        image_list = reader.read_images(args.images)
        if image_list.paths != paths:
            raise SearchError("%s does not list the images of %s in the same order" % (args.images, args.features))
        labels = image_list.class_ids
    return np.asarray(features, np.float32), paths, labels


def new_images(args, executor, feature_program, rank, world_size):
    """(features, paths, labels) to index, on process 0; None on the others."""
    if args.features:
        return None if rank else saved_features(args, feature_program)
    image_list = reader.read_images(args.images)
    features = extract(args, executor, feature_program, image_list, rank, world_size)
    return None if rank else (features, image_list.paths, image_list.class_ids)


def build(args):
    rank, world_size, processes = distributed.init()
    executor, feature_program, model = load_model(args)
    with distributed.peer_failures(rank, processes):
        images = new_images(args, executor, feature_program, rank, world_size)
    if images is None:
        return
    features, paths, labels = images
    with gallery_index.Writer(args.index_dir) as writer:
        part = writer.part(features, paths, labels)
        approximate = None
        if args.index_type != "exact":
            structure, parameters = faiss_search.build(args.index_type, features, args.nlist, args.hnsw_m,
                                                       args.ef_construction, args.seed)
            approximate = writer.approximate(args.index_type, lambda handle: faiss_search.save(structure, handle),
                                             parameters)
        writer.commit(model, features.shape[1], [part], approximate)
    log("indexed %d images (%d-d features%s) in %s" % (len(paths), features.shape[1],
                                                     "" if labels is None else ", with labels", args.index_dir))


def add(args):
    rank, world_size, processes = distributed.init()
    existing = gallery_index.load(args.index_dir)  # refuse a broken index before extracting anything
    if existing.approximate and not faiss_search.available():
        raise SearchError("%s has a faiss %s structure: adding to it needs faiss (pip install faiss-cpu)"
                          % (args.index_dir, existing.approximate["type"]))
    executor, feature_program, model = load_model(args)
    existing.check_model(model)
    with distributed.peer_failures(rank, processes):
        images = new_images(args, executor, feature_program, rank, world_size)
    if images is None:
        return
    features, paths, labels = images
    with gallery_index.Writer(args.index_dir) as writer:
        gallery = gallery_index.load(args.index_dir)  # again, under the lock: another add may have committed
        gallery.check_model(model)
        if features.shape[1] != gallery.dim:
            raise SearchError("%s: %d-d features, the index holds %d-d ones"
                              % (args.features or args.images, features.shape[1], gallery.dim))
        part = writer.part(features, paths, labels)
        approximate = gallery.approximate
        if approximate:
            structure = faiss_search.load(gallery.file(approximate["file"]))
            faiss_search.add(structure, features)
            parameters = {key: value for key, value in approximate.items() if key not in ("type", "file")}
            approximate = writer.approximate(approximate["type"], lambda handle: faiss_search.save(structure, handle),
                                             parameters)
        manifest = writer.commit(model, gallery.dim, gallery.manifest["parts"] + [part], approximate)
    log("added %d images to %s, which now holds %d" % (len(paths), args.index_dir, manifest["count"]))


def query_features(args, executor, feature_program, image_list):
    """Features and paths of the readable queries; each unreadable one is named on stderr and left out."""
    features, paths, skipped = [], [], []
    for images, batch_paths, bad in reader.readable_batches(image_list, args.batch_size, args.image_shape,
                                                            args.num_workers):
        for path, message in bad:
            print("warning: skipped an unreadable query image: %s" % message, file=sys.stderr, flush=True)
        skipped += bad
        if len(images):
            (batch,) = executor.run(feature_program.program, feed={"image": images},
                                    fetch_list=[feature_program.feature])
            features.append(np.asarray(batch).reshape(len(images), -1))
            paths += batch_paths
    if not paths:
        raise SearchError("%s: none of its %d images could be read" % (args.images, len(image_list.paths)))
    return np.concatenate(features), paths, skipped


def open_search(args, gallery):
    """The search the index offers: its faiss structure, or exact blocked search; (description, search(q, k))."""
    approximate = gallery.approximate
    if approximate and faiss_search.available():
        structure = faiss_search.load(gallery.file(approximate["file"]))
        return ("faiss %s" % approximate["type"],
                lambda queries, k: faiss_search.search(structure, queries, k, args.nprobe, args.ef_search))
    if approximate:
        log("faiss is not installed: searching the %s index exactly instead" % approximate["type"])
    exact = neighbours.ExactIndex(gallery.features, args.memory_mb, args.use_gpu)
    return "exact", exact.search


def search(args, gallery, queries):
    """Each query's --top_k results after any query expansion and re-ranking: (indices, scores)."""
    # k-reciprocal re-ranking finds its own neighbourhoods; the index's search is opened only when something uses it
    uses_index = args.qe_k or args.check_exact or not args.rerank
    description, nearest = open_search(args, gallery) if uses_index else (None, None)
    if args.qe_k:
        indices, scores = nearest(queries, args.qe_k)
        queries = rerank.expand_queries(queries, gallery.features, indices, scores, args.qe_alpha)
    if args.check_exact:
        checked = queries[:args.check_exact]
        exact_search = nearest if description == "exact" else neighbours.ExactIndex(gallery.features, args.memory_mb,
                                                                                      args.use_gpu).search
        exact, _ = exact_search(checked, args.top_k)
        recall = faiss_search.recall_against(nearest(checked, args.top_k)[0], exact)
        log("%s: recall@%d %.4f against exact search on %d queries" % (description, args.top_k, recall,
                                                                       len(checked)))
    if args.rerank:
        reranker = rerank.KReciprocal(queries, gallery.features, args.rerank_k1, args.rerank_k2, args.rerank_lambda,
                                      args.memory_mb)
        return reranker.top_k(args.top_k)
    return nearest(queries, args.top_k)


def report(args, gallery, paths, labels, indices, scores, skipped):
    """Prints the results, and writes them as JSON lines (--output) and pictures (--save_vis)."""
    records = []
    print(" rank     score    label  path")
    for query, (path, label) in enumerate(zip(paths, labels)):
        results = [{"rank": rank, "score": float(score), "path": gallery.paths[found], "label": gallery.labels[found]}
                   for rank, (found, score) in enumerate(zip(indices[query], scores[query]), start=1)
                   if found >= 0]  # an approximate index may find fewer than --top_k
        records.append({"query": path, "label": label, "results": results})
        print("query %d: %s%s" % (query + 1, path, "" if label is None else " (label %d)" % label))
        for result in results:
            print("%5d %9.5f %8s  %s" % (result["rank"], result["score"],
                                         "-" if result["label"] is None else result["label"], result["path"]))
    sys.stdout.flush()
    if args.output:
        with utility.atomic_output(args.output, "w") as output:
            for record in records + [{"query": path, "error": message} for path, message in skipped]:
                output.write(json.dumps(record) + "\n")
        log("results of %d queries written to %s" % (len(records), args.output))
    if args.save_vis:
        os.makedirs(args.save_vis, exist_ok=True)
        for number, record in enumerate(records, start=1):
            row = [(result["path"], None if None in (record["label"], result["label"])
                    else result["label"] == record["label"], result["score"]) for result in record["results"]]
            visualize.save_png(os.path.join(args.save_vis, "query_%05d.png" % number),
                               visualize.render_grid([(record["query"], row)], args.top_k, args.image_shape))
        log("%d pictures drawn into %s" % (len(records), args.save_vis))


def query(args):
    gallery = gallery_index.load(args.index_dir)
    if args.check_exact and not gallery.approximate:
        utility.flag_error("check_exact", "%s has no approximate structure to check (built with --index_type=exact)"
                           % args.index_dir)
    executor, feature_program, model = load_model(args)
    gallery.check_model(model)
    image_list = reader.read_images(args.images)
    features, paths, skipped = query_features(args, executor, feature_program, image_list)
    label_of = dict(zip(image_list.paths, [None] * len(image_list.paths) if image_list.class_ids is None
                        else image_list.class_ids.tolist()))
    indices, scores = search(args, gallery, features)
    log("%d queries searched %d indexed images%s" % (len(paths), len(gallery.paths),
                                                      ", %d unreadable skipped" % len(skipped) if skipped else ""))
    report(args, gallery, paths, [label_of[path] for path in paths], indices, scores, skipped)
    return indices, scores


@utility.exit_on_signals()
@utility.exit_on(*reader.READ_ERRORS, checkpoint.CheckpointError, gallery_index.GalleryIndexError, SearchError,
                 utility.OutputError, distributed.PeerLostError)
def main(argv=None):
    args = parse_args(argv)
    utility.print_arguments(args)
    return {"build": build, "add": add, "query": query}[args.command](args)


if __name__ == "__main__":
    main()
