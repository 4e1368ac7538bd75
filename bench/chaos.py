"""kill -9 at random moments: a training killed again and again and restarted at once with --checkpoint=auto, as a job
supervisor or a pre-empted node's requeue does, against the same training left alone.

    python bench/chaos.py --kills=50 --iterations=30        # the run in docs/failures.md
    python bench/chaos.py --kills=10 --iterations=8 --seed=3

Both trainings run the same train_pair.py command line: ResNet18 at 3x32x32, eml, the toy data set (made once under
--work_dir), a checkpoint and a log line every iteration, --checkpoint=auto. Each kill is a SIGKILL to the training
process alone (its reader workers wind down by themselves, as after a real kill -9), at a seeded random moment of one
of two kinds:
  * start-up: a random time after the process starts, within the time the uninterrupted run took to log its first
    iteration: importing, building the programs, taking the lock, loading the checkpoint;
  * training: a random time within one iteration after the process saved its first checkpoint: in a step or in a
    checkpoint save (so every such kill leaves at least one new checkpoint to resume from).
Training kills are drawn only while more than two iterations remain, so that all --kills land before the training
ends. After each kill the same command starts again at once; after the last one it runs to the end. The losses the
runs logged, put together by iteration, and the final checkpoint must equal the uninterrupted run's exactly; an
iteration a killed run logged but had not saved is trained again by the next run and must log the same values.
"""
import argparse
import collections
import os
import queue
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import utility  # noqa: E402
from core import checkpoint, weights  # noqa: E402
from data.make_toy_sop import make_toy_sop  # noqa: E402

TRAIN_SCRIPT = os.path.join(ROOT, "train_pair.py")
MODEL = "ResNet18"
LOGGED_ITERATION = re.compile(r"trainbatch (\d+), (lr \S+, loss \S+, recall \S+),")
RESUMED = re.compile(r"resumed from (\S+) at iteration (\d+)")
SAVED = re.compile(r"saved checkpoint \S+/\d+$")
STARTED_FRESH = "--checkpoint=auto: no checkpoint in"
NOT_THAT_FAR = "killed before it resumed"
TRAINING_SHARE = 2 / 3  # of the kills, when enough iterations remain
SECONDS_TO_FIRST_SAVE_LIMIT = 300


def training_command(data_dir, save_dir, iterations, num_workers):
    flags = dict(model=MODEL, image_shape="3,32,32", use_gpu=False, data_dir=data_dir, model_save_dir=save_dir,
                 loss_name="eml", train_batch_size=6, test_batch_size=16, total_iter_num=iterations,
                 display_iter_step=1, test_iter_step=0, save_iter_step=1, lr=0.01, num_workers=num_workers,
                 checkpoint=checkpoint.AUTO)
    return [sys.executable, TRAIN_SCRIPT] + ["--%s=%s" % item for item in flags.items()]


class Run:
    """One process of the command: its output lines with the time each arrived, and how it ended."""

    def __init__(self, command, save_dir):
        self.newest_before = checkpoint.newest_checkpoint(save_dir)  # what --checkpoint=auto must resume from
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        self.lines = []  # (seconds since start, line)
        self.arrivals = queue.Queue()
        self.killed_after = None  # seconds since start, if killed
        self.pump = threading.Thread(target=self._read_output, daemon=True)
        self.pump.start()

    def _read_output(self):
        # The output ends when the reader workers, which share the pipe, have ended too.
        for line in self.process.stdout:
            arrival = (time.monotonic() - self.started, line.rstrip("\n"))
            self.lines.append(arrival)
            self.arrivals.put(arrival)
        self.arrivals.put(None)

    def wait_for_first_save(self):
        """Returns once the process saved a checkpoint; False if it ended first."""
        deadline = time.monotonic() + SECONDS_TO_FIRST_SAVE_LIMIT
        while time.monotonic() < deadline:
            try:
                arrival = self.arrivals.get(timeout=1)
            except queue.Empty:
                continue
            if arrival is None:
                return False
            if SAVED.search(arrival[1]):
                return True
        raise RuntimeError("no checkpoint saved in %d s:\n%s" % (SECONDS_TO_FIRST_SAVE_LIMIT, self.output()))

    def kill_at(self, seconds_since_start):
        """SIGKILLs the process at that time, unless it ended before; reaps it either way."""
        time.sleep(max(0.0, self.started + seconds_since_start - time.monotonic()))
        if self.process.poll() is None:
            self.process.kill()
            self.killed_after = time.monotonic() - self.started
        self.process.wait()

    def finish(self, timeout):
        self.process.wait(timeout)
        self.pump.join(timeout)

    def output(self):
        return "\n".join(line for _, line in self.lines)

    def losses(self):
        """{iteration: "lr ..., loss ..., recall ..."} as this process logged them."""
        return {int(match.group(1)): match.group(2)
                for match in (LOGGED_ITERATION.search(line) for _, line in self.lines) if match}

    def kill_landed(self):
        """Where the kill caught the process: in its start-up, in a checkpoint save (after logging an iteration and
        before logging its save) or in a step."""
        seen = [line for arrived, line in self.lines if arrived <= self.killed_after]
        progress = [line for line in seen if LOGGED_ITERATION.search(line) or SAVED.search(line)]
        if not progress:
            return "start-up"
        return "save" if LOGGED_ITERATION.search(progress[-1]) else "step"

    def resumed_from(self):
        """The checkpoint the process said it resumed from, None when it said it started fresh, NOT_THAT_FAR when it
        was killed before saying either."""
        for _, line in self.lines:
            match = RESUMED.search(line)
            if match:
                return match.group(1)
            if STARTED_FRESH in line:
                return None
        return NOT_THAT_FAR


def uninterrupted(command, save_dir):
    run = Run(command, save_dir)
    run.finish(timeout=None)
    if run.process.returncode != 0:
        raise RuntimeError("the uninterrupted run failed:\n%s" % run.output())
    iterations = [arrived for arrived, line in run.lines if LOGGED_ITERATION.search(line)]
    return run, iterations[0], float(np.median(np.diff(iterations))) if len(iterations) > 1 else iterations[0]


def with_kills(command, save_dir, iterations, kills, rng, seconds_to_first_iteration, seconds_per_iteration):
    """Runs the command, SIGKILLs it `kills` times as the module docstring says, then lets it finish; returns the
    runs in order."""
    runs = []
    while len([run for run in runs if run.killed_after is not None]) < kills:
        newest = checkpoint.newest_checkpoint(save_dir)
        remaining = iterations - (int(os.path.basename(newest)) if newest else 0)
        run = Run(command, save_dir)
        runs.append(run)
        if remaining > 2 and rng.random() < TRAINING_SHARE:
            delay = rng.uniform(0, seconds_per_iteration)
            if not run.wait_for_first_save():
                break
            run.kill_at(time.monotonic() - run.started + delay)
        else:
            run.kill_at(rng.uniform(0, seconds_to_first_iteration))
        if run.killed_after is None:
            break  # it ended by itself: the training was done, or it failed (the caller sees which)
    last = Run(command, save_dir)
    runs.append(last)
    last.finish(timeout=None)
    for run in runs:  # every process's workers gone: their output pipes closed
        run.pump.join(timeout=30)
    return runs


ChaosResult = collections.namedtuple("ChaosResult", "runs reference kills landed losses conflicts wrongly_resumed "
                                                    "failed final reference_final leftovers orphaned seconds "
                                                    "reference_seconds")


def final_state(save_dir):
    """The newest checkpoint's variables and trainer state (iteration, learning-rate schedule)."""
    newest = checkpoint.newest_checkpoint(save_dir)
    state = checkpoint.read_trainer_state(newest)
    return (weights.read_program_state(os.path.join(newest, checkpoint.MODEL_PREFIX)),
            {key: state[key] for key in ("iteration", "lr_scheduler")})


def run_chaos(data_dir, work_dir, kills, iterations, seed, num_workers=1):
    """The uninterrupted run and the killed-and-restarted one; returns a ChaosResult to compare them by."""
    reference_dir, chaos_dir = os.path.join(work_dir, "uninterrupted"), os.path.join(work_dir, "killed")
    started = time.monotonic()
    reference, to_first, per_iteration = uninterrupted(
        training_command(data_dir, reference_dir, iterations, num_workers), os.path.join(reference_dir, MODEL))
    reference_seconds = time.monotonic() - started
    started = time.monotonic()
    chaos_save_dir = os.path.join(chaos_dir, MODEL)
    runs = with_kills(training_command(data_dir, chaos_dir, iterations, num_workers), chaos_save_dir, iterations,
                      kills, random.Random(seed), to_first, per_iteration)
    seconds = time.monotonic() - started
    killed = [run for run in runs if run.killed_after is not None]
    logged, conflicts = {}, []
    for run in runs:
        for iteration, values in run.losses().items():
            if logged.setdefault(iteration, values) != values:
                conflicts.append((iteration, logged[iteration], values))
    wrongly_resumed = [(run.newest_before, run.resumed_from()) for run in runs
                       if run.resumed_from() not in (NOT_THAT_FAR, run.newest_before)]
    return ChaosResult(
        runs=runs, reference=reference.losses(), kills=len(killed),
        landed=collections.Counter(run.kill_landed() for run in killed), losses=logged, conflicts=conflicts,
        wrongly_resumed=wrongly_resumed,
        failed=[run.output() for run in runs if run.killed_after is None and run.process.returncode != 0],
        final=final_state(chaos_save_dir),
        reference_final=final_state(os.path.join(reference_dir, MODEL)),
        leftovers=sorted(name for name in os.listdir(chaos_save_dir) if name.startswith(".")),
        orphaned=sum(run.pump.is_alive() for run in runs), seconds=seconds, reference_seconds=reference_seconds)


def parameters_equal(result):
    (variables, state), (reference_variables, reference_state) = result.final, result.reference_final
    return (state == reference_state and set(variables) == set(reference_variables) and
            all(np.array_equal(variables[name], reference_variables[name]) for name in variables))


def make_parser():
    parser = utility.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    utility.add_arguments("kills", int, 50, "SIGKILLs before the training may finish.", parser)
    utility.add_arguments("iterations", int, 30, "Training iterations (--total_iter_num).", parser)
    utility.add_arguments("seed", int, 0, "Seed of the kill moments.", parser)
    utility.add_arguments("num_workers", int, 1, "Reader workers of the training.", parser)
    utility.add_arguments("work_dir", str, None, "Directory for the toy data set and both runs' checkpoints "
                          "(default: a temporary one, removed at the end).", parser)
    return parser


def yes_no(value):
    return "yes" if value else "no"


def main(argv=None):
    args = make_parser().parse_args(argv)
    if args.kills < 1 or args.iterations < 3:
        utility.usage_error("--kills must be at least 1 and --iterations at least 3")
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="chaos-")
    try:
        data_dir = os.path.join(work_dir, "toy_sop")
        make_toy_sop(data_dir, num_train_classes=12, num_test_classes=8, min_images=3, max_images=5, image_size=40,
                     seed=1)
        result = run_chaos(data_dir, work_dir, args.kills, args.iterations, args.seed, args.num_workers)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    command = training_command("<data>", "<save_dir>", args.iterations, args.num_workers)
    print_table(result, ["python", os.path.relpath(command[1], ROOT)] + command[2:])
    return result


def print_table(result, command):
    print("command: %s" % " ".join(command))
    print("\n| kills | in start-up | in a step | in a save | processes | iterations trained again | seconds "
          "(uninterrupted) | losses equal | parameters equal | resumed from the newest | left behind |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    trained = sum(len(run.losses()) for run in result.runs)
    print("| %d | %d | %d | %d | %d | %d | %.0f (%.0f) | %s | %s | %s | %d |" % (
        result.kills, result.landed["start-up"], result.landed["step"], result.landed["save"], len(result.runs),
        trained - len(result.losses), result.seconds, result.reference_seconds,
        yes_no(result.losses == result.reference and not result.conflicts), yes_no(parameters_equal(result)),
        yes_no(not result.wrongly_resumed), len(result.leftovers) + result.orphaned))
    for output in result.failed:
        print("\na run failed by itself:\n%s" % output)


if __name__ == "__main__":
    main()
