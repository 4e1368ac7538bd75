"""Feature extraction as eval.py and infer.py run it on CPU (onednn.InferenceExecutor), for bench/train_throughput.py.

    python bench/inference_rate.py '{"steps": 3, "configs": [{"key": "ResNet18 64", "model": "ResNet18", "side": 64,
        "batch": 64}]}'

prints one JSON line, {key: images per second}, each after one untimed run. It runs in a process of its own, as eval.py
and infer.py do: once Paddle Inference's predictor has run, the executor's oneDNN kernels in the same process slow
down (measured: a ResNet18 training step at 3x64x64 from about 220 to 130 images/s), which would distort the
benchmark's other measurements.
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import utility  # noqa: E402,F401  (the CPU thread count, before paddle loads)
import numpy as np  # noqa: E402
import paddle  # noqa: E402

import onednn  # noqa: E402
import programs  # noqa: E402
from bench import timing  # noqa: E402


def images_per_second(config, steps):
    feature_program = programs.build_feature_program(config["model"], 0, (3, config["side"], config["side"]))
    executor = paddle.static.Executor(paddle.CPUPlace())
    executor.run(feature_program.startup)
    inference = onednn.InferenceExecutor(feature_program, executor)
    feed = {"image": np.random.default_rng(0).standard_normal(
        (config["batch"], 3, config["side"], config["side"])).astype("float32")}

    def run():
        inference.run(feature_program.program, feed=feed, fetch_list=[feature_program.feature])

    return timing.images_per_second(run, config["batch"], steps)


def main(request):
    paddle.enable_static()
    paddle.seed(0)
    return {config["key"]: images_per_second(config, request["steps"]) for config in request["configs"]}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))), flush=True)
