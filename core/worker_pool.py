"""An ordered pool of decoding processes writing batches into shared memory.

The main process hands out `(sequence number, slot, task)`; a worker runs `work(task, slot_array)`, which fills the
slot in place and returns `(rows_used, metadata)`; results come back in task order whatever worker finished first.
The number of slots bounds both memory and how far decoding runs ahead of training. Slots are shared-memory
arrays made before the fork, so a batch of images crosses processes without being pickled.
"""
import atexit
import gc
import multiprocessing
import multiprocessing.util
import os
import queue
import signal
import traceback
from multiprocessing import shared_memory

import numpy as np

import utility

RESULT_POLL_SECONDS = 0.2
WORKER_IDLE_POLL_SECONDS = 1.0
JOIN_SECONDS = 2.0


# Every pool with workers, from its construction to its close(). Held strongly: a pool dropped unclosed (its `with`
# never entered because a Ctrl-C came first, say) must still be closed at exit.
_LIVE_POOLS = set()


@atexit.register
def _close_live_pools():
    # Workers ignore SIGTERM, and at exit multiprocessing terminates daemonic children with SIGTERM and then joins
    # them without a timeout: a pool nobody closed would hang the exit. atexit runs handlers last-registered first,
    # and multiprocessing.util registered its own when imported above, so this one runs before it.
    for pool in list(_LIVE_POOLS):
        pool.close()


class WorkerError(RuntimeError):
    """A worker raised: the first line of the message says what, the lines after it are the worker's traceback."""


class WorkerDiedError(RuntimeError):
    """A worker process vanished (killed, out of memory) without reporting an error."""


def _worker_loop(work, slots, task_queue, result_queue, parent_pid):
    # Ctrl-C reaches the whole process group, and schedulers send SIGTERM to every process of a job: only the main
    # process decides how to stop, and it needs its workers until it has. They end when it closes the pool, or by
    # themselves within a second of it dying. The signals were blocked across the fork, so that the main process's
    # handlers never run here; one that arrived meanwhile is dropped on unblocking.
    for signum in utility.STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, utility.STOP_SIGNALS)
    while True:
        try:
            item = task_queue.get(timeout=WORKER_IDLE_POLL_SECONDS)
        except queue.Empty:
            if os.getppid() != parent_pid:
                return
            continue
        if item is None:
            return
        sequence, slot, task = item
        try:
            rows, metadata = work(task, slots[slot])
            result_queue.put((sequence, slot, rows, metadata, None))
        except Exception as error:
            summary = "a reader worker failed: %s: %s" % (type(error).__name__, (str(error).splitlines() or [""])[0])
            result_queue.put((sequence, slot, 0, None, summary + "\n" + traceback.format_exc()))


class OrderedWorkerPool:
    """Runs `work(task, out)` over an iterable of tasks in `num_workers` processes, yielding in order.

    `out` is a float32 array of `slot_shape`; each result is `(copy of out[:rows], metadata)`.
    With `num_workers=0` the work runs in the calling process, which is easiest to debug.
    """

    def __init__(self, work, num_workers, slot_shape, prefetch_per_worker=2):
        self.work = work
        self.num_workers = num_workers
        self.workers = []
        self.memories = []
        if num_workers == 0:
            self.slots = [np.empty(slot_shape, dtype=np.float32)]
            return
        _LIVE_POOLS.add(self)
        try:
            self._start(work, num_workers, slot_shape, num_slots=num_workers * prefetch_per_worker)
        except BaseException:  # a Ctrl-C half-way included: no worker or shared memory outlives the constructor
            self.close()
            raise

    def _start(self, work, num_workers, slot_shape, num_slots):
        slot_bytes = int(np.prod(slot_shape)) * np.dtype(np.float32).itemsize
        for _ in range(num_slots):
            memory = shared_memory.SharedMemory(create=True, size=max(1, slot_bytes))
            self.memories.append(memory)
        self.slots = [np.ndarray(slot_shape, dtype=np.float32, buffer=memory.buf) for memory in self.memories]
        # fork: workers inherit the shared slots and the work object as they are, nothing is pickled or
        # re-imported (spawn would re-run the training script's imports, Paddle included, in every worker).
        context = multiprocessing.get_context("fork")
        self.task_queue = context.Queue()
        self.result_queue = context.Queue()
        # A worker must never run the destructor of an object that was already garbage in this process when it
        # forked: an unreachable Paddle executor's (~PirInterpreter) segfaults there. Frozen objects are left out of
        # the workers' garbage collections; this process unfreezes them and collects its garbage as before.
        gc.freeze()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, utility.STOP_SIGNALS)
        try:
            for index in range(num_workers):
                worker = context.Process(
                    target=_worker_loop,
                    args=(work, self.slots, self.task_queue, self.result_queue, os.getpid()),
                    name="reader-worker-%d" % index,
                    daemon=True)
                worker.start()
                self.workers.append(worker)
        finally:
            gc.unfreeze()
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # last: a signal held back is handled from here on

    def imap(self, tasks):
        if self.num_workers == 0:
            yield from self._imap_inline(tasks)
            return
        tasks = iter(tasks)
        free_slots = list(range(len(self.slots)))
        finished = {}
        next_to_send = next_to_yield = 0
        exhausted = False
        while True:
            while free_slots and not exhausted:
                try:
                    task = next(tasks)
                except StopIteration:
                    exhausted = True
                    break
                self.task_queue.put((next_to_send, free_slots.pop(), task))
                next_to_send += 1
            if exhausted and next_to_yield == next_to_send:
                return
            while next_to_yield not in finished:
                sequence, slot, rows, metadata, error = self._next_result()
                finished[sequence] = (slot, rows, metadata, error)
            slot, rows, metadata, error = finished.pop(next_to_yield)
            if error is not None:
                raise WorkerError(error)
            batch = self.slots[slot][:rows].copy()
            free_slots.append(slot)
            next_to_yield += 1
            yield batch, metadata

    def _imap_inline(self, tasks):
        for task in tasks:
            rows, metadata = self.work(task, self.slots[0])
            yield self.slots[0][:rows].copy(), metadata

    def _next_result(self):
        # Checked at every result, not only when results stop coming: a worker killed while idle holds no task, and
        # the others would carry on without it, unnoticed.
        while True:
            self._check_workers_alive()
            try:
                return self.result_queue.get(timeout=RESULT_POLL_SECONDS)
            except queue.Empty:
                pass

    def _check_workers_alive(self):
        for worker in self.workers:
            if worker.exitcode is not None:
                if worker.exitcode < 0:
                    cause = "was killed by signal %s" % signal.Signals(-worker.exitcode).name
                else:
                    cause = "exited with code %d" % worker.exitcode
                raise WorkerDiedError("reader worker %s (pid %d) %s; stopping." % (worker.name, worker.pid, cause))

    def close(self):
        """Stops the workers (politely, then by force) and frees the shared memory. Safe to call twice."""
        self._drop_pending_tasks()
        for worker in self.workers:
            if worker.is_alive():
                try:
                    self.task_queue.put(None)
                except (OSError, ValueError):
                    break
        for worker in self.workers:
            worker.join(JOIN_SECONDS)
            if worker.is_alive():
                worker.kill()
                worker.join(JOIN_SECONDS)
        if self.workers:
            for pool_queue in (self.task_queue, self.result_queue):
                pool_queue.cancel_join_thread()
                pool_queue.close()
        self.workers = []
        self.slots = []
        for memory in self.memories:
            memory.close()
            memory.unlink()
        self.memories = []
        _LIVE_POOLS.discard(self)

    def _drop_pending_tasks(self):
        # Otherwise the stop signals queue up behind batches nobody will read, and workers decode those first.
        if not self.workers:
            return
        try:
            while True:
                self.task_queue.get_nowait()
        except (queue.Empty, OSError, ValueError):
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
