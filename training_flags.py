"""The flags of train_elem.py and train_pair.py: one shared set, checked before anything is built or written.

The front ends add their own (loss parameters) and choose the defaults that differ between them.
"""
import os

import utility  # first: sets the CPU thread count before paddle is imported
import checkpoint
import distributed
import models
import programs
import reader
from utility import add_arguments, flag_error

DEFAULT_DATA_DIR = "./data/Stanford_Online_Products/"


def add_training_arguments(parser, defaults):
    """Flags both front ends share; `defaults` holds the ones whose defaults differ between them."""
    def add(name, type, help):
        add_arguments(name, type, defaults[name], help, parser)

    add("model", str, "Backbone: ResNet18/34/50/101/152, SE_ResNeXt50_32x4d, SE_ResNeXt101_32x4d, SE_ResNeXt152_64x4d.")
    add("embedding_size", int, "Size of the fully connected embedding on top of the pooled feature; 0 for none.")
    add("image_shape", utility.parse_image_shape, "Input image shape C,H,W.")
    add("train_batch_size", int, "Mini-batch size for training, over all processes of a distributed launch.")
    add("test_batch_size", int, "Mini-batch size for testing.")
    add("lr", float, "Initial learning rate.")
    add("lr_steps", utility.parse_int_list, "piecewise_decay: iterations at which the learning rate is multiplied "
                                            "by 0.1.")
    add_arguments("lr_strategy", str, "piecewise_decay", "Learning-rate schedule: piecewise_decay (by --lr_steps) "
                  "or cosine_decay (to 0 at --total_iter_num).", parser)
    add_arguments("warmup_iter_num", int, 0, "Iterations of linear warm-up from 0 to --lr before the schedule.",
                  parser)
    add("total_iter_num", int, "Total number of training iterations.")
    add("display_iter_step", int, "Log every this many iterations.")
    add("test_iter_step", int, "Test Recall@1 on the test split every this many iterations.")
    add("save_iter_step", int, "Save a checkpoint every this many iterations.")
    add("loss_name", str, "Loss to optimise: %s." % ", ".join(defaults["loss_choices"]))
    add_arguments("use_gpu", bool, utility.cuda_is_compiled(), "Whether to use GPU (default: whether this Paddle "
                  "was built with CUDA).", parser)
    add_arguments("use_mkldnn", bool, True, "On CPU, run training's convolutions with oneDNN and the periodic "
                  "test through Paddle Inference with oneDNN (several times faster, same results up to float32 "
                  "rounding); ignored on GPU.", parser)
    add_arguments("use_amp", bool, False, "Automatic mixed precision (Paddle's static AMP, O1): the network in "
                  "--amp_dtype, the loss in float32.", parser)
    add_arguments("amp_dtype", str, "float16", "float16 (GPU, with dynamic loss scaling) or bfloat16 (GPU or CPU).",
                  parser)
    add_arguments("pretrained_model", str, None, "Weights to start from, matched by name and shape: a checkpoint "
                  "directory, a .pdparams file or a directory of Fluid variable files.", parser)
    add_arguments("checkpoint", str, None, "Checkpoint directory to resume from exactly (weights, momentum, "
                  "learning-rate schedule, iteration).", parser)
    add_arguments("model_save_dir", str, "output", "Checkpoints go to model_save_dir/<model>/<iteration>/.", parser)
    add_arguments("save_best", bool, True, "Also keep the checkpoint of the best test Recall@1 so far in "
                  "model_save_dir/<model>/best/.", parser)
    add_arguments("data_dir", str, DEFAULT_DATA_DIR, "Data root holding Ebay_train.txt and Ebay_test.txt.", parser)
    add_arguments("test_list", str, reader.TEST_LIST, "List file the periodic test scores (in --data_dir, or an "
                  "absolute path; its image paths are relative to --data_dir): the test split, or a validation list "
                  "of classes held out of training, so that best/ is chosen without looking at the test split.",
                  parser)
    add_arguments("seed", int, 0, "Random seed of initialisation, sampling and augmentation.", parser)
    add_arguments("num_workers", int, 2, "Image decoding processes (0: decode in the main process).", parser)
    add_arguments("crop_scale_min", float, 0.08, "Smallest area fraction of the random-resized crop.", parser)
    add_arguments("random_flip", bool, True, "Random horizontal flips in training.", parser)
    add_arguments("rotate", bool, False, "Random rotation by up to ±10 degrees in training.", parser)
    add_arguments("max_bad_images", int, 100, "Unreadable training images tolerated (each replaced) before "
                  "training stops.", parser)
    add_arguments("nan_check", bool, True, "Stop at the first non-finite loss (checked every iteration) or "
                  "parameter (checked before each save, so that no checkpoint holds one).", parser)
    add_arguments("force", bool, False, "Save into model_save_dir/<model> even while another training run is saving "
                  "there (its lock file says which).", parser)
    add_arguments("vdl_log_dir", str, None, "Also write loss, learning rate and test recall to this directory for "
                  "VisualDL (optional: pip install visualdl).", parser)


def parse_training_arguments(parser, loss_choices, argv=None):
    args = parser.parse_args(argv)
    if args.loss_name not in loss_choices:
        flag_error("loss_name", "%r is not one of %s" % (args.loss_name, ", ".join(loss_choices)))
    if args.model not in models.MODELS:
        flag_error("model", "%r is not one of %s" % (args.model, ", ".join(models.MODELS)))
    for name in ("train_batch_size", "test_batch_size", "total_iter_num", "display_iter_step", "test_iter_step",
                 "save_iter_step"):
        if getattr(args, name) <= 0:
            flag_error(name, "must be positive, got %s" % getattr(args, name))
    for name in ("embedding_size", "num_workers", "max_bad_images"):
        if getattr(args, name) < 0:
            flag_error(name, "must not be negative, got %s" % getattr(args, name))
    if args.lr <= 0:
        flag_error("lr", "must be positive, got %s" % args.lr)
    if any(later <= earlier for earlier, later in zip(args.lr_steps, args.lr_steps[1:])):
        flag_error("lr_steps", "must be strictly increasing, got %s" % ",".join(map(str, args.lr_steps)))
    if args.lr_steps and min(args.lr_steps) <= 0:
        flag_error("lr_steps", "iterations must be positive, got %s" % ",".join(map(str, args.lr_steps)))
    if args.lr_strategy not in programs.LR_STRATEGIES:
        flag_error("lr_strategy", "%r is not one of %s" % (args.lr_strategy, ", ".join(programs.LR_STRATEGIES)))
    if not 0 <= args.warmup_iter_num < args.total_iter_num:
        flag_error("warmup_iter_num", "must be in [0, --total_iter_num=%d), got %d"
                   % (args.total_iter_num, args.warmup_iter_num))
    if args.lr_strategy == "piecewise_decay" and args.lr_steps and min(args.lr_steps) <= args.warmup_iter_num:
        flag_error("lr_steps", "the learning rate cannot decay during the warm-up: %s is not after "
                   "--warmup_iter_num=%d" % (",".join(map(str, args.lr_steps)), args.warmup_iter_num))
    if not 0 < args.crop_scale_min <= 1:
        flag_error("crop_scale_min", "must be in (0, 1], got %s" % args.crop_scale_min)
    if args.checkpoint and args.pretrained_model:
        flag_error("checkpoint", "resume with --checkpoint or start from --pretrained_model, not both")
    if args.image_shape[0] != 3:
        flag_error("image_shape", "images are decoded as RGB, so C must be 3, got %s"
                   % ",".join(map(str, args.image_shape)))
    if args.checkpoint:
        try:
            checkpoint.find_checkpoint(args.checkpoint)
        except checkpoint.CheckpointError as error:
            flag_error("checkpoint", str(error))
    if args.pretrained_model and not (os.path.exists(args.pretrained_model)
                                      or os.path.exists(args.pretrained_model + ".pdparams")):
        flag_error("pretrained_model", "%s: no such file or directory" % args.pretrained_model)
    if args.amp_dtype not in programs.AMP_DTYPES:
        flag_error("amp_dtype", "%r is not one of %s" % (args.amp_dtype, ", ".join(programs.AMP_DTYPES)))
    if args.use_amp and args.amp_dtype == "float16" and not args.use_gpu:
        flag_error("amp_dtype", "float16 needs --use_gpu=True (Paddle's CPU kernels lack it); on CPU use bfloat16")
    processes = distributed.world_size()
    if args.train_batch_size % processes:
        flag_error("train_batch_size", "%d does not split evenly over the %d processes"
                   % (args.train_batch_size, processes))
    return args


def per_process_batch_size(args):
    """Each process's share of --train_batch_size, which is over all processes as the original's was over all GPUs."""
    return args.train_batch_size // distributed.world_size()
