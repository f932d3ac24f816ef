"""The scoring loop: per-row losses chunk by chunk, an exact running sum, a summary.

Each chunk is ``kdloss.kd_loss(student_rows, teacher_rows, T, reduction="none", divergence=...)``; the kernel
computes every row from that row alone, so the per-row losses are bitwise those of one
in-memory call, whatever the chunk size. The summary's ``sum`` is the correctly rounded sum of
every finite per-row loss (as written to the output, i.e. in the output dtype), kept exactly
across chunks by :class:`ExactSum`, so it too is the same bits for every chunk size and for
Dask. NaN rows are counted (``nan_rows``) and left out of ``sum`` and ``mean``; ``+inf`` rows
are counted (``inf_rows``) and make ``sum`` and ``mean`` infinite.
"""

import math
import time

import numpy as np

from .. import kd_loss

SLICE = 1 << 16  # values handled at once by the summary: its temporaries stay about 4 MB

# np.frexp's exponent of a finite, non-zero float64 is in [-1073, 1024] (2**-1074 = 0.5 * 2**-1073).
_EXPONENT_MIN, _EXPONENT_MAX = -1073, 1024
_BINS = _EXPONENT_MAX - _EXPONENT_MIN + 1
# Every float64 m * 2**(e - 53) below is a whole number of units of 2**-1126 (the smallest e - 53).
_UNIT_EXPONENT = _EXPONENT_MIN - 53


def exact_units(values):
    """The exact sum of ``values`` as a Python int, in units of ``2**-1126``.

    ``values``: a 1-D float64 array of finite values, at most ``2**26`` of them. Each value is
    ``m * 2**(e - 53)`` with an integer ``|m| < 2**53`` (``np.frexp``); ``m`` is split into a
    high half ``h = floor(m / 2**26)`` and a low half ``m - h * 2**26``, each below ``2**27``
    in magnitude. Summed per exponent (``np.bincount`` in float64), ``2**26`` halves stay below
    ``2**53``: every running sum is an integer that float64 holds exactly. Only these per-exponent
    sums (a few per binary exponent present, at most 4196) become Python ints, shifted to their
    place: no Python object per value.
    """
    mantissa, exponent = np.frexp(values)
    digits = mantissa * 2.0**53
    high = np.floor(digits * 2.0**-26)
    low = digits - high * 2.0**26
    bins = exponent - _EXPONENT_MIN
    del mantissa, exponent, digits
    high_sums = np.bincount(bins, weights=high, minlength=_BINS)
    low_sums = np.bincount(bins, weights=low, minlength=_BINS)
    total = 0
    for shift in np.flatnonzero(high_sums).tolist():
        total += int(high_sums[shift]) << (shift + 26)
    for shift in np.flatnonzero(low_sums).tolist():
        total += int(low_sums[shift]) << shift
    return total


class ExactSum:
    """An exact running sum of floats, in memory that does not grow with the number of values.

    The state is one Python int: the exact sum so far in units of ``2**-1126`` (every float64 is
    a whole number of them), a little over 2,100 bits at most. ``add`` takes an array of finite
    floats a slice at a time (:func:`exact_units`: vectorised). ``value`` is that integer over
    ``2**1126`` by Python's int division, which rounds correctly: it is ``math.fsum`` of every
    value ever added, independent of how the values were split into calls and of their order,
    and ``inf`` where the exact sum is beyond the float64 range.
    """

    def __init__(self):
        self._units = 0

    def add(self, values):
        """Add an array (or a sequence) of finite floats."""
        values = np.asarray(values, dtype=np.float64).ravel()
        for start in range(0, values.size, SLICE):
            self._units += exact_units(values[start:start + SLICE])

    @property
    def value(self):
        try:
            return self._units / (1 << -_UNIT_EXPONENT)
        except OverflowError:  # the exact sum is beyond the float64 range
            return math.inf if self._units > 0 else -math.inf


class Summary:
    """Row counts and the exact sum, fed one chunk of per-row losses at a time (a slice at a time)."""

    def __init__(self):
        self.rows = 0
        self.nan_rows = 0
        self.inf_rows = 0
        self.seconds = 0.0
        self._sum = ExactSum()

    def add(self, losses):
        losses = np.ravel(losses)
        for start in range(0, losses.size, SLICE):
            values = losses[start:start + SLICE].astype(np.float64)
            nan = np.isnan(values)
            inf = np.isinf(values)
            self.rows += values.size
            self.nan_rows += int(np.count_nonzero(nan))
            self.inf_rows += int(np.count_nonzero(inf))
            values[nan | inf] = 0.0
            self._sum.add(values)

    @property
    def sum(self):
        return math.inf if self.inf_rows else self._sum.value

    @property
    def mean(self):
        if self.rows == 0:
            return 0.0  # as kd_loss: the mean of no rows is 0
        counted = self.rows - self.nan_rows
        return self.sum / counted if counted else math.nan


def chunk_losses(student, teacher, temperature, chunk_rows, num_threads, divergence="kl", beta=None):
    """Yield the per-row losses (1-D, output dtype) of rows ``0:chunk_rows``, ``chunk_rows:2 * chunk_rows`` ...

    Only one chunk of each input is mapped at a time: the views are dropped (and with them the
    memory maps) before the next chunk is read.
    """
    for start in range(0, student.rows, chunk_rows):
        stop = min(student.rows, start + chunk_rows)
        student_rows = student.read_rows(start, stop)
        teacher_rows = teacher.read_rows(start, stop)
        losses = kd_loss(student_rows, teacher_rows, temperature, reduction="none", num_threads=num_threads,
                         divergence=divergence, beta=beta)
        del student_rows, teacher_rows
        yield losses


def sparse_chunk_losses(student, teacher, temperature, chunk_rows, num_threads, tail, values, divergence="kl",
                        beta=None):
    """As :func:`chunk_losses`, for a sparse teacher (``_sparse_teacher.SparseTeacherSource``):
    ``kdloss.sparse_kd_loss`` of each chunk (with ``divergence`` and ``beta`` of the divergence
    table). A bad index (out of range, twice in a row) is an InputError naming the row (its flat
    index over the leading axes)."""
    from .. import sparse_kd_loss
    from ._errors import InputError

    for start in range(0, student.rows, chunk_rows):
        stop = min(student.rows, start + chunk_rows)
        student_rows = student.read_rows(start, stop)
        indices = teacher.indices.read_rows(start, stop)
        teacher_values = teacher.values.read_rows(start, stop)
        try:
            losses = sparse_kd_loss(student_rows, indices, teacher_values, temperature, values=values, tail=tail,
                                    divergence=divergence, beta=beta, reduction="none", num_threads=num_threads)
        except ValueError as error:
            raise InputError(f"teacher {teacher.spec}, rows {start}:{stop} (row numbers below count from "
                             f"{start}): {error}") from None
        del student_rows, indices, teacher_values
        yield losses


def run(chunks, writer=None, progress=None):
    """Consume ``chunks`` of per-row losses into a :class:`Summary` (and ``writer``); time it."""
    summary = Summary()
    began = time.perf_counter()
    for losses in chunks:
        summary.add(losses)
        if writer is not None:
            writer.write(losses)
        if progress is not None:
            progress.update(losses.size)
    summary.seconds = time.perf_counter() - began
    return summary
