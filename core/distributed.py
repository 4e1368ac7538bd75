"""Data-parallel training over the processes that `python -m paddle.distributed.launch` starts, one per device.

Every process (rank) builds the same static programs from the same seed, so parameters start identical; it reads its
own contiguous share of each global batch (reader.train_batches); and its training program all-reduces every
gradient, divided by the number of processes, before the optimizer sees it, so parameters stay identical. Batch-norm
statistics stay per process, as they stayed per GPU in the original's ParallelExecutor.

Paddle 3.3.1's fleet static collective optimizer fails under PIR, hence the explicit all-reduce. Without the
launcher there is one process and nothing here communicates.
"""
import numpy as np
import paddle


def init():
    """Joins the other processes of the launch, if any; returns (rank, world_size)."""
    environment = paddle.distributed.ParallelEnv()
    if environment.world_size > 1:
        # On CPU the gloo communicator reaches static programs only when it is set up in dynamic mode.
        was_static = not paddle.in_dynamic_mode()
        paddle.disable_static()
        paddle.distributed.init_parallel_env()
        if was_static:
            paddle.enable_static()
    return environment.rank, environment.world_size


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


class DataParallelMomentum(paddle.optimizer.Momentum):
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
