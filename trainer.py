"""The one training core behind train_elem.py and train_pair.py: build programs → run the loop → log, test, save.

The front ends only declare their flags and defaults and turn `--loss_name` into a loss object.
"""
import contextlib
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
    """Turns SIGINT and SIGTERM into a flag the loop checks between iterations, so a save is never cut short.

    A context manager: the previous handlers come back on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal_name = None
        self.previous_handlers = {}

    def __enter__(self):
        for signum in self.SIGNALS:
            self.previous_handlers[signum] = signal.signal(signum, self._request)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self.previous_handlers.items():
            signal.signal(signum, handler)

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
        self.restart_clock()

    def restart_clock(self):
        """Keeps time spent testing and saving out of the per-iteration time."""
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


class TrainingRun:
    """One run of training: its programs, executor and position, built from the flags."""

    def __init__(self, args, loss):
        self.args = args
        paddle.enable_static()
        paddle.seed(args.seed)
        self.train_list = reader.read_train_list(args.data_dir)
        self.elementwise = args.loss_name in reader.ELEMENT_LOSSES
        if self.elementwise:
            try:
                losses.check_labels(self.train_list.class_ids - 1, args.class_dim)
            except ValueError as error:
                utility.usage_error("%s (classes of %s)" % (error, self.train_list.list_path))
        self.train_program = programs.build_train_program(args.model, args.embedding_size, args.image_shape, loss,
                                                          args.lr, args.lr_steps, args.seed)
        self.feature_program = programs.build_feature_program(args.model, args.embedding_size, args.image_shape)
        self.executor = paddle.static.Executor(programs.make_place(args.use_gpu))
        self.executor.run(self.train_program.startup)
        self.iteration = 0
        self.last_saved = None
        if args.checkpoint:
            state = checkpoint.load_checkpoint(self.train_program.program, args.checkpoint)
            self.iteration = state["iteration"]
            self.train_program.scheduler.set_state_dict(state["lr_scheduler"])
            log("resumed from %s at iteration %d" % (args.checkpoint, self.iteration))
        elif args.pretrained_model:
            checkpoint.load_pretrained(self.train_program.program, args.pretrained_model, log=log)

    def save(self):
        directory = os.path.join(self.args.model_save_dir, self.args.model, str(self.iteration))
        checkpoint.save_checkpoint(self.train_program.program, directory, {
            "iteration": self.iteration, "lr_scheduler": self.train_program.scheduler.state_dict(),
            "flags": vars(self.args)})
        log("saved checkpoint %s" % directory)
        self.last_saved = directory

    def batches(self):
        args = self.args
        return reader.train_batches(self.train_list, args.loss_name, args.train_batch_size, args.image_shape,
                                    samples_each_class=getattr(args, "samples_each_class", 1),
                                    num_workers=args.num_workers, seed=args.seed,
                                    crop_scale_min=args.crop_scale_min, random_flip=args.random_flip,
                                    rotate=args.rotate, max_bad_images=args.max_bad_images,
                                    start_batch=self.iteration)

    def step(self, images, labels, fetch_feature):
        """One optimisation step; returns the learning rate used, the loss [and accuracies], the features."""
        program = self.train_program
        scalar_fetches = [program.loss] + program.accuracies
        outputs = self.executor.run(program.program, feed={"image": images, "label": labels},
                                    fetch_list=scalar_fetches + ([program.feature] if fetch_feature else []))
        lr = program.scheduler.get_lr()
        program.scheduler.step()
        self.iteration += 1
        values = [float(np.asarray(value)) for value in outputs[:len(scalar_fetches)]]
        if self.args.nan_check and not np.isfinite(values[0]):
            log("non-finite loss %s at iteration %d; stopping. Last good checkpoint: %s"
                % (values[0], self.iteration, self.last_saved or "none saved yet"))
            sys.exit(1)
        return lr, values, np.asarray(outputs[-1]) if fetch_feature else None

    def log_window(self, window, lr, features, labels):
        means = window.means()
        if self.elementwise:
            measures = "loss %.6f, acc1 %.4f, acc5 %.4f" % tuple(means)
        else:
            measures = "loss %.6f, recall %.4f" % (means[0], utility.recall_topk(features, labels.ravel(), k=1))
        log("trainbatch %d, lr %.6f, %s, time %2.2f sec"
            % (self.iteration, lr, measures, window.seconds_per_iteration()))
        window.reset()

    def run(self):
        """Trains to --total_iter_num or to a SIGINT/SIGTERM, saving on the way and at the end."""
        args = self.args
        window = DisplayWindow()
        saved_at = None
        batches = self.batches()
        with StopRequest() as stop, contextlib.closing(batches):
            while self.iteration < args.total_iter_num and stop.signal_name is None:
                images, labels = next(batches)
                display = (self.iteration + 1) % args.display_iter_step == 0
                lr, values, features = self.step(images, labels, fetch_feature=display and not self.elementwise)
                window.add(values)
                if display:
                    self.log_window(window, lr, features, labels)
                if self.iteration % args.test_iter_step == 0:
                    num_images, recall = test_recall(self.executor, self.feature_program, args)
                    log("test_img_num %d, trainbatch %d, test_recall %.5f" % (num_images, self.iteration, recall))
                    window.restart_clock()
                if self.iteration % args.save_iter_step == 0:
                    self.save()
                    saved_at = self.iteration
                    window.restart_clock()
            if saved_at != self.iteration:
                self.save()
        if stop.signal_name is not None:
            log("stopped by %s at iteration %d; resume with --checkpoint=%s"
                % (stop.signal_name, self.iteration, self.last_saved))
            sys.exit(128 + signal.Signals[stop.signal_name].value)
        return self.last_saved


def train(args, loss):
    """Trains with `loss` (a `losses` object) as the flags say; returns the final checkpoint directory."""
    utility.print_arguments(args)
    utility.check_cuda(args.use_gpu)
    return TrainingRun(args, loss).run()
