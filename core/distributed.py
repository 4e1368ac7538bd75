"""Data-parallel training over the processes that `python -m paddle.distributed.launch` starts, one per device.

Every process (rank) builds the same static programs from the same seed, so parameters start identical; it reads its
own contiguous share of each global batch (reader.train_batches); and its training program all-reduces every
gradient, divided by the number of processes, before the optimizer sees it, so parameters stay identical. Batch-norm
statistics stay per process, as they stayed per GPU in the original's ParallelExecutor.

Paddle 3.3.1's fleet static collective optimizer fails under PIR, hence the explicit all-reduce. Without the
launcher there is one process and nothing here communicates.

Sharded feature extraction (infer.py, search.py build) uses the same launcher: each rank extracts a contiguous
share of the list (`shard`) and `gather_rows` brings the shares to rank 0 in rank order, through the collective
backend (gloo on CPU, NCCL on GPUs) rather than files, so several machines need no shared file system.

When a process dies (kill -9, the out-of-memory killer), gloo fails the collective operation the others are in at
once: each ends with one line naming the dead rank (when it ran on the same machine), the launcher stops whatever
still runs within seconds, and the job ends with a non-zero exit code; a restart with --checkpoint=auto resumes it.
"""
import contextlib
import os
import socket

import numpy as np
import paddle

from core import cpu_ops, similarity


class PeerLostError(RuntimeError):
    """A step that communicates failed: what a process sees when another process of the launch has died."""


def _has_ended(pid):
    """Whether process `pid` of this machine has ended (gone, or a zombie its launcher has not reaped yet)."""
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


@contextlib.contextmanager
def peer_failures(rank, processes):
    """Reports a failed step of a multi-process run as PeerLostError: one line naming this rank and, when they ran on
    this machine, the ranks that died. `processes` is `init`'s list of every rank's (host name, pid)."""
    try:
        yield
    except RuntimeError as error:
        if len(processes) == 1:
            raise
        host = socket.gethostname()
        dead = ["rank %d (pid %d)" % (other, pid) for other, (other_host, pid) in enumerate(processes)
                if other != rank and other_host == host and _has_ended(pid)]
        raise PeerLostError("rank %d: a step exchanging data with the other processes failed (%s: %s): %s"
                            % (rank, type(error).__name__, (str(error).splitlines() or [""])[0],
                               "%s died" % " and ".join(dead) if dead else "another process of this launch has "
                               "probably died, on another machine: the launcher's log there names it")) from None


def init():
    """Joins the other processes of the launch, if any; returns (rank, world_size, processes): every rank's (host name,
    pid), to name a process that dies."""
    environment = paddle.distributed.ParallelEnv()
    processes = [(socket.gethostname(), os.getpid())]
    if environment.world_size > 1:
        # On CPU the gloo communicator reaches static programs only when it is set up in dynamic mode.
        was_static = not paddle.in_dynamic_mode()
        paddle.disable_static()
        paddle.distributed.init_parallel_env()
        processes = []
        paddle.distributed.all_gather_object(processes, (socket.gethostname(), os.getpid()))
        if was_static:
            paddle.enable_static()
    return environment.rank, environment.world_size, processes


GATHER_CHUNK_BYTES = 32 << 20  # per rank and round of all_gather: bounds the memory a gather adds


def shard(num_items, rank, world_size):
    """The contiguous share [start, stop) of rank `rank`: shares differ in size by at most one item."""
    return num_items * rank // world_size, num_items * (rank + 1) // world_size


def gather_rows(rows, rank, world_size):
    """Rank 0 gets every rank's 2-D float32 `rows` stacked in rank order; the other ranks get None.

    Every rank must call it (after `init`). Shares may differ in length (an empty one has shape (0, 0)); they travel
    in rounds of GATHER_CHUNK_BYTES a rank, so no rank holds more than one round of the others' rows at a time.
    """
    rows = np.ascontiguousarray(rows, np.float32)
    if world_size == 1:
        return rows
    with similarity.dygraph():  # collectives on host arrays run in dynamic mode
        shapes = [tuple(shape) for shape in _all_gather(np.array(rows.shape, np.int64))]
        width = max(shape[1] for shape in shapes)
        longest = max(shape[0] for shape in shapes)
        chunk = max(1, GATHER_CHUNK_BYTES // max(4 * width, 1))
        merged = np.empty((sum(shape[0] for shape in shapes), width), np.float32) if rank == 0 else None
        starts = np.cumsum([0] + [shape[0] for shape in shapes])
        for r0 in range(0, longest, chunk):
            piece = np.zeros((min(chunk, longest - r0), width), np.float32)
            mine = rows[r0:r0 + len(piece)]
            piece[:len(mine), :mine.shape[1]] = mine
            for source, received in enumerate(_all_gather(piece)):
                count = max(0, min(len(piece), shapes[source][0] - r0))
                if merged is not None and count:
                    merged[starts[source] + r0:starts[source] + r0 + count] = received[:count]
    return merged


def _all_gather(array):
    gathered = []
    paddle.distributed.all_gather(gathered, paddle.to_tensor(array))
    return [tensor.numpy() for tensor in gathered]


def world_size():
    """The number of training processes: PADDLE_TRAINERS_NUM as the launcher sets it, else 1."""
    return paddle.distributed.ParallelEnv().world_size


def rank():
    """This process's place among the training processes: PADDLE_TRAINER_ID as the launcher sets it, else 0."""
    return paddle.distributed.ParallelEnv().rank


def mean_over_processes(value, num_processes):
    """Appends an all-reduce to the current program; returns `value` averaged over the processes."""
    paddle.distributed.all_reduce(value)  # sums in place
    return value / num_processes


def gather_over_processes(value, process_rank, num_processes):
    """Appends ops returning every process's `value` [n, ...] stacked in rank order, [num_processes * n, ...], the same
    on every process; each process's `value` must have the same shape.

    An all-reduce (sum) of copies padded with zeros: the one collective that works in static PIR programs here, and
    exact, since x + 0 = x.
    """
    if num_processes == 1:
        return value
    zeros = paddle.zeros_like(value)
    padded = paddle.concat([zeros] * process_rank + [value] + [zeros] * (num_processes - process_rank - 1), axis=0)
    paddle.distributed.all_reduce(padded)
    return padded


class DataParallelMomentum(cpu_ops.Momentum):
    """Momentum whose gradients are averaged over the processes before anything else uses them.

    Averaging inside `backward` leaves `minimize`, the weight decay and AMP's loss-scaling checks as Paddle wrote
    them: they all see the averaged gradients, so every process makes the same update and skips the same overflowing
    steps. With one process it is plain Momentum.
    """

    def __init__(self, num_processes, **momentum_arguments):
        super().__init__(**momentum_arguments)
        self.num_processes = num_processes

    def backward(self, *args, **kwargs):
        params_grads = super().backward(*args, **kwargs)
        if self.num_processes == 1:
            return params_grads
        return [(param, mean_over_processes(grad, self.num_processes)) for param, grad in params_grads]


class StopVote:
    """Lets all processes agree on stopping, so none is left waiting in an all-reduce for one that has gone.

    A Ctrl-C or SIGTERM may reach the processes on either side of an iteration boundary, or only one of them; every
    process votes before each iteration with the signal it received, and all stop together if any received one.
    """

    def __init__(self, executor):
        self.executor = executor
        with paddle.utils.unique_name.guard():
            self.program = paddle.static.Program()
            with paddle.static.program_guard(self.program, paddle.static.Program()):
                vote = paddle.static.data(name="stop_vote", shape=[1], dtype="int32")
                self.largest_vote = vote * 1
                paddle.distributed.all_reduce(self.largest_vote, op=paddle.distributed.ReduceOp.MAX)

    def agree(self, signal_number):
        """Returns the largest signal number any process received (0: none); every process must call it."""
        (largest,) = self.executor.run(self.program, feed={"stop_vote": np.array([signal_number], np.int32)},
                                       fetch_list=[self.largest_vote])
        return int(np.asarray(largest)[0])
