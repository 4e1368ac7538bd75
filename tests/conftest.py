"""Shared test set-up: import the project from the repository root, threads set before Paddle loads; toy data."""
import os
import signal
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import core  # noqa: E402,F401  (sets the CPU thread count before any test imports Paddle)
from data.make_toy_sop import make_toy_sop  # noqa: E402

# A shell starts a background job (`make test &` in a script, `nohup ... &`) with Ctrl-C ignored, and the commands the
# tests start and interrupt would inherit that: they would run on through SIGINT. Any handler here gives them the
# default a terminal gives (an exec resets handled signals, not ignored ones).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory):
    """A tiny SOP-layout data set (12 training, 8 test classes of 3–5 JPEGs, 40 px) shared by every test that runs
    the scripts. Read-only: a test that breaks or adds files works on a copy."""
    root = str(tmp_path_factory.mktemp("toy") / "toy_sop")
    make_toy_sop(root, num_train_classes=12, num_test_classes=8, min_images=3, max_images=5, image_size=40, seed=1)
    return root


@pytest.fixture(scope="session")
def resnet18_weights(tmp_path_factory):
    """A .pdparams of an untrained ResNet18 feature network at 3×32×32: the weights eval.py, infer.py and
    export_model.py are given."""
    import paddle
    from core import programs
    paddle.enable_static()
    feature_program = programs.build_feature_program("ResNet18", 0, (3, 32, 32))
    paddle.static.Executor(paddle.CPUPlace()).run(feature_program.startup)
    prefix = str(tmp_path_factory.mktemp("weights") / "resnet18")
    paddle.static.save(feature_program.program, prefix)
    return prefix + ".pdparams"


@pytest.fixture
def trained_tiny_program():
    """tiny_program's network after one training step, so that velocities and statistics are not at their initial
    values: (program, startup, executor)."""
    from tiny_program import build_tiny_program
    tiny = build_tiny_program()
    tiny.train_step()
    return tiny.program, tiny.startup, tiny.executor


@pytest.fixture(scope="module", params=["c_pass", "numpy_passes"])
def selection_pass(request):
    """The blocks' selection (core/similarity.py) on the C pass, then on NumPy's passes, for a whole module each: the
    module's tests run twice (module scope, because hypothesis's tests take no function-scoped fixture)."""
    from core import native_build, select_kernel
    with native_build.switched(request.param == "c_pass"):
        if request.param == "c_pass" and select_kernel.load() is None:
            pytest.skip("the C selection pass could not be built here")
        yield request.param
