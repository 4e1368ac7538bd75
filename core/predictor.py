"""Paddle Inference's predictor for the feature program: how eval.py, infer.py, search.py and, on CPU, the training
scripts' periodic test extract features.

The predictor's passes fold batch norm into the convolutions and fuse relu and the residual additions into them,
from the weights as they are when it is made; on a CPU it runs them with oneDNN (3 to 6 times Paddle's default
kernels, docs/benchmarks.md), on a GPU with CUDA. `InferenceExecutor` stands in for the `paddle.static.Executor` of
that one program.
"""
import os
import tempfile

import numpy as np
import paddle

import utility

GPU_MEMORY_POOL_MB = 256  # the predictor's first GPU memory pool; it grows as needed


def save_inference_model(feature_program, executor, prefix):
    """Writes the feature program with the weights `executor`'s scope holds: prefix.json and prefix.pdiparams."""
    paddle.static.save_inference_model(prefix, [feature_program.image], [feature_program.feature], executor,
                                       program=feature_program.program)


class InferenceExecutor:
    """Runs a feature program through Paddle Inference's predictor, with the weights `executor`'s scope holds now: on
    the CPU with oneDNN, or on GPU `gpu_id`.

    `run(program, feed={"image": images}, fetch_list=[feature])` returns `[features]`, as an Executor's run. Training
    changes the weights, so the training scripts make a new one for each test.
    """

    def __init__(self, feature_program, executor, gpu_id=None):
        self.program, self.feature = feature_program.program, feature_program.feature
        with utility.signals_held(), tempfile.TemporaryDirectory() as directory:
            prefix = os.path.join(directory, "inference")
            save_inference_model(feature_program, executor, prefix)
            config = paddle.inference.Config(prefix + ".json", prefix + ".pdiparams")
            self.threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
            if gpu_id is None:
                config.disable_gpu()
                config.enable_mkldnn()
                # Paddle's default (a cache per input shape) also switches oneDNN's caching for the executor in this
                # thread: a ResNet18 training step ran at 128 instead of 204 images/s after a predictor had run.
                config.set_mkldnn_cache_capacity(0)
                config.set_cpu_math_library_num_threads(self.threads)
            else:
                config.enable_use_gpu(GPU_MEMORY_POOL_MB, gpu_id)
            config.disable_glog_info()
            self.predictor = paddle.inference.create_predictor(config)
        self.input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self.output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])

    def run(self, program, feed, fetch_list):
        if program is not self.program or list(feed) != ["image"] or len(fetch_list) != 1 \
                or fetch_list[0] is not self.feature:
            raise ValueError("an InferenceExecutor runs its feature program only: image in, feature out")
        self.input.copy_from_cpu(np.ascontiguousarray(feed["image"], dtype=np.float32))
        self.predictor.run()
        # A run leaves this thread's CPU math library on one thread, which would halve the speed of Paddle's default
        # kernels in the training that goes on after a test: batch norm, pooling, the losses (measured: a ResNet18
        # step on the default kernels at 3x224x224 went from 4.8 to 3.4 images/s, and from 2 busy cores to 1.1).
        paddle.base.core.set_num_threads(self.threads)
        return [self.output.copy_to_cpu()]
