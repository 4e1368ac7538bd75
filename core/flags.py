"""Every command-line flag of the scripts, declared once: name, type, default, help and check.

A script builds its parser from the groups below (`utility.ArgumentParser.add_flags`), overriding the defaults that
differ between scripts, and calls the checks that relate several flags. A loss's own flags live in its file in
losses/ and join the training scripts' parsers through the registry. Every check runs before anything is built or
written; a bad value is a one-line error naming the flag, exit code 2.
"""
import os

import paddle

import models
import reader
from core import checkpoint, distributed, faiss_search, metrics, programs
from utility import (Flag, flag_error, non_negative, one_of, parse_image_shape, parse_int_list, positive,
                     writable_directory, writable_file)

DEFAULT_DATA_DIR = "./data/Stanford_Online_Products/"


def cuda_is_compiled():
    return paddle.is_compiled_with_cuda()


def _rgb_shape(shape):
    if shape[0] != 3:
        return "images are decoded as RGB, so C must be 3, got %s" % ",".join(map(str, shape))
    return None


def _gpu_available(use_gpu):
    if use_gpu and not cuda_is_compiled():
        return ("True, but this PaddlePaddle is a CPU build. Run with --use_gpu=False, or install paddlepaddle-gpu "
                "(same major version).")
    return None


def _weights_exist(path):
    if not (os.path.exists(path) or os.path.exists(path + ".pdparams")):
        return "%s: no such file or directory" % path
    return None


def _resumable(path):
    if path == checkpoint.AUTO:  # resolved when training starts: none yet is fine
        return None
    try:
        checkpoint.find_checkpoint(path)
    except checkpoint.CheckpointError as error:
        return str(error)
    return None


def _increasing_positive(steps):
    if any(later <= earlier for earlier, later in zip(steps, steps[1:])):
        return "must be strictly increasing, got %s" % ",".join(map(str, steps))
    if steps and min(steps) <= 0:
        return "iterations must be positive, got %s" % ",".join(map(str, steps))
    return None


def _fraction(value):
    return None if 0 < value <= 1 else "must be in (0, 1], got %s" % value


def _positive_ints(values):
    return None if values and min(values) >= 1 else "needs positive integers, got %s" % values


def _npy_file(path):
    return None if path.endswith(".npy") else "must end in .npy, got %s" % path


def _npy_output(path):
    return _npy_file(path) or writable_file(path) or writable_file(path[:-len(".npy")] + ".paths.txt")


MODEL = Flag("model", str, "ResNet50", "Backbone: %s." % ", ".join(models.MODELS), one_of(models.MODELS))
EMBEDDING_SIZE = Flag("embedding_size", int, 0, "Size of the fully connected embedding on top of the pooled "
                      "feature, as in training; 0: the pooled feature itself.", non_negative)
IMAGE_SHAPE = Flag("image_shape", parse_image_shape, (3, 224, 224), "Input image shape C,H,W.", _rgb_shape)
USE_GPU = Flag("use_gpu", bool, cuda_is_compiled(), "Whether to use GPU 0 (default: whether this Paddle was built "
               "with CUDA).", _gpu_available)
USE_MKLDNN = Flag("use_mkldnn", bool, True, "On CPU, run the convolutions with oneDNN: training's directly, "
                  "features through Paddle Inference's predictor (several times faster, same results up to float32 "
                  "rounding); ignored on GPU.")
PRETRAINED_MODEL = Flag("pretrained_model", str, None, "Weights to start from or to use, matched by name and shape: "
                        "a checkpoint directory, a .pdparams file or a directory of Fluid variable files.",
                        _weights_exist)
DATA_DIR = Flag("data_dir", str, DEFAULT_DATA_DIR, "Data root holding Ebay_train.txt and Ebay_test.txt.")
NUM_WORKERS = Flag("num_workers", int, 2, "Image decoding processes (0: decode in the main process).", non_negative)
BATCH_SIZE = Flag("batch_size", int, 10, "Mini-batch size.", positive)

# The flags of every script that runs the network on images.
NETWORK = (MODEL, EMBEDDING_SIZE, IMAGE_SHAPE, USE_GPU, USE_MKLDNN, PRETRAINED_MODEL, DATA_DIR, NUM_WORKERS)

SEED = Flag("seed", int, 0, "Random seed: of initialisation, sampling and augmentation in training; of k-means in "
            "eval.py --cluster_metrics.")

MODEL_SAVE_DIR = Flag("model_save_dir", str, "output", "Output directory: training saves its checkpoints to "
                      "model_save_dir/<model>/<iteration>/; export_model.py writes the exported model here.",
                      writable_directory)


def loss_name(choices):
    """--loss_name, whose choices are the losses of one training script."""
    return Flag("loss_name", str, None, "Loss to optimise: %s." % ", ".join(choices), one_of(choices))


TRAINING = (
    MODEL, EMBEDDING_SIZE, IMAGE_SHAPE,
    Flag("train_batch_size", int, 256, "Mini-batch size for training, over all processes of a distributed launch.",
         positive),
    Flag("test_batch_size", int, 50, "Mini-batch size for testing.", positive),
    Flag("lr", float, 0.01, "Initial learning rate.", positive),
    Flag("lr_steps", parse_int_list, [15000, 25000], "piecewise_decay: iterations at which the learning rate is "
         "multiplied by 0.1.", _increasing_positive),
    Flag("lr_strategy", str, "piecewise_decay", "Learning-rate schedule: piecewise_decay (by --lr_steps) or "
         "cosine_decay (to 0 at --total_iter_num).", one_of(programs.LR_STRATEGIES)),
    Flag("warmup_iter_num", int, 0, "Iterations of linear warm-up from 0 to --lr before the schedule.",
         non_negative),
    Flag("total_iter_num", int, 30000, "Total number of training iterations.", positive),
    Flag("display_iter_step", int, 10, "Log every this many iterations.", positive),
    Flag("test_iter_step", int, 1000, "Test Recall@1 on --test_list every this many iterations (0: never).",
         non_negative),
    Flag("save_iter_step", int, 1000, "Save a checkpoint every this many iterations.", positive),
    USE_GPU, USE_MKLDNN,
    Flag("use_amp", bool, False, "Automatic mixed precision (Paddle's static AMP, O1): the network in --amp_dtype, "
         "the loss in float32."),
    Flag("amp_dtype", str, "float16", "float16 (GPU, with dynamic loss scaling) or bfloat16 (GPU or CPU).",
         one_of(programs.AMP_DTYPES)),
    PRETRAINED_MODEL,
    Flag("checkpoint", str, None, "Checkpoint directory to resume from exactly (weights, momentum, learning-rate "
         "schedule, iteration); 'auto': the newest one in model_save_dir/<model>, or a fresh start (from "
         "--pretrained_model, if given) when there is none, so that the same command line can be restarted after "
         "any interruption.", _resumable),
    MODEL_SAVE_DIR,
    Flag("save_best", bool, True, "Also keep the checkpoint of the best test Recall@1 so far in "
         "model_save_dir/<model>/best/."),
    DATA_DIR,
    Flag("test_list", str, reader.TEST_LIST, "List file the periodic test scores (in --data_dir, or an absolute "
         "path; its image paths are relative to --data_dir): the test split, or a validation list of classes held "
         "out of training, so that best/ is chosen without looking at the test split."),
    SEED,
    NUM_WORKERS,
    Flag("crop_scale_min", float, 0.08, "Smallest area fraction of the random-resized crop.", _fraction),
    Flag("random_flip", bool, True, "Random horizontal flips in training."),
    Flag("rotate", bool, False, "Random rotation by up to ±10 degrees in training."),
    Flag("max_bad_images", int, 100, "Unreadable training images tolerated (each replaced) before training stops.",
         non_negative),
    Flag("nan_check", bool, True, "Stop at the first non-finite loss (checked every iteration) or parameter "
         "(checked before each save, so that no checkpoint holds one)."),
    Flag("force", bool, False, "Save into model_save_dir/<model> even while another training run is saving there "
         "(its lock file says which)."),
    Flag("vdl_log_dir", str, None, "Also write loss, learning rate and test recall to this directory for VisualDL "
         "(optional: pip install visualdl).", writable_directory),
    Flag("enable_ce", bool, False, "Continuous evaluation, as the original's: after training, print the last logged "
         "loss and the final test Recall@1 as `kpis` lines."),
)

SAVE_VIS = Flag("save_vis", str, None, "Directory to draw into: pictures of queries with their top results (green: "
                "same class, red: other, grey: unknown); eval.py draws grids of several queries and the Recall@K "
                "curve, search.py query one picture per query.", writable_directory)

EVALUATION = (
    Flag("recall_k", parse_int_list, [1, 10, 100, 1000], "The K of Recall@K to report.", _positive_ints),
    Flag("eval_memory_mb", int, metrics.DEFAULT_MEMORY_MB, "Memory budget of one block of the similarity matrix.",
         positive),
    Flag("save_results", str, None, "Also write the metrics to this JSON file.", writable_file),
    Flag("query_list", str, None, "List file (in --data_dir) of queries that search --gallery_list instead of all "
         "test images searching each other, e.g. Ebay_query.txt of In-Shop."),
    Flag("gallery_list", str, None, "List file (in --data_dir) of the gallery --query_list searches, e.g. "
         "Ebay_gallery.txt of In-Shop."),
    SAVE_VIS,
    Flag("vis_queries", int, 20, "Queries in the --save_vis grids, spread over the query list.", positive),
    Flag("vis_top_k", int, 8, "Results per query in the --save_vis grids.", positive),
)


def _unit_interval(value):
    return None if 0 <= value <= 1 else "must be in [0, 1], got %s" % value


# Re-ranking a query's results against the gallery (core/rerank.py): eval.py's query/gallery mode, search.py query.
RERANKING = (
    Flag("qe_k", int, 0, "Query expansion: each query is replaced by the normalised sum of itself and its --qe_k "
         "nearest gallery items, weighted by similarity^--qe_alpha, and searched again (0: off).", non_negative),
    Flag("qe_alpha", float, 0.0, "Exponent of the query-expansion weights: 0 is average query expansion, 3 the "
         "usual alpha-QE.", non_negative),
    Flag("rerank", bool, False, "k-reciprocal re-ranking (Zhong et al. 2017) of the gallery for each query, after "
         "any query expansion. Costs one exact k-NN pass over all queries and gallery items together."),
    Flag("rerank_k1", int, 20, "k1 of k-reciprocal re-ranking: size of the neighbourhoods whose reciprocity counts.",
         positive),
    Flag("rerank_k2", int, 6, "k2 of k-reciprocal re-ranking: neighbours averaged by local query expansion "
         "(1: none).", positive),
    Flag("rerank_lambda", float, 0.3, "lambda of k-reciprocal re-ranking: weight of the original distance against "
         "the Jaccard distance.", _unit_interval),
)

CLUSTER_METRICS = Flag("cluster_metrics", bool, False, "Also NMI and F1 of a k-means clustering of the test features "
                       "into as many clusters as test classes (faiss's k-means when faiss is installed, NumPy's "
                       "otherwise; seeded by --seed).")
BY_SUPER_CLASS = Flag("by_super_class", bool, False, "Also Recall@K for the queries of each super class "
                      "(super_class_id of the query list), each still searching all test images.")

SAVE_FEATURES = Flag("save_features", str, None, "Write all features to this .npy file, and the image paths in the "
                     "same order to PATH.paths.txt (PATH without .npy).", _npy_output)
# What infer.py extracts, instead of Ebay_test.txt in --data_dir.
INFER_IMAGES = (
    Flag("list", str, None, "Extract the images of this list instead of --data_dir's Ebay_test.txt: a list in the "
         "SOP format or a plain list of image paths, one a line, relative to the list's folder."),
    Flag("image_dir", str, None, "Extract every image file under this folder (in path order) instead of --data_dir's "
         "Ebay_test.txt."),
)


def _faiss_type(index_type):
    if index_type != "exact" and not faiss_search.available():
        return "%s needs faiss (pip install faiss-cpu); exact search needs nothing" % index_type
    return None


INDEX_TYPE = Flag("index_type", str, "exact", "Search structure: exact (none: exact blocked search over the features) "
                  "or, with faiss installed, flat (faiss's exact search), ivf or hnsw (approximate).",
                  lambda value: one_of(("exact",) + faiss_search.INDEX_TYPES)(value) or _faiss_type(value))
SEARCH_INDEX = (
    Flag("index_dir", str, None, "The index directory (search.py build writes it, add and query read it)."),
    Flag("images", str, None, "The images: a folder (every image file under it), one image, a list in the SOP "
         "format (its class_id is kept as the label) or a plain list of image paths; a list's relative paths are "
         "relative to its own folder."),
)
SEARCH_FEATURES = Flag("features", str, None, "build/add: take infer.py --save_features output (PATH.npy and "
                       "PATH.paths.txt) instead of extracting; the model flags must be the ones infer.py ran with. "
                       "With --images an SOP list of the same images, in the same order, gives the labels.",
                       _npy_file)
SEARCH_BUILD = (
    INDEX_TYPE,
    Flag("nlist", int, 0, "ivf: number of cells (0: 4 sqrt(N)).", non_negative),
    Flag("hnsw_m", int, 32, "hnsw: links per item.", positive),
    Flag("ef_construction", int, 40, "hnsw: candidate list while building.", positive),
    SEED,
)
SEARCH_QUERY = (
    Flag("top_k", int, 5, "Results per query.", positive),
    Flag("output", str, None, "Also write the results as JSON lines to this file: one line per query, "
         '{"query", "label", "results": [{"rank", "score", "path", "label"}]}, or {"query", "error"} for a query '
         "image that could not be read.", writable_file),
    SAVE_VIS,
    Flag("memory_mb", int, metrics.DEFAULT_MEMORY_MB, "Exact search: memory budget of one block of the similarity "
         "matrix (the normalised gallery, N x D float32, comes on top).", positive),
    Flag("nprobe", int, 16, "ivf: cells a query searches.", positive),
    Flag("ef_search", int, 64, "hnsw: candidates a query explores (at least --top_k).", positive),
    Flag("check_exact", int, 0, "With an ivf, hnsw or flat index: also search the first N queries exactly and report "
         "the index's recall@--top_k against exact search (0: off).", non_negative),
)


def check_search(args):
    """The checks that relate search.py's flags; each names the flag to change."""
    if not args.index_dir:
        flag_error("index_dir", "give the index directory")
    if args.command in ("build", "add") and not (args.images or args.features):
        flag_error("images", "give the images to index (or --features from infer.py)")
    if args.command == "query" and not args.images:
        flag_error("images", "give the query images")


def check_training(args):
    """The checks that relate several training flags; each names the flag to change."""
    if args.test_iter_step > args.total_iter_num:
        flag_error("test_iter_step", "%d is more than --total_iter_num=%d: no test would run and no best/ be kept; "
                   "pass --test_iter_step=%d or less, or 0 to train without testing"
                   % (args.test_iter_step, args.total_iter_num, args.total_iter_num))
    if not args.warmup_iter_num < args.total_iter_num:
        flag_error("warmup_iter_num", "must be in [0, --total_iter_num=%d), got %d"
                   % (args.total_iter_num, args.warmup_iter_num))
    if args.lr_strategy == "piecewise_decay" and args.lr_steps and min(args.lr_steps) <= args.warmup_iter_num:
        flag_error("lr_steps", "the learning rate cannot decay during the warm-up: %s is not after "
                   "--warmup_iter_num=%d" % (",".join(map(str, args.lr_steps)), args.warmup_iter_num))
    if args.checkpoint and args.checkpoint != checkpoint.AUTO and args.pretrained_model:
        flag_error("checkpoint", "resume with --checkpoint or start from --pretrained_model, not both (or use "
                   "--checkpoint=auto, which starts from --pretrained_model when there is no checkpoint yet)")
    if args.use_amp and args.amp_dtype == "float16" and not args.use_gpu:
        flag_error("amp_dtype", "float16 needs --use_gpu=True (Paddle's CPU kernels lack it); on CPU use bfloat16")
    if args.use_amp and args.amp_dtype == "bfloat16" and not args.use_gpu and not programs.cpu_runs_bfloat16():
        flag_error("amp_dtype", programs.NO_CPU_BFLOAT16 + ": train in float32 (--use_amp=False) or on a GPU")
    processes = distributed.world_size()
    if args.train_batch_size % processes:
        flag_error("train_batch_size", "%d does not split evenly over the %d processes"
                   % (args.train_batch_size, processes))


def per_process_batch_size(args):
    """Each process's share of --train_batch_size, which is over all processes as the original's was over all GPUs."""
    return args.train_batch_size // distributed.world_size()


def check_infer_images(args):
    if args.list and args.image_dir:
        flag_error("list", "give --list or --image_dir, not both")


def check_query_gallery(args):
    if bool(args.query_list) != bool(args.gallery_list):
        flag_error("query_list" if args.query_list else "gallery_list",
                   "give --query_list and --gallery_list together")
    for flag in ("rerank", "qe_k"):
        if getattr(args, flag) and not args.gallery_list:
            flag_error(flag, "re-ranking needs a gallery: give --query_list and --gallery_list")
