"""The one timing loop of the benchmarks (no Paddle or torch import: bench/torch_reference.py uses it too)."""
import time


def images_per_second(step, batch_size, steps, warm_up=True):
    """Times `steps` calls of `step`, each processing `batch_size` images, after an untimed one if `warm_up`
    (a program's first lowering, caches, allocations)."""
    if warm_up:
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch_size * steps / (time.perf_counter() - start)
