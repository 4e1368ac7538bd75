"""Static programs: the training program (network + loss + optimizer) and the feature program (image → feature).

PIR programs have no `clone(for_test=True)`, so the feature program is the same network built again in a program of
its own. Every parameter has an explicit name, so both programs address the same variables in the global scope:
what training updates, testing reads.
"""
import collections
import contextlib
import hashlib
import inspect
import os
import time

import numpy as np
import paddle

import models
import utility
from core import cpu_ops, distributed, onednn, predictor, pretrained

TrainProgram = collections.namedtuple("TrainProgram", "program startup image label feature loss accuracies scheduler")
FeatureProgram = collections.namedtuple("FeatureProgram", "program startup image feature")
WEIGHT_DECAY = 1e-4
MOMENTUM = 0.9
AMP_DTYPES = ("float16", "bfloat16")
# float16's first loss scale, halved after every overflowing step and doubled after 1000 good ones (Paddle's rule).
INITIAL_LOSS_SCALING = 2.0 ** 15
# Paddle's bfloat16 CPU kernels are oneDNN's, which need AVX512; on a CPU without it (AVX2 only, as AMD's Zen 3) the
# executor fails mid-step with a bare "std::exception", so training checks first.
NO_CPU_BFLOAT16 = ("bfloat16 on CPU needs AVX512, which this CPU lacks (paddle.amp.is_bfloat16_supported('cpu') is "
                   "False)")
TEST_LOG_EVERY = 20  # batches between the test passes' log lines when no progress bar shows


def gpu_id():
    """This process's GPU: paddle.distributed.launch gives each process its own card through FLAGS_selected_gpus."""
    return int(os.environ.get("FLAGS_selected_gpus", "0").split(",")[0])


def make_place(use_gpu):
    return paddle.CUDAPlace(gpu_id()) if use_gpu else paddle.CPUPlace()


LR_STRATEGIES = ("piecewise_decay", "cosine_decay")


def make_lr_scheduler(base_lr, lr_steps, lr_strategy="piecewise_decay", warmup_iter_num=0, total_iter_num=None):
    """The learning rate of every iteration, stepped once per iteration; its state goes into checkpoints.

    piecewise_decay, the original's: multiplied by 0.1 at each of `lr_steps` (iterations counted from the start of
    training). cosine_decay: from `base_lr` down to 0 at `total_iter_num` along half a cosine. A warm-up of
    `warmup_iter_num` iterations first rises linearly from 0 to `base_lr`; the schedule proper starts after it.
    """
    if lr_strategy == "piecewise_decay":
        scheduler = paddle.optimizer.lr.PiecewiseDecay(
            boundaries=[step - warmup_iter_num for step in lr_steps],
            values=[base_lr * 0.1 ** i for i in range(len(lr_steps) + 1)])
    elif lr_strategy == "cosine_decay":
        scheduler = paddle.optimizer.lr.CosineAnnealingDecay(base_lr, T_max=total_iter_num - warmup_iter_num)
    else:
        raise ValueError("unknown learning-rate strategy %r, not one of %s" % (lr_strategy, ", ".join(LR_STRATEGIES)))
    if warmup_iter_num:
        scheduler = paddle.optimizer.lr.LinearWarmup(scheduler, warmup_steps=warmup_iter_num, start_lr=0.0,
                                                     end_lr=base_lr)
    return scheduler


def _image_input(image_shape):
    return paddle.static.data(name="image", shape=[None] + list(image_shape), dtype="float32")


def cpu_runs_bfloat16():
    """Whether this CPU can run bfloat16 programs."""
    return paddle.amp.is_bfloat16_supported("cpu")


def build_train_program(model_name, embedding_size, image_shape, loss, scheduler, seed, amp_dtype=None,
                        world_size=1, data_format="NCHW"):
    """Network, loss and Momentum with L2 decay as the original, its learning rate from `scheduler`
    (`make_lr_scheduler`).

    `loss` is a `losses.Loss`; one with a classifier head returns the losses to average and class probabilities, from
    which top-1 and top-5 accuracy are computed; the others return the losses to average.
    `amp_dtype` ('float16' or 'bfloat16') runs the network in Paddle's O1 automatic mixed precision, the loss in
    float32. With `world_size` > 1 the gradients are averaged over the data-parallel processes, and the loss and
    accuracies the program reports are their averages over the processes, as the original averaged over GPUs.
    `data_format` is the layout of the network's activations (models/resnet.py): NCHW, or NHWC, the layout of a
    program whose convolutions run on oneDNN (`onednn.training_data_format`). The parameters are the same in both.
    """
    with paddle.utils.unique_name.guard():
        program, startup = paddle.static.Program(), paddle.static.Program()
        program.random_seed = startup.random_seed = seed
        # The channels-last program is the CPU's (oneDNN): its float32 batch norms and updates run on the suite's
        # multithreaded kernels (cpu_ops.py).
        with paddle.static.program_guard(program, startup), \
                cpu_ops.used_for_training(data_format == onednn.DATA_FORMAT and amp_dtype is None):
            image = _image_input(image_shape)
            label = paddle.static.data(name="label", shape=[None, 1], dtype="int64")
            with paddle.amp.auto_cast(enable=amp_dtype is not None, level="O1", dtype=amp_dtype or "float16"):
                model = models.get_model(model_name)
                # Only a channels-last network is told its layout (NCHW is every model's default); a model without
                # the choice (one registered from outside models/) stays NCHW.
                layout = {"data_format": data_format} if data_format != "NCHW" and _takes_data_format(model) else {}
                feature = model.net(image, embedding_size, **layout)
            if amp_dtype is not None:
                # Normalisations, exponentials and logsumexps lose too much in 16 bits: the loss is float32.
                feature = feature.astype("float32")
            result = loss.loss(feature, label)
            accuracies = []
            if loss.has_classifier:
                classifier_loss, probabilities = result
                avg_loss = paddle.mean(classifier_loss)
                top_k = min(5, probabilities.shape[1])
                accuracies = [paddle.metric.accuracy(probabilities, label, k=1),
                              paddle.metric.accuracy(probabilities, label, k=top_k)]
            else:
                avg_loss = paddle.mean(result)
            optimizer = distributed.DataParallelMomentum(world_size, learning_rate=scheduler, momentum=MOMENTUM,
                                                         weight_decay=paddle.regularizer.L2Decay(WEIGHT_DECAY))
            _minimize(optimizer, avg_loss, amp_dtype)
            if world_size > 1:
                avg_loss, *accuracies = [distributed.mean_over_processes(value * 1.0, world_size)
                                         for value in [avg_loss] + accuracies]
    return TrainProgram(program, startup, image, label, feature, avg_loss, accuracies, scheduler)


def _takes_data_format(model):
    return "data_format" in inspect.signature(model.net).parameters


def _minimize(optimizer, loss, amp_dtype):
    """`optimizer.minimize(loss)` through Paddle's static AMP when `amp_dtype` is set.

    bfloat16 has float32's exponent range and needs no loss scaling. float16 gets dynamic loss scaling: the
    gradients of an overflowing step are zeroed and the scale halved. Under PIR, GradScaler sets the scaling up.
    """
    if amp_dtype is None:
        optimizer.minimize(loss)
        return
    if amp_dtype == "bfloat16":
        paddle.static.amp.decorate(optimizer, level="O1", dtype="bfloat16", init_loss_scaling=1.0,
                                   use_dynamic_loss_scaling=False).minimize(loss)
        return
    amp_optimizer = paddle.static.amp.decorate(optimizer, level="O1", dtype="float16")
    scaler = paddle.amp.GradScaler(init_loss_scaling=INITIAL_LOSS_SCALING)
    with paddle.amp.auto_cast(level="O1", dtype="float16"):  # GradScaler.scale reads the AMP dtype from here
        scaled_loss = scaler.scale(loss)
    scaler.minimize(amp_optimizer, scaled_loss)


def build_feature_program(model_name, embedding_size, image_shape):
    """The test/eval/infer program: image → feature, with batch norm on its moving averages."""
    with paddle.utils.unique_name.guard():
        program, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(program, startup):
            image = _image_input(image_shape)
            feature = models.get_model(model_name).net(image, embedding_size, is_test=True)
    return FeatureProgram(program, startup, image, feature)


def extract_features(executor, feature_program, batches, num_images=None, description="features"):
    """Runs the feature program over `(images, tags)` batches; returns the stacked features and the tags.

    Tags are whatever the reader pairs with each image: label arrays (concatenated) or path lists (joined).
    The batch stream is closed even when a batch fails, so its decoding workers stop at once.
    On a terminal a progress bar named `description` shows (`num_images` gives it an ETA); elsewhere, as the
    original's logs, every 20th batch logs `testbatch N, time T sec`.
    """
    features, tags = [], []
    with contextlib.closing(batches), utility.progress_bar(num_images, description) as bar:
        for batch_id, (images, batch_tags) in enumerate(batches):
            started = time.time()
            (batch_features,) = executor.run(feature_program.program, feed={"image": images},
                                             fetch_list=[feature_program.feature])
            features.append(np.asarray(batch_features).reshape(len(images), -1))
            tags.append(batch_tags)
            bar.update(len(images))
            if bar.disable and batch_id % TEST_LOG_EVERY == 0:  # no bar, so the original's log lines
                utility.log("testbatch %d, time %2.2f sec" % (batch_id, time.time() - started))
    if not features:
        raise ValueError("no images to extract features from")
    joined_tags = np.concatenate(tags) if isinstance(tags[0], np.ndarray) else [tag for batch in tags for tag in batch]
    return np.concatenate(features), joined_tags


def load_feature_program(args, log, use_predictor=False):
    """Builds the feature program, initialises it and loads `--pretrained_model`; returns (executor, program).

    With `use_predictor` the executor is a `predictor.InferenceExecutor` on the GPU with --use_gpu, on the CPU with
    --use_mkldnn: the weights are final here, so Paddle Inference's predictor may fold and fuse them, the fastest way
    Paddle has to run the program. Without, or on a CPU with --use_mkldnn=False, Paddle's executor.
    """
    paddle.enable_static()
    # Without --pretrained_model the network is a random one: the same random one every run (training's default
    # --seed), so that its scores can be compared and reproduced.
    paddle.seed(0)
    with utility.signals_held():
        feature_program = build_feature_program(args.model, args.embedding_size, args.image_shape)
        executor = paddle.static.Executor(make_place(args.use_gpu))
        executor.run(feature_program.startup)
    if args.pretrained_model:
        pretrained.load_pretrained(feature_program.program, args.pretrained_model, log=log)
    else:
        log("no --pretrained_model: using randomly initialised weights")
    if use_predictor and args.use_gpu:
        return predictor.InferenceExecutor(feature_program, executor, gpu_id()), feature_program
    if use_predictor and onednn.wanted(args.use_gpu, args.use_mkldnn):
        return predictor.InferenceExecutor(feature_program, executor), feature_program
    return executor, feature_program


def weights_checksum(program):
    """'sha256:<hex>' of every variable of `program` in name order (name, dtype, shape and bytes): what the weights
    are, whichever file they came from."""
    digest = hashlib.sha256()
    for name, value in sorted(program.state_dict().items()):
        array = np.ascontiguousarray(np.array(value))
        digest.update(("%s %s %s\n" % (name, array.dtype, array.shape)).encode())
        digest.update(array.tobytes())
    return "sha256:" + digest.hexdigest()


def feature_size(feature_program):
    """The length of the program's feature vector, as the program's shapes give it."""
    return int(feature_program.feature.shape[-1])
