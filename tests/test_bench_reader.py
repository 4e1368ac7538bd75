"""bench/reader_throughput.py end to end on tiny data sets: every configuration gets a row with a positive rate."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "reader_throughput.py")


def load_bench():
    spec = importlib.util.spec_from_file_location("reader_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(output, columns):
    """The cells of every Markdown row with `columns` cells, header and separator left out."""
    rows = []
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == columns and cells[0] not in ("data set", "---"):
            rows.append(cells)
    return rows


def test_tiny_run_prints_a_row_per_configuration_and_the_stages(tmp_path, capsys):
    bench = load_bench()
    bench.main(["--workers=0,1,2", "--batch_size=4", "--batches=2", "--toy_batches=2", "--repeats=1",
                "--image_shape=3,32,32", "--toy_image_shape=3,16,16", "--large_size=48", "--large_classes=2",
                "--toy_classes=2", "--profile_images=4", "--work_dir=%s" % tmp_path])
    output = capsys.readouterr().out
    assert "CPUs: %d" % os.cpu_count() in output
    throughput = table_rows(output, 11)
    configurations = {(row[0], row[3], int(row[4])) for row in throughput}
    assert configurations == {(name, reader_name, workers) for name in ("toy", "SOP-sized")
                              for reader_name in ("train", "eval") for workers in (0, 1, 2)}
    assert all(float(row[5]) > 0 for row in throughput)
    assert {row[7] for row in throughput if row[4] == "1"} == {"1.00"}
    assert {(row[1], row[2]) for row in throughput if row[0] == "SOP-sized"} == {("48 px", "3x32x32")}
    assert len(table_rows(output, 3)) == 2 * 5


def test_negative_worker_count_is_a_flag_error(tmp_path, capsys):
    bench = load_bench()
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--workers=-1", "--work_dir=%s" % tmp_path])
    assert stopped.value.code == 2
    assert "--workers" in capsys.readouterr().err
