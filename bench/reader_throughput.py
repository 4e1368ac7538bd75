"""Images per second of the training and evaluation readers, by number of decoding workers.

    python bench/reader_throughput.py --workers=0,1,2,4 --batch_size=64 --repeats=3

Two data sets are made once under --work_dir by data/make_toy_sop.py: the toy set (80 px JPEGs) and an SOP-sized
set (--large_size px, default 500, the same drawings saved as JPEG quality 90). On each, for every worker count:
  * train: `reader.train_batches` with shuffled sampling and the default augmentation (random-resized crop, flip);
  * eval: `reader.eval_batches` (resize the short side, centre crop) over a list that repeats the test split's images
    until it holds every batch one measurement reads.
`--workers=0` decodes in the main process: the baseline. Each measurement first drains one batch per worker (the
pool's start-up and its first round of decoding, done in parallel, are not counted), then times the next batches.
Configurations take turns within each repeat, so the machine's other load spreads over all of them; the table shows
the median and the range of the repeats, and the CPU time per image of the main process and of the workers.
On a shared machine, more workers cannot beat the cores the scheduler gives this session: the run measures that
share at its start and end ("cores available") and reports the cores each configuration kept busy.
A second table splits one process's CPU time per image into its stages.
"""
import argparse
import multiprocessing
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import core  # noqa: E402,F401  (thread variables, before numpy loads)
import numpy as np  # noqa: E402

import reader  # noqa: E402
import utility  # noqa: E402
from bench import bench_flags  # noqa: E402
from core import image_ops, samplers  # noqa: E402
from data.make_toy_sop import make_toy_sop  # noqa: E402

TOY_IMAGE_SIZE = 80
EVAL_LIST = "Ebay_bench_eval.txt"
READERS = ("train", "eval")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--workers", type=utility.parse_int_list, default=[0, 1, 2, 4],
        help="Reader worker counts; 0 decodes in the main process. Default: 0,1,2,4.")
    add("--batch_size", type=int, default=64, help="Images per batch. Default: %(default)s.")
    add("--batches", type=int, default=16,
        help="Timed batches per measurement on the large set, after the warm-up. Default: %(default)s.")
    add("--toy_batches", type=int, default=64,
        help="Timed batches per measurement on the toy set, whose images are ~15x cheaper. Default: %(default)s.")
    add("--repeats", type=int, default=3, help="Measurements per configuration; the median is shown. "
                                               "Default: %(default)s.")
    add("--image_shape", type=utility.parse_image_shape, default=(3, 224, 224),
        help="Output C,H,W on the large set. Default: 3,224,224.")
    add("--toy_image_shape", type=utility.parse_image_shape, default=(3, 64, 64),
        help="Output C,H,W on the toy set. Default: 3,64,64.")
    add("--large_size", type=int, default=500, help="Side of the large set's JPEGs. Default: %(default)s.")
    add("--large_classes", type=int, default=30,
        help="Products in each split of the large set (4-8 images each). Default: %(default)s.")
    add("--toy_classes", type=int, default=100,
        help="Products in each split of the toy set (4-8 images each). Default: %(default)s.")
    add("--profile_images", type=int, default=64,
        help="Images for the per-stage timing of one process; 0 skips it. Default: %(default)s.")
    add("--work_dir", default="/tmp/reader_throughput",
        help="Where the data sets are made, and kept for the next run. Default: %(default)s.")
    add("--seed", type=int, default=0, help="Default: %(default)s.")
    return parser


def parse_args(argv=None):
    args = make_parser().parse_args(argv)
    if min(args.workers) < 0:
        utility.flag_error("workers", "worker counts cannot be negative, got %s" % args.workers)
    bench_flags.check_at_least_one(args, ("batch_size", "batches", "toy_batches", "repeats", "large_classes",
                                         "toy_classes"))
    return args


def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def available_cores(seconds=1.0):
    """Cores this process's session gets right now: CPU time of one busy process per CPU over the wall time.

    On a shared machine the scheduler splits the CPUs between sessions, which caps what more workers can give.
    """
    context = multiprocessing.get_context("fork")
    spinners = [context.Process(target=spin, args=(seconds,)) for _ in range(os.cpu_count())]
    start_wall, start_cpu = time.perf_counter(), os.times()
    for spinner in spinners:
        spinner.start()
    for spinner in spinners:
        spinner.join()
    end_cpu = os.times()
    cpu = end_cpu.children_user + end_cpu.children_system - start_cpu.children_user - start_cpu.children_system
    return cpu / (time.perf_counter() - start_wall)


def make_data_set(data_dir, num_classes, image_size, seed):
    summary = make_toy_sop(data_dir, num_classes, num_classes, image_size=image_size, seed=seed, overwrite=True)
    state = "made in %.1f s" % summary["seconds"] if summary["created"] else "reused"
    print("%s: %d train / %d test images of %d px, %s" % (data_dir, summary["train_images"], summary["test_images"],
                                                          image_size, state), flush=True)


def write_eval_list(data_dir, num_images):
    """Writes EVAL_LIST next to the test list: the test split's images, repeated in order up to num_images lines."""
    test_list = reader.read_list(data_dir, reader.TEST_LIST)
    lines = [" ".join(reader.LIST_HEADER)]
    for image_id in range(1, num_images + 1):
        row = (image_id - 1) % len(test_list.paths)
        lines.append("%d %d %d %s" % (image_id, test_list.class_ids[row], test_list.super_class_ids[row],
                                      os.path.relpath(test_list.paths[row], data_dir)))
    with open(os.path.join(data_dir, EVAL_LIST), "w") as list_file:
        list_file.write("\n".join(lines) + "\n")


def worker_cpu_seconds():
    """User + system CPU seconds used so far by this process's live children (the reader workers), from /proc."""
    with open("/proc/self/task/%d/children" % os.getpid()) as children:
        pids = children.read().split()
    ticks = 0
    for pid in pids:
        with open("/proc/%s/stat" % pid) as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLOCK_TICKS


def warmup_batches(num_workers):
    """One batch per worker, so the pool's start-up and its first round, decoded in parallel, are not timed."""
    return max(1, num_workers)


def measure(batches, warmup_batches, timed_batches):
    """Drains warmup_batches from the batch generator, times the next timed_batches, then closes it.

    Returns images/s, the CPU milliseconds per image of the main process and of the workers, and the cores the
    reader kept busy on average (all its CPU time over the wall time).
    """
    try:
        for _ in range(warmup_batches):
            next(batches)
        images = 0
        start_wall, start_main, start_workers = time.perf_counter(), time.process_time(), worker_cpu_seconds()
        for _ in range(timed_batches):
            images += len(next(batches)[0])
        wall = time.perf_counter() - start_wall
        main_cpu = time.process_time() - start_main
        workers_cpu = worker_cpu_seconds() - start_workers
    finally:
        batches.close()
    return dict(images_per_second=images / wall, main_ms=1000.0 * main_cpu / images,
                workers_ms=1000.0 * workers_cpu / images, cores=(main_cpu + workers_cpu) / wall)


# The training scripts' default augmentation: random-resized crop of at least 8% of the image, flip, no rotation.
AUGMENTATION = image_ops.Augmentation(crop_scale_min=0.08, random_flip=True, rotate=False)


def reader_batches(reader_name, data_set, batch_size, num_workers, seed):
    if reader_name == "train":
        train_list = data_set["train_list"]
        sampler = samplers.make_sampler(samplers.SHUFFLED, reader.train_labels(train_list), batch_size, 1, seed)
        return reader.train_batches(train_list, sampler, data_set["image_shape"], AUGMENTATION,
                                    num_workers=num_workers, seed=seed)
    return reader.eval_batches(reader.read_list(data_set["data_dir"], EVAL_LIST), batch_size,
                               data_set["image_shape"], num_workers)


def per_image_ms(action, items, repeats):
    """CPU milliseconds per item of `action(item)`, best of `repeats` passes.

    CPU time rather than wall time, and the best pass: the other users of a shared machine inflate both.
    """
    runs = []
    for _ in range(repeats):
        start = time.process_time()
        for item in items:
            action(item)
        runs.append((time.process_time() - start) * 1000.0 / len(items))
    return min(runs)


def stage_times(data_set, num_images, batch_size, repeats, seed):
    """CPU milliseconds per image of each stage, all in this process, on the first num_images training images."""
    paths = data_set["train_list"].paths[:num_images]
    images = [image_ops.load_rgb(path) for path in paths]
    channels, height, width = data_set["image_shape"]
    out = np.empty((channels, height, width), np.float32)
    rng = np.random.default_rng(seed)
    output_sized = [image_ops.resize(image, width, height) for image in images]
    full_slot = np.ones((batch_size, channels, height, width), np.float32)
    return [
        ("open, decode, RGB (image_ops.load_rgb)", per_image_ms(image_ops.load_rgb, paths, repeats)),
        ("train transform: crop, resize, flip, normalise",
         per_image_ms(lambda image: image_ops.train_image(image, out, AUGMENTATION, rng), images, repeats)),
        ("eval transform: resize, centre crop, normalise",
         per_image_ms(lambda image: image_ops.normalize(image_ops.test_crop(image, height, width), out), images,
                      repeats)),
        ("of which normalise (image_ops.normalize)",
         per_image_ms(lambda image: image_ops.normalize(image, out), output_sized, repeats)),
        ("main process: batch copy out of the slot",
         per_image_ms(np.copy, [full_slot] * 4, repeats) / batch_size),
    ]


def summarise(runs):
    """The median of every measured quantity over the repeats, and the slowest and fastest rate."""
    summary = {quantity: statistics.median(run[quantity] for run in runs) for quantity in runs[0]}
    rates = [run["images_per_second"] for run in runs]
    summary["range"] = "%.0f-%.0f" % (min(rates), max(rates))
    return summary


def print_throughput_table(data_sets, worker_counts, summaries):
    print("| data set | image size | output shape | reader | workers | images/s | range | x 1 worker | cores busy "
          "| CPU ms/image: main | CPU ms/image: workers |")
    print("|---|---|---|---|---:|---:|---|---:|---:|---:|---:|")
    for data_set in data_sets:
        shape = "x".join(str(side) for side in data_set["image_shape"])
        for reader_name in READERS:
            one_worker = summaries.get((data_set["name"], reader_name, 1))
            for num_workers in worker_counts:
                row = summaries[(data_set["name"], reader_name, num_workers)]
                ratio = "%.2f" % (row["images_per_second"] / one_worker["images_per_second"]) if one_worker else "-"
                print("| %s | %d px | %s | %s | %d | %.0f | %s | %s | %.2f | %.3f | %.3f |"
                      % (data_set["name"], data_set["image_size"], shape, reader_name, num_workers,
                         row["images_per_second"], row["range"], ratio, row["cores"], row["main_ms"],
                         row["workers_ms"]))


def main(argv=None):
    args = parse_args(argv)
    print("CPUs: %d (os.cpu_count), usable by this process: %d; load average at start: %.2f %.2f %.2f; cores "
          "available to this session now: %.2f" % ((os.cpu_count(), len(os.sched_getaffinity(0))) + os.getloadavg()
                                                   + (available_cores(),)), flush=True)
    large_dir = os.path.join(args.work_dir, "sop_%dpx" % args.large_size)
    toy_dir = os.path.join(args.work_dir, "toy_sop")
    make_data_set(toy_dir, args.toy_classes, TOY_IMAGE_SIZE, args.seed)
    make_data_set(large_dir, args.large_classes, args.large_size, args.seed)
    data_sets = [
        dict(name="toy", data_dir=toy_dir, image_size=TOY_IMAGE_SIZE, image_shape=args.toy_image_shape,
             timed_batches=args.toy_batches),
        dict(name="SOP-sized", data_dir=large_dir, image_size=args.large_size, image_shape=args.image_shape,
             timed_batches=args.batches),
    ]
    for data_set in data_sets:
        data_set["train_list"] = reader.read_train_list(data_set["data_dir"])
        write_eval_list(data_set["data_dir"],
                        (warmup_batches(max(args.workers)) + data_set["timed_batches"]) * args.batch_size)

    measurements = {}
    for repeat in range(args.repeats):
        for data_set in data_sets:
            for reader_name in READERS:
                for num_workers in args.workers:
                    batches = reader_batches(reader_name, data_set, args.batch_size, num_workers, args.seed)
                    result = measure(batches, warmup_batches(num_workers), data_set["timed_batches"])
                    measurements.setdefault((data_set["name"], reader_name, num_workers), []).append(result)
        print("repeat %d of %d done, load average %.2f" % (repeat + 1, args.repeats, os.getloadavg()[0]), flush=True)
    print("cores available to this session at the end: %.2f" % available_cores())
    print("\nbatch size %d, median of %d repeats (range: slowest-fastest); cores busy: the reader's CPU time (main "
          "process and workers) over the wall time\n" % (args.batch_size, args.repeats))
    print_throughput_table(data_sets, args.workers,
                           {key: summarise(runs) for key, runs in measurements.items()})

    if args.profile_images:
        print("\nOne process, CPU milliseconds per image (best of %d passes over %d training images)\n"
              % (args.repeats, args.profile_images))
        print("| data set | stage | CPU ms per image |")
        print("|---|---|---:|")
        for data_set in data_sets:
            for stage, milliseconds in stage_times(data_set, args.profile_images, args.batch_size, args.repeats,
                                                   args.seed):
                print("| %s | %s | %.3f |" % (data_set["name"], stage, milliseconds))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
