"""bench/train_throughput.py --quick end to end: every configuration gets a row of positive rates and its ratios."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "train_throughput.py")


def load_bench():
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(output, columns):
    rows = []
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == columns and cells[0] not in ("model", "---"):
            rows.append(cells)
    return rows


def test_quick_run_prints_a_row_per_loss_and_a_feature_row(tmp_path, capsys):
    bench = load_bench()
    bench.main(["--quick", "--torch=False", "--work_dir=%s" % tmp_path])
    output = capsys.readouterr().out
    training = table_rows(output, 13)
    assert [(row[0], row[1], row[3]) for row in training] == [("ResNet18", "3x32x32", "arcmargin"),
                                                              ("ResNet18", "3x32x32", "eml")]
    for row in training:
        fast, e2e, ratio, default, speedup, dynamic = (float(value) for value in row[4:10])
        assert min(fast, e2e, default, dynamic) > 0
        assert ratio == pytest.approx(e2e / fast, abs=0.01) and speedup == pytest.approx(fast / default, abs=0.1)
        assert row[11:] == ["-", "-"]  # no PyTorch asked for
    (features,) = table_rows(output, 8)
    assert features[:3] == ["ResNet18", "3x32x32", "4"] and float(features[3]) > 0 and float(features[4]) > 0


def test_sides_and_batch_sizes_must_pair_up(tmp_path, capsys):
    bench = load_bench()
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--sides=64,224", "--batch_sizes=8", "--work_dir=%s" % tmp_path])
    assert stopped.value.code == 2
    assert "--batch_sizes" in capsys.readouterr().err
