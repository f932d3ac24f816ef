"""Interleaved sampling: every repeat times each peer once, so drift hits all of them alike."""

import gc
import time
from dataclasses import dataclass

import numpy as np

# A sample of a fast call loops it until the sample lasts this long (timeit's approach), so
# that the clock's resolution and the loop's overhead are negligible next to it.
MIN_SAMPLE_SECONDS = 0.02
# Pause between samples, untimed: OpenMP and XLA workers spin for a while after a parallel
# region; on few cores that spinning would steal time from whichever peer runs next.
SETTLE_SECONDS = 0.002


@dataclass(frozen=True)
class Stats:
    median: float  # seconds per call
    q1: float
    q3: float
    min: float
    calls_per_sample: int
    samples: tuple

    @property
    def iqr(self):
        return self.q3 - self.q1

    @classmethod
    def of(cls, seconds_per_call, calls_per_sample):
        values = np.asarray(seconds_per_call, dtype=np.float64)
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        return cls(float(median), float(q1), float(q3), float(values.min()), calls_per_sample, tuple(values.tolist()))


def calls_per_sample(call, min_seconds=None):
    """1, 2, 5, 10, 20, ... calls: the fewest whose loop lasts at least ``min_seconds``
    (``MIN_SAMPLE_SECONDS`` when None, read at each call)."""
    min_seconds = MIN_SAMPLE_SECONDS if min_seconds is None else min_seconds
    number = 1
    while True:
        if _time_loop(call, number) >= min_seconds:
            return number
        number = number * 5 // 2 if str(number).startswith("2") else number * 2


def _time_loop(call, number):
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as timeit: a collection in the middle of one peer's sample is noise
    try:
        start = time.perf_counter()
        for _ in range(number):
            call()
        return time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()


def _rotated(items, start):
    """``items`` from index ``start`` (modulo its length) round to the one before it."""
    start %= len(items)
    return items[start:] + items[:start]


def interleaved(calls, repeat, numbers, group=None):
    """Seconds per call, ``repeat`` samples each, round-robin over ``calls`` (a dict name -> call).

    The starting peer rotates every repeat, so no peer always runs right after the same one.
    ``group`` (a function of a name), unless None, keeps the calls of one group together in each
    round (say one library at several inputs): the groups take turns as single calls do, and
    within a group the first call rotates too. A call then follows its own kind, and finds the
    caches and the machine in the state its own library leaves them (a sweep that alternates
    libraries call by call measures each after another's memory traffic), while a slow minute
    still hits every group of the round.
    """
    names = list(calls)
    groups = {}
    for name in names:
        groups.setdefault(name if group is None else group(name), []).append(name)
    groups = list(groups.values())
    seconds = {name: [] for name in names}
    for r in range(repeat):
        for members in _rotated(groups, r):
            for name in _rotated(members, r):
                time.sleep(SETTLE_SECONDS)
                seconds[name].append(_time_loop(calls[name], numbers[name]) / numbers[name])
    return {name: Stats.of(seconds[name], numbers[name]) for name in names}
