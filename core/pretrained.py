"""Loading pretrained weights into a program by variable name and shape, from any of three sources:
- a checkpoint directory of this suite (train_elem's output feeding train_pair), or a directory of numbered ones;
- a Paddle `.pdparams` file (or its prefix);
- a directory of per-variable files in the Fluid `save_persistables` format, which is what the original's
  ImageNet `*_pretrained.tar` files unpack to.
"""
import os

import paddle

from core import checkpoint
from core.weights import CheckpointError, read_fluid_variable, read_program_state

# Optimizer state, the learning rate, float16 AMP's loss scaling and the cross-batch memory belong to a run, not to a
# model: never taken from pretrained weights.
RUN_STATE_MARKERS = ("_velocity_", "learning_rate_", "loss_scaling_", "num_good_steps_", "num_bad_steps_", "xbm_")


def read_weights(path):
    """Returns `{name: ndarray}` from any supported source and a short description of what it was."""
    if not os.path.exists(path) and not os.path.exists(path + ".pdparams"):
        raise CheckpointError("%s: no such file or directory" % path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, checkpoint.MODEL_PREFIX + ".pdparams")):
        if os.path.isfile(os.path.join(path, checkpoint.STATE_FILE)):
            checkpoint.verify_files(path, checkpoint.read_trainer_state(path).get(checkpoint.CHECKSUMS_KEY, {}))
        return read_program_state(os.path.join(path, checkpoint.MODEL_PREFIX)), "checkpoint directory"
    if os.path.isdir(path) and any(name.isdigit() for name in os.listdir(path)):
        return read_weights(checkpoint.find_checkpoint(path))
    if os.path.isdir(path):
        weights = {}
        for name in sorted(os.listdir(path)):
            file_path = os.path.join(path, name)
            if os.path.isfile(file_path) and not name.startswith("."):
                weights[name] = read_fluid_variable(file_path)
        return weights, "directory of Fluid variable files"
    prefix = path[:-len(".pdparams")] if path.endswith(".pdparams") else path
    return read_program_state(prefix), ".pdparams file"


def load_pretrained(program, path, log=print):
    """Loads every model variable of `program` found in `path` with the same name and shape.

    Prints how many were loaded, missing, of another shape and unused; loading nothing is an error.
    """
    weights, kind = read_weights(path)
    expected = {name: tuple(value.shape()) for name, value in program.state_dict().items()
                if not any(marker in name for marker in RUN_STATE_MARKERS)}
    loaded = {name: weights[name] for name in expected
              if name in weights and tuple(weights[name].shape) == expected[name]}
    wrong_shape = sorted(name for name in expected if name in weights and name not in loaded)
    missing = sorted(name for name in expected if name not in weights)
    unused = sorted(name for name in weights if name not in expected and
                    not any(marker in name for marker in RUN_STATE_MARKERS))
    if not loaded:
        raise CheckpointError("%s: no variable of this model found in the %s (%d variables in it, e.g. %s)"
                              % (path, kind, len(weights), sorted(weights)[:3]))
    paddle.static.set_program_state(program, loaded)
    log("pretrained %s (%s): loaded %d, missing %d, shape-mismatched %d, unused %d"
        % (path, kind, len(loaded), len(missing), len(wrong_shape), len(unused)))
    for name in wrong_shape:
        log("  shape mismatch, kept initialised: %s %s in file, %s in model"
            % (name, tuple(weights[name].shape), expected[name]))
    if missing:
        log("  missing, kept initialised: %s" % ", ".join(missing[:10] + (["..."] if len(missing) > 10 else [])))
    return {"loaded": len(loaded), "missing": len(missing), "mismatched": len(wrong_shape), "unused": len(unused)}
