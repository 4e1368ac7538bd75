"""bench/reader_throughput.py end to end on tiny data sets: every configuration gets a row with a positive rate."""
import os

import pytest

from bench_tools import load_bench, table_rows


def test_tiny_run_prints_a_row_per_configuration_and_the_stages(tmp_path, capsys):
    bench = load_bench("reader_throughput")
    bench.main(["--workers=0,1,2", "--batch_size=4", "--batches=2", "--toy_batches=2", "--repeats=1",
                "--image_shape=3,32,32", "--toy_image_shape=3,16,16", "--large_size=48", "--large_classes=2",
                "--toy_classes=2", "--profile_images=4", "--work_dir=%s" % tmp_path])
    output = capsys.readouterr().out
    assert "CPUs: %d" % os.cpu_count() in output
    throughput = table_rows(output, 11, "data set")
    configurations = {(row[0], row[3], int(row[4])) for row in throughput}
    assert configurations == {(name, reader_name, workers) for name in ("toy", "SOP-sized")
                              for reader_name in ("train", "eval") for workers in (0, 1, 2)}
    assert all(float(row[5]) > 0 for row in throughput)
    assert {row[7] for row in throughput if row[4] == "1"} == {"1.00"}
    assert {(row[1], row[2]) for row in throughput if row[0] == "SOP-sized"} == {("48 px", "3x32x32")}
    assert len(table_rows(output, 3, "data set")) == 2 * 5


def test_negative_worker_count_is_a_flag_error(tmp_path, capsys):
    bench = load_bench("reader_throughput")
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--workers=-1", "--work_dir=%s" % tmp_path])
    assert stopped.value.code == 2
    assert "--workers" in capsys.readouterr().err
