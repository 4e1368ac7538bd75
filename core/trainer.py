"""The one training core behind train_elem.py and train_pair.py: check → build programs → run the loop → log, test,
save.

The front ends only choose their losses (with or without a classifier head) and the defaults that differ between them.
"""
import argparse
import collections
import contextlib
import os
import signal
import sys
import time

import numpy as np
import paddle

import losses
import reader
import utility
from core import (checkpoint, distributed, flags, image_ops, metrics, onednn, predictor, pretrained, programs,
                  run_log, samplers)
from utility import flag_error, log

BEST_CHECKPOINT = "best"  # model_save_dir/<model>/best: the weights of the best test Recall@1


class NonFiniteError(RuntimeError):
    """--nan_check found a non-finite loss or parameter; the message names the iteration and the last good save."""


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
            if signum == signal.SIGINT:
                utility.interrupt(signum)  # a second Ctrl-C: the user really wants out, unsaved
            return  # paddle.distributed.launch sends its SIGTERM to each process up to three times, 0.2 s apart
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


def test_recall(executor, feature_program, test_list, args):
    """Recall@1 of the images of `test_list` (an `reader.ImageList`) searching each other; returns (images, recall)."""
    features, labels = programs.extract_features(
        executor, feature_program,
        reader.eval_batches(test_list, args.test_batch_size, args.image_shape, args.num_workers),
        len(test_list.paths), "test")
    return len(features), metrics.recall_topk(features, labels.ravel(), k=1)


def make_parser(description, has_classifier, defaults, extra_flags=()):
    """The parser of a training script: the shared training flags with its `defaults`, --loss_name over the
    registered losses with (train_elem.py) or without (train_pair.py) a classifier head, and those losses' flags."""
    parser = utility.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_flags(flags.TRAINING + (flags.loss_name(losses.names(has_classifier)),) + tuple(extra_flags),
                     **defaults)
    losses.add_arguments(parser, has_classifier)
    return parser


TrainingData = collections.namedtuple("TrainingData", "loss train_list sampler test_list")


def build_loss(args):
    """The --loss_name loss from the registry, for this process's share of each batch."""
    batch_size = flags.per_process_batch_size(args)
    try:
        return losses.from_flags(args, batch_size)
    except ValueError as error:  # the message starts with the offending --flag=value
        if batch_size != args.train_batch_size:
            error = "%s (the share of each of %d processes of --train_batch_size=%d)" % (
                error, args.train_batch_size // batch_size, args.train_batch_size)
        utility.usage_error(str(error))


def prepare(args, rank=0):
    """The loss, the parsed lists and the batch sampler: everything the flags and the data must agree on, checked
    before anything is built or written. A flag that does not fit the data stops with exit code 2 naming it."""
    loss = build_loss(args)
    train_list = reader.read_train_list(args.data_dir)
    labels = reader.train_labels(train_list)
    try:
        for warning in loss.check_labels(labels):
            print("warning: %s (classes of %s)" % (warning, train_list.list_path), file=sys.stderr, flush=True)
        sampler = samplers.make_sampler(loss.batch_layout, labels, args.train_batch_size, loss.samples_each_class,
                                      args.seed)
    except ValueError as error:
        utility.usage_error("%s (classes of %s)" % (error, train_list.list_path))
    # Read now, so that a bad --test_list stops the run before it trains, not at its first test hours later; the
    # first process alone tests.
    test_list = reader.read_list(args.data_dir, args.test_list) if rank == 0 else None
    return TrainingData(loss, train_list, sampler, test_list)


class TrainingRun:
    """One run of training: its programs, executor and position, built from the flags."""

    def __init__(self, args, data):
        self.args = args
        self.data = data
        self.augmentation = image_ops.Augmentation(args.crop_scale_min, args.random_flip, args.rotate)
        self.rank, self.world_size, self.processes = distributed.init()
        # Every process trains; the first one alone logs, tests and saves.
        self.log = log if self.rank == 0 else (lambda message: None)
        self.scalars = run_log.ScalarLog(args.vdl_log_dir if self.rank == 0 else None)
        paddle.enable_static()
        paddle.seed(args.seed)
        scheduler = programs.make_lr_scheduler(args.lr, args.lr_steps, args.lr_strategy, args.warmup_iter_num,
                                               args.total_iter_num)
        amp_dtype = args.amp_dtype if args.use_amp else None
        self.train_program = programs.build_train_program(
            args.model, args.embedding_size, args.image_shape, data.loss, scheduler, args.seed, amp_dtype=amp_dtype,
            world_size=self.world_size,
            data_format=onednn.training_data_format(args.use_gpu, args.use_mkldnn))
        self.feature_program = programs.build_feature_program(args.model, args.embedding_size, args.image_shape)
        self.executor = paddle.static.Executor(programs.make_place(args.use_gpu))
        self.executor.run(self.train_program.startup)
        self.use_onednn = onednn.wanted(args.use_gpu, args.use_mkldnn)
        if self.use_onednn:
            onednn.place_on_onednn(self.train_program.program, self.executor)
        self.stop_vote = distributed.StopVote(self.executor) if self.world_size > 1 else None
        if self.world_size > 1:
            self.log("data parallel over %d processes, %d images each per batch"
                     % (self.world_size, flags.per_process_batch_size(args)))
        self.iteration = 0
        self.last_saved = None
        self.best_recall = None  # the best test Recall@1 of this run so far, --checkpoint's included
        self.last_test = None  # (iteration, test Recall@1) of this run's latest test
        self.last_logged_loss = None
        resume_from = self.resume_point()
        if resume_from:
            state = checkpoint.load_checkpoint(self.train_program.program, resume_from)
            self.iteration = state["iteration"]
            self.best_recall = state.get("best_test_recall")
            self.last_saved = resume_from
            scheduler = self.train_program.scheduler
            if set(state["lr_scheduler"]) != set(scheduler.state_dict()):
                flag_error("warmup_iter_num", "%s was saved by a run %s a warm-up; resume with the flags it was "
                           "trained with (run_config_*.json beside it)"
                           % (resume_from, "with" if "LinearWarmup_LR" in state["lr_scheduler"] else "without"))
            scheduler.set_state_dict(state["lr_scheduler"])
            self.log("resumed from %s at iteration %d" % (resume_from, self.iteration))
        elif args.pretrained_model:
            pretrained.load_pretrained(self.train_program.program, args.pretrained_model, log=self.log)
        self.saved_iteration = self.iteration  # what this iteration's state is, is on disk already or untrained
        if self.rank == 0:
            config = run_log.write_run_config(os.path.join(args.model_save_dir, args.model), args, self.iteration)
            log("run configuration written to %s" % config)

    def resume_point(self):
        """The checkpoint --checkpoint names; with --checkpoint=auto the newest in model_save_dir/<model>, if any."""
        args = self.args
        if args.checkpoint != checkpoint.AUTO:
            return args.checkpoint
        save_dir = os.path.join(args.model_save_dir, args.model)
        newest = checkpoint.newest_checkpoint(save_dir)
        if newest is None:
            self.log("--checkpoint=auto: no checkpoint in %s yet: starting %s" % (
                save_dir, "from --pretrained_model" if args.pretrained_model else "from scratch"))
        return newest

    def check_parameters_finite(self):
        """Before each save, so that no checkpoint holds a NaN. Between saves the per-iteration loss check suffices:
        every parameter feeds the next forward pass, except batch-norm statistics, which feed only tests and saves.
        Reading every variable costs about what the save after it does, so it is not done every iteration."""
        for name, value in self.train_program.program.state_dict().items():
            if not np.isfinite(np.asarray(value)).all():
                raise NonFiniteError("%s is not finite after iteration %d (--nan_check); not saved. Last good "
                                     "checkpoint: %s" % (name, self.iteration, self.last_saved or "none saved yet"))

    def save(self):
        if self.args.nan_check:
            self.check_parameters_finite()
        if self.rank == 0:  # the processes hold the same parameters
            directory = self._save_as(str(self.iteration))
            log("saved checkpoint %s" % directory)
            self.last_saved = directory
        self.saved_iteration = self.iteration

    def _save_as(self, name, **extra_state):
        directory = os.path.join(self.args.model_save_dir, self.args.model, name)
        return checkpoint.save_checkpoint(self.train_program.program, directory, dict(
            extra_state, iteration=self.iteration, lr_scheduler=self.train_program.scheduler.state_dict(),
            best_test_recall=self.best_recall, flags=vars(self.args)))

    def test(self):
        """Tests Recall@1 on the test split (first process only); with --save_best keeps the best one's weights."""
        # On CPU a predictor made from this iteration's weights: it takes a second or two to make, and extracts
        # features 1.1 to 1.5 times as fast as the feature program with its own image ops on oneDNN did
        # (docs/benchmarks.md).
        executor = (predictor.InferenceExecutor(self.feature_program, self.executor) if self.use_onednn
                    else self.executor)
        num_images, recall = test_recall(executor, self.feature_program, self.data.test_list, self.args)
        log("test_img_num %d, trainbatch %d, test_recall %.5f" % (num_images, self.iteration, recall))
        self.last_test = (self.iteration, recall)
        self.scalars.add(self.iteration, {"test/recall@1": recall})
        if self.args.save_best and (self.best_recall is None or recall > self.best_recall):
            self.best_recall = recall
            if self.args.nan_check:
                self.check_parameters_finite()
            directory = self._save_as(BEST_CHECKPOINT, test_recall=recall)
            log("saved best checkpoint %s (test_recall %.5f)" % (directory, recall))

    def batches(self):
        args = self.args
        return reader.train_batches(self.data.train_list, self.data.sampler, args.image_shape, self.augmentation,
                                    num_workers=args.num_workers, seed=args.seed, max_bad_images=args.max_bad_images,
                                    start_batch=self.iteration, rank=self.rank, world_size=self.world_size)

    def step(self, images, labels, fetch_feature):
        """One optimisation step; returns the learning rate used, the loss [and accuracies], the features."""
        program = self.train_program
        scalar_fetches = [program.loss] + program.accuracies
        with distributed.peer_failures(self.rank, self.processes):
            outputs = self.executor.run(program.program, feed={"image": images, "label": labels},
                                        fetch_list=scalar_fetches + ([program.feature] if fetch_feature else []))
        # The rate this step ran with, the one the executor fed: get_lr() recomputes it, which recursive schedules
        # (cosine) cannot do twice.
        lr = program.scheduler.last_lr
        program.scheduler.step()
        self.iteration += 1
        values = [float(np.asarray(value)) for value in outputs[:len(scalar_fetches)]]
        if self.args.nan_check and not np.isfinite(values[0]):  # the same loss in every process: all stop
            raise NonFiniteError("non-finite loss %s at iteration %d (--nan_check). Last good checkpoint: %s"
                                 % (values[0], self.iteration, self.last_saved or "none saved yet"))
        return lr, values, np.asarray(outputs[-1]) if fetch_feature else None

    def log_window(self, window, lr, features, labels):
        means = window.means()
        scalars = {"train/loss": means[0], "train/lr": lr}
        if self.data.loss.has_classifier:
            measures = "loss %.6f, acc1 %.4f, acc5 %.4f" % tuple(means)
            scalars.update({"train/acc1": means[1], "train/acc5": means[2]})
        else:
            recall = metrics.recall_topk(features, labels.ravel(), k=1)
            measures = "loss %.6f, recall %.4f" % (means[0], recall)
            scalars["train/recall@1"] = recall
        log("trainbatch %d, lr %.6f, %s, time %2.2f sec"
            % (self.iteration, lr, measures, window.seconds_per_iteration()))
        self.last_logged_loss = means[0]
        self.scalars.add(self.iteration, scalars)
        window.reset()

    def stop_agreed(self, stop):
        """Whether to stop before the next iteration; a signal to any one process stops them all after it."""
        if self.stop_vote is None:
            return stop.signal_name is not None
        with distributed.peer_failures(self.rank, self.processes):
            agreed = self.stop_vote.agree(signal.Signals[stop.signal_name].value if stop.signal_name else 0)
        if agreed:
            stop.signal_name = signal.Signals(agreed).name
        return agreed != 0

    def run(self):
        """Trains to --total_iter_num or to a SIGINT/SIGTERM, saving on the way and at the end."""
        args = self.args
        window = DisplayWindow()
        batches = self.batches()
        with StopRequest() as stop, contextlib.closing(batches), contextlib.closing(self.scalars):
            while self.iteration < args.total_iter_num and not self.stop_agreed(stop):
                images, labels = next(batches)
                display = self.rank == 0 and (self.iteration + 1) % args.display_iter_step == 0
                lr, values, features = self.step(images, labels,
                                                 fetch_feature=display and not self.data.loss.has_classifier)
                window.add(values)
                if display:
                    self.log_window(window, lr, features, labels)
                if self.rank == 0 and args.test_iter_step and self.iteration % args.test_iter_step == 0:
                    self.test()
                    window.restart_clock()
                if self.iteration % args.save_iter_step == 0:
                    self.save()
                    window.restart_clock()
            if self.saved_iteration != self.iteration:  # a run resumed at --total_iter_num has nothing to save
                self.save()
            if self.stop_vote is not None:
                # none exits, which makes the launcher stop the rest, before the save is done
                with distributed.peer_failures(self.rank, self.processes):
                    self.stop_vote.agree(0)
        if stop.signal_name is not None:
            self.log("stopped by %s at iteration %d; resume with --checkpoint=%s"
                     % (stop.signal_name, self.iteration, self.last_saved))
            sys.exit(128 + signal.Signals[stop.signal_name].value)
        if self.args.enable_ce and self.rank == 0:
            self.report_kpis()
        return self.last_saved

    def report_kpis(self):
        """--enable_ce: the original's continuous-evaluation lines, the last logged loss and the final test recall."""
        if self.last_test is None or self.last_test[0] != self.iteration:
            self.test()
        print("kpis\ttrain_cost\t%s" % self.last_logged_loss)
        print("kpis\ttest_recall\t%s" % self.last_test[1], flush=True)


# Failures of a run that are the data's, the disk's, the numbers' or another process's fault: one line each, exit
# code 1.
TRAINING_FAILURES = reader.READ_ERRORS + (checkpoint.CheckpointError, NonFiniteError, utility.OutputError,
                                          distributed.PeerLostError)


@utility.exit_on_signals()
def train(args):
    """Trains as the parsed flags say; returns the final checkpoint directory."""
    flags.check_training(args)
    rank = paddle.distributed.ParallelEnv().rank
    if rank == 0:
        utility.print_arguments(args)
    with utility.exit_on(*TRAINING_FAILURES):
        data = prepare(args, rank)
        save_dir = os.path.join(args.model_save_dir, args.model)
        # The first process alone saves, so it alone locks the directory.
        lock = checkpoint.SaveDirLock(save_dir, args.force, log) if rank == 0 else contextlib.nullcontext()
        with lock:
            with utility.signals_held():  # Paddle sets the programs up in here
                run = TrainingRun(args, data)
            try:
                return run.run()
            except reader.READ_ERRORS:
                # The model is intact, only its input failed: keep what was trained.
                if run.saved_iteration != run.iteration:
                    run.save()
                if run.last_saved:
                    log("the reader failed at iteration %d; resume with --checkpoint=%s"
                        % (run.iteration, run.last_saved))
                raise
