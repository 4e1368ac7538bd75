"""native_build.py: a kernel is built once, under a lock, through a staging directory; and where the compiler fails,
each kernel's module warns once and the suite runs on the code it replaces (no compiler needed to test that)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from core import cpu_ops, metrics, native_build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def source(tmp_path, monkeypatch):
    monkeypatch.setenv("PADDLE_EXTENSION_DIR", str(tmp_path / "extensions"))
    path = tmp_path / "kernel.c"
    path.write_text("int one(void) { return 1; }\n")
    return str(path)


def test_built_once_for_each_version_of_the_source_and_flags(source):
    builds = []

    def compile_into(staging):
        assert os.path.basename(staging).endswith(".partial-%d" % os.getpid())
        builds.append(staging)
        open(os.path.join(staging, "kernel.so"), "w").close()

    directory = native_build.build_directory("kernel", [source], ["-O3"])
    assert os.path.dirname(directory) == os.environ["PADDLE_EXTENSION_DIR"]
    assert native_build.built(directory, compile_into, "a kernel") == directory
    assert native_build.built(directory, compile_into, "a kernel") == directory
    assert len(builds) == 1 and os.listdir(directory) == ["kernel.so"]
    assert native_build.build_directory("kernel", [source], ["-O2"]) != directory
    with open(source, "a") as text:
        text.write("int two(void) { return 2; }\n")
    assert native_build.build_directory("kernel", [source], ["-O3"]) != directory


def test_a_failed_or_killed_build_leaves_nothing_that_looks_finished(source):
    directory = native_build.build_directory("kernel", [source], [])
    os.makedirs(directory + ".partial-1")  # a build killed halfway

    def failing(staging):
        open(os.path.join(staging, "half.o"), "w").close()
        raise native_build.CompileError("kernel.c:1: error: expected ';'")

    with pytest.raises(native_build.CompileError, match="expected ';'"):
        native_build.built(directory, failing, "a kernel")
    assert sorted(os.listdir(os.path.dirname(directory))) == [os.path.basename(directory) + ".lock"]


def test_compile_error_quotes_the_first_error_line_else_the_last_line():
    output = "kernel.c: In function 'f':\nkernel.c:3:5: error: 'x' undeclared\nkernel.c:4:1: error: again\n"
    assert str(native_build.CompileError.from_output("cc", output, 1)) == "kernel.c:3:5: error: 'x' undeclared"
    assert str(native_build.CompileError.from_output("cc", "ld: cannot find -lfoo\ncollect2: failed\n", 1)) == \
        "collect2: failed"
    assert str(native_build.CompileError.from_output("/bin/false", "", 1)) == "/bin/false exited with status 1"


def test_switched_restores_the_environment(monkeypatch):
    monkeypatch.delenv(native_build.SWITCH, raising=False)
    with native_build.switched(False):
        assert not native_build.switched_on()
        with native_build.switched(True):
            assert native_build.switched_on()
        assert not native_build.switched_on()
    assert native_build.SWITCH not in os.environ and native_build.switched_on()


def run_without_a_compiler(script, tmp_path):
    env = dict(os.environ, CC="/bin/false", CXX="/bin/false", PADDLE_EXTENSION_DIR=str(tmp_path))
    env.pop(native_build.SWITCH, None)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # Nothing half-built is left to be taken for a finished build next time.
    assert [name for name in os.listdir(tmp_path) if not name.endswith(".lock")] == []
    return done


def test_without_a_compiler_training_warns_once_and_runs_on_paddles_kernels(tmp_path):
    script = ("import core, losses, paddle\n"
              "from core import cpu_ops, onednn, programs\n"
              "paddle.enable_static()\n"
              "loss = losses.ArcMarginLoss(class_dim=4)\n"
              "for _ in range(2):\n"
              "    program = programs.build_train_program('ResNet18', 0, (3, 32, 32), loss, 0.01, 1,\n"
              "                                           data_format=onednn.DATA_FORMAT).program\n"
              "    print(sum(op.name().startswith('custom_op.') for op in program.global_block().ops))\n")
    # What a build killed halfway left behind, to be cleared away by the next build.
    (tmp_path / (os.path.basename(cpu_ops._build_directory()) + ".partial-1")).mkdir()
    done = run_without_a_compiler(script, tmp_path)
    assert done.stdout.split() == ["0", "0"]
    warnings = [line for line in done.stderr.splitlines() if "could not build the suite's CPU kernels" in line]
    assert len(warnings) == 1 and "few-pixel convolutions run on Paddle's kernels" in warnings[0], done.stderr[-3000:]
    assert "/bin/false' failed" in warnings[0]  # the compiler's own error line says why


def test_without_a_compiler_the_metrics_warn_once_and_run_on_numpys_passes(tmp_path):
    script = ("import core, numpy as np\n"
              "from core import metrics\n"
              "rng = np.random.default_rng(4)\n"
              "features, labels = rng.standard_normal((300, 8)).astype(np.float32), rng.integers(0, 60, 300)\n"
              "for _ in range(2):\n"
              "    print(metrics.retrieval_metrics(features, labels)['map@r'])\n")
    done = run_without_a_compiler(script, tmp_path)
    rng = np.random.default_rng(4)
    features, labels = rng.standard_normal((300, 8)).astype(np.float32), rng.integers(0, 60, 300)
    assert done.stdout.split() == [repr(metrics.retrieval_metrics(features, labels)["map@r"])] * 2
    warnings = [line for line in done.stderr.splitlines() if "could not build the C selection pass" in line]
    assert len(warnings) == 1 and "metrics and top-k search run on NumPy's passes" in warnings[0], done.stderr[-3000:]
    assert "/bin/false exited with status 1" in warnings[0]
