"""Loading pretrained weights into a program by variable name and shape, from any of these sources:
- a checkpoint directory of this suite (train_elem's output feeding train_pair), or a directory of numbered ones;
- a Paddle `.pdparams` file (or its prefix);
- a directory of per-variable files in the Fluid `save_persistables` format, which is what the original's
  ImageNet `*_pretrained.tar` files unpack to;
- the original suite's own saves (2019: Fluid variable files; 2020: `<iter>.pdparams`), whose automatically named
  parameters (`fc_0.w_0`, `weight_norm.w_0`, ...) are matched to this suite's names.
"""
import os

import paddle

from core import checkpoint
from core.weights import CheckpointError, read_fluid_variable, read_program_state

# Optimizer state, the learning rate, float16 AMP's loss scaling and the cross-batch memory belong to a run, not to a
# model: never taken from pretrained weights.
RUN_STATE_MARKERS = ("_velocity_", "learning_rate_", "loss_scaling_", "num_good_steps_", "num_bad_steps_", "xbm_")


def read_weights(path):
    """Returns `{name: ndarray}` from any supported source and a short description of what it was.

    Besides this suite's checkpoints, .pdparams files and Fluid variable directories, it reads what the original
    saved: in 2019 a directory of Fluid variable files per iteration, from 2020 `<iter>.pdparams` beside an empty
    `<iter>/` folder (either path names it). A folder of numbered saves gives its newest.
    """
    if not os.path.exists(path) and not os.path.exists(path + ".pdparams"):
        raise CheckpointError("%s: no such file or directory" % path)
    if path.endswith(".pdparams") or not os.path.isdir(path):
        prefix = path[:-len(".pdparams")] if path.endswith(".pdparams") else path
        return read_program_state(prefix), ".pdparams file"
    if os.path.isfile(path + ".pdparams"):
        return read_program_state(path), "the original's save, %s.pdparams" % os.path.basename(path)
    if os.path.isfile(os.path.join(path, checkpoint.MODEL_PREFIX + ".pdparams")):
        state = {}
        if os.path.isfile(os.path.join(path, checkpoint.STATE_FILE)):
            state = checkpoint.read_trainer_state(path)
            checkpoint.verify_files(path, state.get(checkpoint.CHECKSUMS_KEY, {}))
        weights = read_program_state(os.path.join(path, checkpoint.MODEL_PREFIX))
        return weights, "checkpoint directory" + (", iteration %d" % state["iteration"] if "iteration" in state else "")
    newest = _newest_save(path)
    if newest:
        return read_weights(newest)
    files = [name for name in sorted(os.listdir(path))
             if os.path.isfile(os.path.join(path, name)) and not name.startswith(".")]
    if not files:
        raise CheckpointError("%s: holds no weights (no checkpoint, .pdparams file or Fluid variable file)%s"
                              % (path, _suggestion(path)))
    return ({name: read_fluid_variable(os.path.join(path, name)) for name in files},
            "directory of Fluid variable files")


def _newest_save(directory):
    """The newest numbered save in `directory`: this suite's `<iter>/` checkpoints, the original's `<iter>.pdparams`
    (2020) or `<iter>/` folders of Fluid variable files (2019); None if there is none."""
    saves = {}
    for name in os.listdir(directory):
        entry = os.path.join(directory, name)
        if name.endswith(".pdparams") and name[:-len(".pdparams")].isdigit():
            saves[int(name[:-len(".pdparams")])] = entry[:-len(".pdparams")]
        elif name.isdigit() and os.path.isdir(entry) and os.listdir(entry):
            saves.setdefault(int(name), entry)
    return saves[max(saves)] if saves else None


def _suggestion(directory):
    """Points at the folders inside `directory` that hold weights, such as model_save_dir/<model>."""
    inside = [os.path.join(directory, name) for name in sorted(os.listdir(directory))
              if os.path.isdir(os.path.join(directory, name)) and _newest_save(os.path.join(directory, name))]
    return "; pass the folder inside that holds them: %s" % " or ".join(inside) if inside else ""


# Parameters the original created without a name got Fluid's automatic ones. Its embedding fc is created first
# (fc_0), the softmax classifier after it (fc_1, or fc_0 without an embedding); arcmargin's class weights are
# weight_norm.w_0. For each of this suite's names, the original's, tried when the suite's is not in the file.
def original_names(expected):
    classifier = "fc_1" if "embedding_fc_weights" in expected else "fc_0"
    return {"embedding_fc_weights": ["fc_0.w_0"], "embedding_fc_offset": ["fc_0.b_0"],
            "softmax_fc_weights": [classifier + ".w_0"], "softmax_fc_offset": [classifier + ".b_0"],
            "arcmargin_weight_norm": ["weight_norm.w_0", "weight_norm"]}


def _under_original_names(weights, expected):
    """`weights` with this suite's names added for the original's automatically named parameters of the right shape;
    also returns the original names so used."""
    renamed, used = dict(weights), set()
    for name, aliases in original_names(expected).items():
        if name not in expected or name in weights:
            continue
        for alias in aliases:
            if alias in weights and tuple(weights[alias].shape) == expected[name]:
                renamed[name] = weights[alias]
                used.add(alias)
                break
    return renamed, used


def load_pretrained(program, path, log=print):
    """Loads every model variable of `program` found in `path` with the same name and shape.

    Prints how many were loaded, missing, of another shape and unused; loading nothing is an error.
    """
    weights, kind = read_weights(path)
    expected = {name: tuple(value.shape()) for name, value in program.state_dict().items()
                if not any(marker in name for marker in RUN_STATE_MARKERS)}
    weights, original_names_used = _under_original_names(weights, expected)
    loaded = {name: weights[name] for name in expected
              if name in weights and tuple(weights[name].shape) == expected[name]}
    wrong_shape = sorted(name for name in expected if name in weights and name not in loaded)
    missing = sorted(name for name in expected if name not in weights)
    unused = sorted(name for name in weights if name not in expected and name not in original_names_used and
                    not any(marker in name for marker in RUN_STATE_MARKERS))
    if not loaded:
        raise CheckpointError("%s: no variable of this model found in the %s (%d variables in it, e.g. %s)"
                              % (path, kind, len(weights), sorted(weights)[:3]))
    paddle.static.set_program_state(program, loaded)
    log("pretrained %s (%s): loaded %d%s, missing %d, shape-mismatched %d, unused %d"
        % (path, kind, len(loaded), " (%d under the original's names)" % len(original_names_used)
           if original_names_used else "", len(missing), len(wrong_shape), len(unused)))
    for name in wrong_shape:
        log("  shape mismatch, kept initialised: %s %s in file, %s in model"
            % (name, tuple(weights[name].shape), expected[name]))
    if missing:
        log("  missing, kept initialised: %s" % ", ".join(missing[:10] + (["..."] if len(missing) > 10 else [])))
    return {"loaded": len(loaded), "missing": len(missing), "mismatched": len(wrong_shape), "unused": len(unused)}
