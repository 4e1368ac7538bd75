"""The one training core behind train_elem.py and train_pair.py: build programs → run the loop → log, test, save.

The front ends only declare their flags and defaults and turn `--loss_name` into a loss object.
"""
import argparse
import os
import signal
import sys
import time

import utility  # first: sets the CPU thread count before paddle is imported
import numpy as np
import paddle

import checkpoint
import losses
import models
import programs
import reader
from utility import add_arguments, flag_error, log

DEFAULT_DATA_DIR = "./data/Stanford_Online_Products/"


def add_training_arguments(parser, defaults):
    """Flags both front ends share; `defaults` holds the ones whose defaults differ between them."""
    def add(name, type, help):
        add_arguments(name, type, defaults[name], help, parser)

    add("model", str, "Backbone: ResNet18/34/50/101/152, SE_ResNeXt50_32x4d, SE_ResNeXt101_32x4d, SE_ResNeXt152_64x4d.")
    add("embedding_size", int, "Size of the fully connected embedding on top of the pooled feature; 0 for none.")
    add("image_shape", utility.parse_image_shape, "Input image shape C,H,W.")
    add("train_batch_size", int, "Mini-batch size for training (over all devices).")
    add("test_batch_size", int, "Mini-batch size for testing.")
    add("lr", float, "Initial learning rate.")
    add("lr_steps", utility.parse_int_list, "Iterations at which the learning rate is multiplied by 0.1.")
    add("total_iter_num", int, "Total number of training iterations.")
    add("display_iter_step", int, "Log every this many iterations.")
    add("test_iter_step", int, "Test Recall@1 on the test split every this many iterations.")
    add("save_iter_step", int, "Save a checkpoint every this many iterations.")
    add("loss_name", str, "Loss to optimise: %s." % ", ".join(defaults["loss_choices"]))
    add_arguments("use_gpu", bool, utility.cuda_is_compiled(), "Whether to use GPU (default: whether this Paddle "
                  "was built with CUDA).", parser)
    add_arguments("pretrained_model", str, None, "Weights to start from, matched by name and shape: a checkpoint "
                  "directory, a .pdparams file or a directory of Fluid variable files.", parser)
    add_arguments("checkpoint", str, None, "Checkpoint directory to resume from exactly (weights, momentum, "
                  "learning-rate schedule, iteration).", parser)
    add_arguments("model_save_dir", str, "output", "Checkpoints go to model_save_dir/<model>/<iteration>/.", parser)
    add_arguments("data_dir", str, DEFAULT_DATA_DIR, "Data root holding Ebay_train.txt and Ebay_test.txt.", parser)
    add_arguments("seed", int, 0, "Random seed of initialisation, sampling and augmentation.", parser)
    add_arguments("num_workers", int, 2, "Image decoding processes (0: decode in the main process).", parser)
    add_arguments("crop_scale_min", float, 0.08, "Smallest area fraction of the random-resized crop.", parser)
    add_arguments("random_flip", bool, True, "Random horizontal flips in training.", parser)
    add_arguments("rotate", bool, False, "Random rotation by up to ±10 degrees in training.", parser)
    add_arguments("max_bad_images", int, 100, "Unreadable training images tolerated (each replaced) before "
                  "training stops.", parser)
    add_arguments("nan_check", bool, True, "Stop at the first non-finite loss.", parser)


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
    if not 0 < args.crop_scale_min <= 1:
        flag_error("crop_scale_min", "must be in (0, 1], got %s" % args.crop_scale_min)
    if args.checkpoint and args.pretrained_model:
        flag_error("checkpoint", "resume with --checkpoint or start from --pretrained_model, not both")
    return args


class StopRequest:
    """Turns SIGINT and SIGTERM into a flag the loop checks between iterations, so a save is never cut short."""

    def __init__(self):
        self.signal_name = None
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._request)

    def _request(self, signum, frame):
        if self.signal_name is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: the user really wants out
        self.signal_name = signal.Signals(signum).name
        log("%s received: finishing this iteration, saving a checkpoint and stopping" % self.signal_name)


class DisplayWindow:
    """Averages the per-iteration values logged every --display_iter_step iterations."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.values = []
        self.started = time.time()

    def add(self, values):
        self.values.append(values)

    def means(self):
        return np.mean(np.array(self.values, dtype=np.float64), axis=0)

    def seconds_per_iteration(self):
        return (time.time() - self.started) / max(1, len(self.values))


def test_recall(executor, feature_program, args):
    features, labels = programs.extract_features(
        executor, feature_program,
        reader.eval_batches(args.data_dir, args.test_batch_size, args.image_shape, args.num_workers))
    return len(features), utility.recall_topk(features, labels.ravel(), k=1)


def train(args, loss):
    """Trains with `loss` (a `losses` object) as the flags say; returns the final checkpoint directory."""
    utility.print_arguments(args)
    utility.check_cuda(args.use_gpu)
    paddle.enable_static()
    paddle.seed(args.seed)

    train_list = reader.read_train_list(args.data_dir)
    elementwise = args.loss_name in reader.ELEMENT_LOSSES
    if elementwise:
        try:
            losses.check_labels(train_list.class_ids - 1, args.class_dim)
        except ValueError as error:
            utility.usage_error("%s (classes of %s)" % (error, train_list.list_path))
    train_program = programs.build_train_program(args.model, args.embedding_size, args.image_shape, loss, args.lr,
                                                 args.lr_steps, args.seed)
    feature_program = programs.build_feature_program(args.model, args.embedding_size, args.image_shape)
    executor = paddle.static.Executor(programs.make_place(args.use_gpu))
    executor.run(train_program.startup)

    iteration = 0
    if args.checkpoint:
        state = checkpoint.load_checkpoint(train_program.program, args.checkpoint)
        iteration = state["iteration"]
        train_program.scheduler.set_state_dict(state["lr_scheduler"])
        log("resumed from %s at iteration %d" % (args.checkpoint, iteration))
    elif args.pretrained_model:
        checkpoint.load_pretrained(train_program.program, args.pretrained_model, log=log)

    save_root = os.path.join(args.model_save_dir, args.model)

    def save():
        directory = os.path.join(save_root, str(iteration))
        checkpoint.save_checkpoint(train_program.program, directory, {
            "iteration": iteration, "lr_scheduler": train_program.scheduler.state_dict(), "flags": {
                name: value for name, value in vars(args).items()}})
        log("saved checkpoint %s" % directory)
        return directory

    batches = reader.train_batches(train_list, args.loss_name, args.train_batch_size, args.image_shape,
                                   samples_each_class=getattr(args, "samples_each_class", 1),
                                   num_workers=args.num_workers, seed=args.seed, crop_scale_min=args.crop_scale_min,
                                   random_flip=args.random_flip, rotate=args.rotate,
                                   max_bad_images=args.max_bad_images, start_batch=iteration)
    stop = StopRequest()
    window = DisplayWindow()
    saved_at = None
    last_saved = None
    per_step_fetches = [train_program.loss] + train_program.accuracies
    try:
        while iteration < args.total_iter_num and stop.signal_name is None:
            images, labels = next(batches)
            display = (iteration + 1) % args.display_iter_step == 0
            fetch_feature = display and not elementwise
            fetches = per_step_fetches + ([train_program.feature] if fetch_feature else [])
            outputs = executor.run(train_program.program, feed={"image": images, "label": labels},
                                   fetch_list=fetches)
            lr = train_program.scheduler.get_lr()
            train_program.scheduler.step()
            iteration += 1
            values = [float(np.asarray(value)) for value in outputs[:len(per_step_fetches)]]
            if args.nan_check and not np.isfinite(values[0]):
                log("non-finite loss %s at iteration %d; stopping. Last good checkpoint: %s"
                    % (values[0], iteration, last_saved or "none saved yet"))
                sys.exit(1)
            window.add(values)
            if display:
                means = window.means()
                if elementwise:
                    measures = "loss %.6f, acc1 %.4f, acc5 %.4f" % tuple(means)
                else:
                    batch_recall = utility.recall_topk(np.asarray(outputs[-1]), labels.ravel(), k=1)
                    measures = "loss %.6f, recall %.4f" % (means[0], batch_recall)
                log("trainbatch %d, lr %.6f, %s, time %2.2f sec"
                    % (iteration, lr, measures, window.seconds_per_iteration()))
                window.reset()
            if iteration % args.test_iter_step == 0:
                num_images, recall = test_recall(executor, feature_program, args)
                log("test_img_num %d, trainbatch %d, test_recall %.5f" % (num_images, iteration, recall))
            if iteration % args.save_iter_step == 0:
                last_saved, saved_at = save(), iteration
    finally:
        batches.close()
    if saved_at != iteration:
        last_saved = save()
    if stop.signal_name is not None:
        log("stopped by %s at iteration %d; resume with --checkpoint=%s" % (stop.signal_name, iteration, last_saved))
        sys.exit(128 + signal.Signals[stop.signal_name].value)
    return last_saved
