"""Gallery search speed at a million images: exact blocked search against the bare matrix product and faiss.

    python bench/search_speed.py --num_gallery=1000000 --dim=512 --num_queries=1000 --top_k=10

On a synthetic gallery of unit-norm float32 features in classes (a class centre plus noise, as trained embeddings
cluster) and queries drawn the same way, it measures for each method the build time, the time per query (all
queries searched as one batch), the peak memory it adds to the process, and recall@K against exact search:
  * the bare blocked product Q @ G.T through NumPy's BLAS, in the blocks exact search uses: the lower bound;
  * neighbours.ExactIndex (what search.py query does without faiss): build = normalising and padding the gallery;
    its results are the reference of the other rows, and are checked on --check_queries queries against a full
    argpartition of their float64 similarities; with its C selection pass, and (if --numpy_passes) on NumPy's passes;
  * faiss IndexFlatIP, IndexIVFFlat (--nlist cells, each of --nprobe searched) and IndexHNSWFlat (--hnsw_m links,
    --ef_construction, each of --ef_search), when faiss is installed (pip install faiss-cpu); a structure's build
    time is that of its first row.
The bare product and exact search alternate --repeat times and keep their best times, so that their ratios compare
them under the same load; other processes on the machine still make single figures noisy.
"""
import argparse
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import core  # noqa: E402,F401  (thread count for BLAS, before numpy loads)
import numpy as np  # noqa: E402

import bench_flags  # noqa: E402
import utility  # noqa: E402
from core import faiss_search, native_build, neighbours, similarity  # noqa: E402
from eval_speed import measured  # noqa: E402

GENERATE_CHUNK_ROWS = 65536


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--num_gallery", type=int, default=1000000, help="Gallery size. Default: %(default)s.")
    add("--dim", type=int, default=512, help="Feature size. Default: %(default)s.")
    add("--num_queries", type=int, default=1000, help="Queries, searched as one batch. Default: %(default)s.")
    add("--top_k", type=int, default=10, help="K of the search and of recall@K. Default: %(default)s.")
    add("--num_classes", type=int, default=50000, help="Classes of the synthetic data. Default: %(default)s.")
    add("--noise", type=float, default=0.6, help="Norm of the noise around a unit class centre: same-class items "
        "have a cosine similarity of about 1 / (1 + noise^2). Default: %(default)s.")
    add("--memory_mb", type=float, default=similarity.DEFAULT_MEMORY_MB,
        help="Block budget of the exact search. Default: %(default)s.")
    add("--check_queries", type=int, default=20, help="Queries whose exact results are checked against a full "
        "float64 argpartition. Default: %(default)s.")
    add("--nlist", type=int, default=1024, help="IVF cells. Default: %(default)s.")
    add("--nprobe", type=utility.parse_int_list, default=[16, 64], help="IVF cells searched a query; a row for each. "
        "Default: 16,64.")
    add("--hnsw_m", type=int, default=32, help="HNSW links an item. Default: %(default)s.")
    add("--ef_construction", type=int, default=40, help="HNSW build candidates. Default: %(default)s.")
    add("--ef_search", type=utility.parse_int_list, default=[64, 256], help="HNSW query candidates; a row for "
        "each. Default: 64,256.")
    add("--repeat", type=int, default=2, help="Best of this many alternating runs of the bare product and exact "
        "search, which the table compares. Default: %(default)s.")
    bench_flags.add_numpy_passes_flag(parser, "exact search")
    add("--use_faiss", type=utility.str2bool, default=True,
        help="Measure faiss if installed. Default: True.")
    add("--seed", type=int, default=0, help="Default: %(default)s.")
    return parser


def parse_args(argv=None):
    return make_parser().parse_args(argv)


def clustered(num_items, dim, num_classes, noise, seed, centres=None):
    """Unit-norm float32 rows: a random class's unit centre plus Gaussian noise of norm about `noise`."""
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = rng.standard_normal((num_classes, dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    features = np.empty((num_items, dim), np.float32)
    for r0 in range(0, num_items, GENERATE_CHUNK_ROWS):  # chunks keep the noise temporaries small
        r1 = min(r0 + GENERATE_CHUNK_ROWS, num_items)
        chunk = rng.standard_normal((r1 - r0, dim), dtype=np.float32) * (noise / math.sqrt(dim))
        chunk += centres[rng.integers(0, len(centres), r1 - r0)]
        features[r0:r1] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return features, centres


def bare_product(queries, gallery, rows):
    """Q @ G.T in blocks of `rows` query rows into one reused buffer: the work exact search cannot avoid."""
    out = np.empty((min(rows, len(queries)), len(gallery)), np.float32)
    for r0 in range(0, len(queries), rows):
        block = queries[r0:r0 + rows]
        np.matmul(block, gallery.T, out=out[:len(block)])


def argpartition_top_k(queries, gallery, k):
    """The k most similar items by float64 similarities, best first (a check independent of the blocks)."""
    s = queries.astype(np.float64) @ gallery.astype(np.float64).T
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, axis=1), axis=1), axis=1)


def row(name, build_seconds, search_seconds, num_queries, memory_mb, recall, bare_ms=None):
    """One table row: ms per query from the batch's seconds; the ratio to the bare product's ms per query."""
    ms = 1000.0 * search_seconds / num_queries
    return (name, build_seconds, ms, memory_mb, recall, ms / bare_ms if bare_ms else None)


def format_table(rows, k):
    lines = ["| method | build (s) | ms / query | peak extra memory (MB) | recall@%d vs exact | x bare product |" % k,
             "|---|---:|---:|---:|---:|---:|"]
    for name, build_seconds, ms, memory_mb, recall, ratio in rows:
        lines.append("| %s | %s | %.2f | %.0f | %s | %s |"
                     % (name, "-" if build_seconds is None else "%.1f" % build_seconds, ms, memory_mb,
                        "-" if recall is None else "%.4f" % recall, "-" if ratio is None else "%.2f" % ratio))
    return "\n".join(lines)


def faiss_rows(args, gallery, queries, exact):
    """Build each faiss structure in turn, search it with each query parameter, free it before the next."""
    rows = []
    kinds = [("faiss IndexFlatIP", "flat", {}, [("", {})]),
             ("faiss IndexIVFFlat (nlist %d" % args.nlist, "ivf", {"nlist": args.nlist},
              [(", nprobe %d)" % nprobe, {"nprobe": nprobe}) for nprobe in args.nprobe]),
             ("faiss IndexHNSWFlat (M %d, efConstruction %d" % (args.hnsw_m, args.ef_construction), "hnsw",
              {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction},
              [(", efSearch %d)" % ef, {"ef_search": ef}) for ef in args.ef_search])]
    for name, kind, parameters, settings in kinds:
        (structure, _), build_seconds, _, build_mb = measured(faiss_search.build, kind, gallery, seed=args.seed,
                                                              **parameters)
        for suffix, setting in settings:
            (found, _), seconds, _, search_mb = measured(faiss_search.search, structure, queries, args.top_k,
                                                         **setting)
            rows.append(row(name + suffix, build_seconds, seconds, len(queries), max(build_mb, search_mb),
                            faiss_search.recall_against(found, exact)))
            print("measured %s" % (name + suffix), flush=True)
        del structure
    return rows


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    gallery, centres = clustered(args.num_gallery, args.dim, args.num_classes, args.noise, args.seed)
    queries, _ = clustered(args.num_queries, args.dim, args.num_classes, args.noise, args.seed + 1, centres)
    print("gallery %d x %d (%.0f MB), %d queries, k=%d; generated in %.0f s; cores %d, BLAS threads %s, load %.1f"
          % (args.num_gallery, args.dim, gallery.nbytes / 2**20, args.num_queries, args.top_k, time.time() - start,
             os.cpu_count(), os.environ.get("OPENBLAS_NUM_THREADS"), os.getloadavg()[0]), flush=True)

    index, build_seconds, _, build_mb = measured(neighbours.ExactIndex, gallery, args.memory_mb)
    rows = neighbours.block_rows(len(index.gallery), args.top_k, args.memory_mb,
                                 similarity.NumpyBlocks.bytes_per_element)
    passes = bench_flags.selection_passes(args)
    bare, searched = [], {c_pass: [] for c_pass, _ in passes}
    for _ in range(max(1, args.repeat)):  # alternate, so that all see the same machine load
        bare.append(measured(bare_product, queries, gallery, rows))
        for c_pass, _ in passes:
            with native_build.switched(c_pass):
                searched[c_pass].append(measured(index.search, queries, args.top_k))
    del index
    exact = searched[passes[0][0]][0][0][0]
    bare_seconds, bare_mb = min(run[1] for run in bare), max(run[3] for run in bare)
    checked = min(args.check_queries, args.num_queries)
    independent = argpartition_top_k(queries[:checked], gallery, args.top_k)
    bare_ms = 1000.0 * bare_seconds / args.num_queries
    table = [row("bare blocked product Q @ G.T (%d query rows a block)" % rows, None, bare_seconds,
                 args.num_queries, bare_mb, None)]
    for c_pass, name in passes:
        found = searched[c_pass][0][0][0]
        seconds, mb = min(run[1] for run in searched[c_pass]), max(run[3] for run in searched[c_pass])
        table.append(row("exact blocked search (neighbours.ExactIndex, %g MB blocks, %s)" % (args.memory_mb, name),
                         build_seconds, seconds, args.num_queries, max(build_mb, mb),
                         faiss_search.recall_against(found[:checked], independent), bare_ms))
    print("measured exact search; its recall is against a float64 argpartition of %d queries" % checked, flush=True)
    if args.use_faiss and faiss_search.available():
        table += faiss_rows(args, gallery, queries, exact)
    elif args.use_faiss:
        print("faiss not installed (pip install faiss-cpu): its rows are skipped", flush=True)
    print("\n" + format_table(table, args.top_k), flush=True)
    return table


if __name__ == "__main__":
    main()
