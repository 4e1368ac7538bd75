"""The ordered pool of decoding processes: results in order, worker failures surfaced, no orphans, no hangs."""
import gc
import multiprocessing
import os
import signal
import time

import pytest

import tiny_program
from core import worker_pool


def failing_work(task, out):
    if task == 2:
        raise ValueError("task two is cursed")
    out[:] = task
    return 1, task


def test_worker_exception_surfaces_with_its_traceback_and_no_orphans():
    pool = worker_pool.OrderedWorkerPool(failing_work, 2, (1, 2))
    pids = [worker.pid for worker in pool.workers]
    results = []
    with pytest.raises(worker_pool.WorkerError) as caught:
        for batch, task in pool.imap(range(5)):
            results.append(task)
    pool.close()
    assert results == [0, 1]
    assert "ValueError: task two is cursed" in str(caught.value)
    assert "failing_work" in str(caught.value)
    assert multiprocessing.active_children() == []
    for pid in pids:
        assert not os.path.exists("/proc/%d" % pid) or open("/proc/%d/stat" % pid).read().split()[2] == "Z"


def collecting_work(task, out):
    gc.collect()
    out[:] = task
    return 1, task


def test_workers_leave_paddle_garbage_of_the_parent_alone():
    tiny = tiny_program.build_tiny_program()
    tiny.train_step()  # the executor now holds an interpreter, whose destructor segfaults in a forked child
    cycle = [tiny]
    cycle.append(cycle)  # unreachable, but only a garbage collection frees it
    del tiny, cycle
    with worker_pool.OrderedWorkerPool(collecting_work, 1, (1, 1)) as pool:
        assert [task for _, task in pool.imap(range(3))] == [0, 1, 2]
    assert gc.get_freeze_count() == 0  # this process collects its own garbage as before


def slow_work(task, out):
    time.sleep(0.05)
    out[:] = task
    return 1, task


def test_killed_worker_is_reported_at_the_next_results():
    """Counted in results, not seconds (a loaded machine stretches any time bound): the death is noticed before the
    results already in flight when it happened have all been handed out."""
    pool = worker_pool.OrderedWorkerPool(slow_work, 2, (1, 1))
    in_flight = len(pool.slots)
    results_after_the_kill = 0
    with pytest.raises(worker_pool.WorkerDiedError, match="killed by signal SIGKILL"):
        for batch, task in pool.imap(range(1000)):
            if task == 0:
                os.kill(pool.workers[0].pid, signal.SIGKILL)
                os.waitid(os.P_PID, pool.workers[0].pid, os.WEXITED | os.WNOWAIT)  # dead before the next result
            else:
                results_after_the_kill += 1
    pool.close()
    assert results_after_the_kill <= in_flight
    assert multiprocessing.active_children() == []


def test_results_come_back_in_order_whatever_finishes_first():
    def tasks():
        yield from [3, 0, 2, 0, 1, 0]

    with worker_pool.OrderedWorkerPool(sleepy_work, 2, (1, 1)) as pool:
        assert [task for _, task in pool.imap(tasks())] == [3, 0, 2, 0, 1, 0]


def sleepy_work(task, out):
    time.sleep(task * 0.05)
    out[:] = task
    return 1, task
