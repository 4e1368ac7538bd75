"""Learning-rate schedules of the training program against their formulas, and their state across a resume."""
import math

import pytest

from core import programs


def learning_rates(scheduler, iterations):
    """The learning rate each iteration trains with, as trainer.TrainingRun.step reads and steps it."""
    rates = []
    for _ in range(iterations):
        rates.append(scheduler.last_lr)
        scheduler.step()
    return rates


def test_piecewise_decay_without_warm_up_is_the_originals():
    rates = learning_rates(programs.make_lr_scheduler(0.01, [3, 5]), 7)
    assert rates == pytest.approx([0.01, 0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001], rel=1e-12)


def test_warm_up_rises_linearly_then_piecewise_decay_keeps_its_absolute_iterations():
    rates = learning_rates(programs.make_lr_scheduler(0.1, [6, 8], warmup_iter_num=4), 10)
    expected = [0.1 * i / 4 for i in range(4)] + [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    assert rates == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("warmup", [0, 5])
def test_cosine_decay_follows_half_a_cosine_to_zero_at_the_last_iteration(warmup):
    total = 40
    scheduler = programs.make_lr_scheduler(0.2, [], "cosine_decay", warmup_iter_num=warmup, total_iter_num=total)
    rates = learning_rates(scheduler, total + 1)
    expected = [0.2 * i / warmup for i in range(warmup)]
    expected += [0.1 * (1 + math.cos(math.pi * i / (total - warmup))) for i in range(total - warmup + 1)]
    assert rates == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert rates[warmup] == pytest.approx(0.2) and rates[total] == pytest.approx(0, abs=1e-12)


def test_a_restored_schedule_continues_where_it_stopped():
    def make():
        return programs.make_lr_scheduler(0.2, [], "cosine_decay", warmup_iter_num=3, total_iter_num=20)

    straight = learning_rates(make(), 20)
    first = make()
    head = learning_rates(first, 2)  # stopped inside the warm-up
    second = make()
    second.set_state_dict(first.state_dict())
    middle = learning_rates(second, 9)
    third = make()
    third.set_state_dict(second.state_dict())
    assert head + middle + learning_rates(third, 9) == straight


def test_unknown_strategy():
    with pytest.raises(ValueError, match="strategy 'linear', not one of piecewise_decay, cosine_decay"):
        programs.make_lr_scheduler(0.1, [], "linear")
