"""Progress bars: shown with a count and an ETA on a terminal, absent from captured or piped output."""
import io
import os
import re
import sys
import time

import paddle

import infer
from core import programs
import reader
import train_elem
import utility

TINY = ["--model=ResNet18", "--image_shape=3,32,32", "--use_gpu=False", "--num_workers=0"]
# what tqdm draws: description, percentage, bar, count, [elapsed<remaining, rate]
BAR = r"%s: +\d+%%\|[^|]*\| *\d+/%d \[\d\d:\d\d<(\?|\d\d:\d\d), "


class Terminal(io.StringIO):
    """Stands in for stdout on an interactive terminal (isatty), keeping what was written for the test to read."""

    def isatty(self):
        return True


def on_terminal(monkeypatch):
    """Points stdout at a Terminal for the rest of the test; called in the test itself, after pytest's capture
    has taken stdout over (a fixture's replacement would be replaced in turn)."""
    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    return screen


def num_test_images(root):
    return len(reader.read_image_list(os.path.join(root, reader.TEST_LIST)).paths)


def test_bar_shows_count_and_eta_on_a_terminal(monkeypatch):
    terminal = on_terminal(monkeypatch)
    with utility.progress_bar(6, "work") as bar:
        for _ in range(6):
            time.sleep(0.03)
            bar.update(1)
    drawn = terminal.getvalue()
    assert re.search(BAR % ("work", 6), drawn)
    assert re.search(r"work: +\d+%\|[^|]*\| *[1-6]/6 \[\d\d:\d\d<\d\d:\d\d, ", drawn), "an ETA once under way"
    assert drawn.endswith("\r"), "cleared when done, so the next log line starts clean"


def test_bar_is_silent_when_stdout_is_not_a_terminal(capsys):
    with utility.progress_bar(6, "work") as bar:
        bar.update(6)
    assert capsys.readouterr() == ("", "")


def test_feature_extraction_counts_images(toy_root, monkeypatch):
    terminal = on_terminal(monkeypatch)
    paddle.enable_static()
    feature_program = programs.build_feature_program("ResNet18", 0, (3, 32, 32))
    executor = paddle.static.Executor(paddle.CPUPlace())
    executor.run(feature_program.startup)
    total = num_test_images(toy_root)
    features, labels = programs.extract_features(executor, feature_program,
                                                 reader.eval_batches(reader.read_list(toy_root, reader.TEST_LIST), 8,
                                                                     (3, 32, 32), num_workers=0),
                                                 num_images=total, description="test")
    assert features.shape == (total, 512) and len(labels) == total
    assert re.search(BAR % ("test", total), terminal.getvalue())


def test_infer_lines_stay_whole_around_the_bar(toy_root, monkeypatch):
    terminal = on_terminal(monkeypatch)
    infer.main(TINY + ["--data_dir=%s" % toy_root, "--batch_size=8"])
    screen = terminal.getvalue()
    total = num_test_images(toy_root)
    assert re.search(BAR % ("infer", total), screen)
    # what a terminal shows of each line is what follows its last carriage return
    shown = [line.rsplit("\r", 1)[-1] for line in screen.split("\n")]
    feature_lines = [line for line in shown if "-feature:" in line]
    assert len(feature_lines) == -(-total // 8)
    assert all(re.fullmatch(r"Test-\d+-feature: \[[-\d. e]+\]", line) for line in feature_lines)


def test_training_test_pass_shows_a_bar_and_keeps_the_log_format(toy_root, tmp_path, monkeypatch):
    terminal = on_terminal(monkeypatch)
    train_elem.main(TINY + ["--data_dir=%s" % toy_root, "--model_save_dir=%s" % tmp_path, "--loss_name=softmax",
                            "--class_dim=12", "--train_batch_size=6", "--test_batch_size=8", "--total_iter_num=1",
                            "--display_iter_step=1", "--test_iter_step=1", "--save_iter_step=1"])
    screen = terminal.getvalue()
    total = num_test_images(toy_root)
    assert re.search(BAR % ("test", total), screen)
    shown = [line.rsplit("\r", 1)[-1] for line in screen.split("\n")]
    assert any(re.fullmatch(r"\[[-\d: ]+\] trainbatch 1, lr 0.010000, loss [\d.]+, acc1 [\d.]+, acc5 [\d.]+, "
                            r"time [\d.]+ sec", line) for line in shown)
    assert any(re.fullmatch(r"\[[-\d: ]+\] test_img_num %d, trainbatch 1, test_recall [\d.]+" % total, line)
               for line in shown)
