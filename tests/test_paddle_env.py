"""The set-up before Paddle is imported: all cores, and none of Paddle's start-up noise."""
import os
import subprocess
import sys

import core


def test_scripts_start_without_paddles_thread_warning_and_with_all_cores():
    environment = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    result = subprocess.run([sys.executable, "-c", "import core, os; print(os.environ['OMP_NUM_THREADS'])"],
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(core.__file__))), env=environment,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(os.cpu_count())
    assert "OMP_NUM_THREADS" not in result.stderr


def test_every_command_starts_quietly():
    """`--help` of every command prints its help and nothing on stderr: Paddle is imported after the set-up, so no
    thread warning, no warning of Paddle's own."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(core.__file__)))
    environment = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    for script in ("train_elem.py", "train_pair.py", "eval.py", "infer.py", "export_model.py", "search.py", "demo.py",
                   "data/prepare_folder.py"):
        result = subprocess.run([sys.executable, os.path.join(root, script), "--help"], cwd=root, env=environment,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0 and "usage:" in result.stdout, (script, result.stderr)
        assert result.stderr == "", (script, result.stderr)


def test_importing_the_suite_keeps_pythons_signal_handlers_not_paddles():
    """A notebook, a test or a data script importing core keeps its Ctrl-C, and a SIGTERM ends it quietly: the
    operating system's SIGTERM handler is the default again, not the one Paddle's import installs, which prints a
    "FatalError ... C++ Traceback" report."""
    script = ("import ctypes, signal, core\n"
              "class Action(ctypes.Structure):\n"
              "    _fields_ = [('handler', ctypes.c_void_p), ('mask', ctypes.c_ulong * 16), ('flags', ctypes.c_int), "
              "('restorer', ctypes.c_void_p)]\n"
              "action = Action()\n"
              "ctypes.CDLL(None).sigaction(signal.SIGTERM, None, ctypes.byref(action))\n"
              "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler, action.handler is None)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(core.__file__))))
    assert result.stdout == "True True\n", result.stderr
