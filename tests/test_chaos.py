"""The chaos test: a tiny training SIGKILLed at ten random moments, each time restarted at once with the same command
(--checkpoint=auto), logs the same losses and ends with the same parameters as the training left alone, to the bit.
bench/chaos.py runs the same loop for longer (docs/failures.md reports 50 kills)."""
import numpy as np
import pytest

from bench_tools import load_bench, table_rows

KILLS = 10
ITERATIONS = 8


@pytest.fixture(scope="module")
def chaos():
    return load_bench("chaos")


@pytest.fixture(scope="module")
def result(chaos, toy_root, tmp_path_factory):
    return chaos.run_chaos(toy_root, str(tmp_path_factory.mktemp("chaos")), kills=KILLS, iterations=ITERATIONS,
                           seed=0)


def test_ten_kills_and_immediate_restarts_change_nothing(result):
    assert result.kills == KILLS and not result.failed, result.failed
    assert result.landed["start-up"] and result.landed["step"] + result.landed["save"]
    assert sorted(result.reference) == list(range(1, ITERATIONS + 1))
    assert not result.conflicts  # an iteration trained again logged what it logged the first time
    assert result.losses == result.reference
    (variables, state), (reference_variables, reference_state) = result.final, result.reference_final
    assert state == reference_state and state["iteration"] == ITERATIONS
    assert sorted(variables) == sorted(reference_variables) and len(variables) > 100
    for name, value in reference_variables.items():
        np.testing.assert_array_equal(variables[name], value, err_msg=name)
    assert not result.wrongly_resumed  # every restart took the newest complete checkpoint on disk
    last = result.runs[-1]  # a kill during training leaves at least one new checkpoint, which the last run resumes
    assert last.newest_before is not None and last.resumed_from() == last.newest_before
    assert result.leftovers == [] and result.orphaned == 0


def test_the_table_counts_the_kills_and_says_whether_the_runs_agree(chaos, result, capsys):
    chaos.print_table(result, ["train_pair.py", "--checkpoint=auto"])
    output = capsys.readouterr().out
    assert output.startswith("command: train_pair.py --checkpoint=auto\n")
    (row,) = table_rows(output, 11, "kills")
    assert row[0] == str(KILLS) and sum(int(cell) for cell in row[1:4]) == KILLS
    assert row[4] == str(len(result.runs)) and int(row[5]) == sum(len(run.losses()) for run in result.runs) - ITERATIONS
    assert row[7:] == ["yes", "yes", "yes", "0"]
