"""Helpers shared by the tests that run the scripts in this process: tiny flags, in-process runs, the one-line error."""
import os

import reader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model=ResNet18", "--image_shape=3,32,32", "--use_gpu=False"]


def train_flags(data_dir, save_dir, loss_name="eml", iterations=2, **extra):
    flags = TINY + ["--data_dir=%s" % data_dir, "--model_save_dir=%s" % save_dir, "--loss_name=%s" % loss_name,
                    "--train_batch_size=6", "--test_batch_size=16", "--total_iter_num=%d" % iterations,
                    "--display_iter_step=1", "--test_iter_step=0", "--save_iter_step=1000", "--lr=0.01",
                    "--num_workers=1"]
    return flags + ["--%s=%s" % item for item in extra.items()]


def run_main(script, flags, capsys):
    """Runs a script's main() in this process; returns its exit code, stdout and stderr."""
    try:
        script.main(flags)
        code = 0
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def error_line(output):
    """The one `error: ...` line a failed script printed, after making sure there is no traceback."""
    lines = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


def list_paths(data_dir, list_name):
    return reader.read_image_list(os.path.join(data_dir, list_name)).paths
