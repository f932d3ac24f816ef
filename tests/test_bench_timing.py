"""kdloss bench's sampling: loop sizes, round-robin order, statistics (no timings asserted)."""

import pytest

from kdloss.bench import timing
from kdloss.bench.timing import Stats, calls_per_sample, interleaved


def test_stats_are_medians_and_quartiles_per_call():
    stats = Stats.of([5.0, 1.0, 3.0, 2.0, 4.0], calls_per_sample=10)
    assert (stats.median, stats.q1, stats.q3, stats.min, stats.iqr) == (3.0, 2.0, 4.0, 1.0, 2.0)
    assert stats.calls_per_sample == 10 and stats.samples == (5.0, 1.0, 3.0, 2.0, 4.0)


def test_calls_per_sample_grows_1_2_5_10_until_a_sample_is_long_enough(monkeypatch):
    tried = []

    def fake_loop(call, number):
        tried.append(number)
        return number * 1e-3  # 1 ms per call

    monkeypatch.setattr(timing, "_time_loop", fake_loop)
    assert calls_per_sample(lambda: None, min_seconds=0.045) == 50
    assert tried == [1, 2, 5, 10, 20, 50]


def test_interleaved_runs_every_peer_once_per_repeat_rotating_the_first(monkeypatch):
    monkeypatch.setattr(timing, "SETTLE_SECONDS", 0.0)
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in "abc"}
    result = interleaved(calls, repeat=4, numbers={"a": 1, "b": 2, "c": 1})
    assert order == list("abbc" "bbca" "cabb" "abbc")
    assert {name: len(stats.samples) for name, stats in result.items()} == {"a": 4, "b": 4, "c": 4}
    assert result["b"].calls_per_sample == 2


def test_interleaved_groups_run_back_to_back_each_member_first_in_turn(monkeypatch):
    monkeypatch.setattr(timing, "SETTLE_SECONDS", 0.0)
    order = []
    names = [(eps, body) for eps in (1, 2) for body in ("kd", "torch")]  # as eps_sweep's keys
    calls = {name: (lambda name=name: order.append(name)) for name in names}
    result = interleaved(calls, repeat=2, numbers=dict.fromkeys(names, 1), group=lambda key: key[1])
    assert order == [(1, "kd"), (2, "kd"), (1, "torch"), (2, "torch"),  # round 0
                     (2, "torch"), (1, "torch"), (2, "kd"), (1, "kd")]  # round 1: both rotated
    assert all(len(stats.samples) == 2 for stats in result.values())


@pytest.mark.parametrize("repeat", [1, 3])
def test_interleaved_measures_real_calls(repeat):
    result = interleaved({"sum": lambda: sum(range(100))}, repeat, {"sum": 10})
    assert len(result["sum"].samples) == repeat and result["sum"].median > 0
