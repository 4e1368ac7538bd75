"""Retrieval evaluation speed at SOP scale: metrics.py against the bare GEMM, faiss and the original's argsort.

    python bench/eval_speed.py --num_images=60502 --dims=512,2048

On the same synthetic SOP-shaped features (classes of 2-12 images, 5.35 on average as in the SOP test split;
unit-norm class centre plus noise) it times, with the peak memory each adds to the process:
  * metrics.retrieval_metrics: Recall@K for every K, MAP@R and R-Precision, with its C selection pass and (if
    --numpy_passes) on NumPy's passes instead;
  * the bare blocked product F @ F.T (same BLAS, same block rows): the compute lower bound;
  * faiss IndexFlatIP exact search for the max(K) + 1 neighbours Recall@K needs (if faiss-cpu is installed);
  * the original recall_topk algorithm (whole distance matrix, full-row argsort) on the first --argsort_size
    images, extrapolated to --num_images as N^2 log N (time) and N^2 (memory). The original's process pool
    splits the same work over at most the core count, after copying the features to every worker.
Times are given as ratios to the GEMM time. The machine's other load makes single runs noisy.
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
from core import metrics, native_build  # noqa: E402


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--num_images", type=int, default=60502, help="Images, all-vs-all. Default: %(default)s (SOP test).")
    add("--dims", type=utility.parse_int_list, default=[512, 2048], help="Feature sizes. Default: 512,2048.")
    add("--memory_mb", type=float, default=metrics.DEFAULT_MEMORY_MB,
        help="Block memory budget of the metrics module. Default: %(default)s.")
    add("--argsort_size", type=int, default=6000,
        help="Images for the original full-row argsort, extrapolated to --num_images. 0 skips. "
             "Default: %(default)s.")
    add("--recall_ks", type=utility.parse_int_list, default=list(metrics.DEFAULT_RECALL_KS),
        help="K of Recall@K. Default: 1,10,100,1000.")
    add("--noise", type=float, default=2.2,
        help="Noise norm around each unit class centre at 512-d, scaled with the dimension so that difficulty "
             "stays similar. Default: %(default)s.")
    add("--repeat", type=int, default=1,
        help="Best of this many alternating runs of the GEMM and the module. Default: %(default)s.")
    bench_flags.add_numpy_passes_flag(parser, "the metrics")
    add("--use_faiss", type=utility.str2bool, default=True, help="Time faiss if installed. Default: True.")
    add("--seed", type=int, default=0, help="Default: %(default)s.")
    return parser


def parse_args(argv=None):
    return make_parser().parse_args(argv)


def sop_like(num_images, dim, noise, seed):
    """Labels in runs of 2-12 (mean 5.35) and unit-norm float32 features: class centre plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    # Same-class cosine is about 1 / (1 + noise^2), the best of N negatives about c / sqrt(dim): keep their ratio.
    noise = math.sqrt(max((1 + noise ** 2) * math.sqrt(dim / 512.0) - 1, 0.0))
    sizes = 2 + rng.binomial(10, 0.335, size=num_images)
    labels = np.repeat(np.arange(num_images), sizes)[:num_images]
    centres = rng.standard_normal((labels[-1] + 1, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    features = np.empty((num_images, dim), np.float32)
    for r0 in range(0, num_images, 8192):  # chunks keep the noise temporaries small
        r1 = min(r0 + 8192, num_images)
        chunk = rng.standard_normal((r1 - r0, dim), dtype=np.float32) * (noise / math.sqrt(dim))
        chunk += centres[labels[r0:r1]]
        features[r0:r1] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return features, labels


def _status(key):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def measured(fn, *args, **kwargs):
    """(result, wall seconds, CPU seconds of all threads, peak MB added to the resident set).

    The peak is VmHWM after resetting it through /proc/self/clear_refs (nan where that is not allowed).
    """
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        base = _status("VmRSS")
    except OSError:
        base = float("nan")
    start, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start, time.process_time() - cpu, _status("VmHWM") - base


def bare_gemm(features, rows):
    out = np.empty((min(rows, len(features)), len(features)), np.float32)
    for r0 in range(0, len(features), rows):
        r1 = min(r0 + rows, len(features))
        np.matmul(features[r0:r1], features.T, out=out[:r1 - r0])


def faiss_neighbours(features, k):
    """Exact inner-product search (faiss IndexFlatIP, all cores) for the k nearest, the query included."""
    import faiss
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    index = faiss.IndexFlatIP(features.shape[1])
    index.add(features)
    return index.search(features, min(k, len(features)))[1]


def _recall_from_lists(neighbours, labels, ks):
    """Recall@K from ranked neighbour lists that may contain the query itself."""
    not_self = neighbours != np.arange(len(neighbours))[:, None]
    hit = (labels[neighbours] == labels[:, None]) & not_self
    position = np.cumsum(not_self, axis=1)  # 1-based rank once the query is skipped
    first = np.where(hit.any(axis=1), position[np.arange(len(hit)), hit.argmax(axis=1)], np.inf)
    return {"recall@%d" % k: float(np.mean(first <= k)) for k in ks}


def original_neighbours(features):
    """The original recall_topk's ranking: normalise, squared distances, 1e8 on the diagonal, argsort rows."""
    features = features / np.sqrt(np.sum(features ** 2, axis=1, keepdims=True))
    sq = np.sum(features ** 2, axis=1, keepdims=True)
    dist = sq + sq.T - 2 * features @ features.T
    dist = dist + np.eye(len(features)) * 1e8
    return np.argsort(dist, axis=1)


def _best(runs):
    """Fastest wall and CPU time of several measured() runs, and their largest peak memory."""
    return min(r[1] for r in runs), min(r[2] for r in runs), max(r[3] for r in runs)


def main(argv=None):
    args = parse_args(argv)
    ks = sorted(set(args.recall_ks))
    print("numpy %s, BLAS threads %s, cores %s" % (np.__version__, os.environ.get("OPENBLAS_NUM_THREADS"),
                                                    os.cpu_count()))
    for dim in args.dims:
        features, labels = sop_like(args.num_images, dim, args.noise, args.seed)
        max_positives = int(np.bincount(labels).max()) - 1
        rows = metrics.block_rows(len(features), args.memory_mb, max_positives)
        print("\nN=%d D=%d, %d classes, block %d rows (--memory_mb=%g)"
              % (len(features), dim, labels[-1] + 1, rows, args.memory_mb), flush=True)
        passes = bench_flags.selection_passes(args)
        gemm, ours = [], {c_pass: [] for c_pass, _ in passes}
        for _ in range(max(1, args.repeat)):  # alternate, so that all see the same machine load
            gemm.append(measured(bare_gemm, features, rows))
            for c_pass, _ in passes:
                with native_build.switched(c_pass):
                    ours[c_pass].append(measured(metrics.retrieval_metrics, features, labels, recall_ks=ks,
                                                 memory_mb=args.memory_mb))
        result = ours[passes[0][0]][0][0]
        table = [("bare blocked GEMM F @ F.T",) + _best(gemm) + ("",)]
        for c_pass, name in passes:
            same = ours[c_pass][0][0] == result
            table.append(("metrics.retrieval_metrics, " + name,) + _best(ours[c_pass])
                         + ("" if same else "results DIFFER from the C pass's",))
        print("metrics: " + ", ".join("%s=%.4f" % (k, v) for k, v in result.items() if k.startswith(("r", "m"))))
        if args.use_faiss:
            try:
                run = measured(faiss_neighbours, features, max(ks) + 1)
                found = _recall_from_lists(run[0], labels, ks)
                same = all(abs(found[k] - result[k]) < 1e-9 for k in found)
                table.append(("faiss IndexFlatIP, k=%d" % (max(ks) + 1),) + run[1:] +
                             ("Recall@K %s ours" % ("equal to" if same else "DIFFERS from"),))
            except ImportError:
                print("faiss not installed (pip install faiss-cpu): skipped")
        n = min(args.argsort_size, len(features))
        if n > 1:
            small = metrics.retrieval_metrics(features[:n], labels[:n], recall_ks=ks)
            run = measured(original_neighbours, features[:n])
            found = _recall_from_lists(run[0], labels[:n], ks)
            same = all(abs(found[k] - small[k]) < 1e-9 for k in found)
            table.append(("original argsort, N=%d (measured)" % n,) + run[1:] +
                         ("Recall@K %s ours" % ("equal to" if same else "DIFFERS from"),))
            grow = (len(features) / n) ** 2 * math.log(len(features)) / math.log(n)
            table.append(("original argsort, N=%d (extrapolated)" % len(features), run[1] * grow, run[2] * grow,
                          run[3] * (len(features) / n) ** 2, "time x N^2 log N, memory x N^2"))
        wall, cpu = table[0][1], table[0][2]
        print("\n| method | wall (s) | x GEMM | CPU (s) | x GEMM | peak extra memory (MB) | note |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for name, seconds, cpu_seconds, mb, note in table:
            print("| %s | %.1f | %.2f | %.1f | %.2f | %.0f | %s |"
                  % (name, seconds, seconds / wall, cpu_seconds, cpu_seconds / cpu, mb, note))
        sys.stdout.flush()
        del features


if __name__ == "__main__":
    main()
