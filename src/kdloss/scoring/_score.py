"""The scoring loop: per-row losses chunk by chunk, an exact running sum, a summary.

Each chunk is ``kdloss.kd_loss(student_rows, teacher_rows, T, reduction="none")``; the kernel
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


class ExactSum:
    """An exact running sum of floats, in memory that does not grow with the number of values.

    The state is a short list of floats whose exact (real-number) sum is the sum of everything
    added so far: each ``add`` replaces it by ``r1 = fsum(state + values)``, then
    ``r2 = fsum(state + values - r1)`` and so on until the remainder is exactly 0 (``fsum``
    rounds correctly, so a non-zero remainder never rounds to 0; two or three terms in
    practice). ``value`` is therefore ``math.fsum`` of every value ever added: independent of
    how the values were split into calls, and of their order.
    """

    def __init__(self):
        self._parts = []
        self.overflowed = False

    def add(self, values):
        """Add a list of finite floats."""
        if self.overflowed or not values:
            return
        terms = self._parts + list(values)
        parts = []
        try:
            while (remainder := math.fsum(terms + [-p for p in parts])) != 0.0:
                parts.append(remainder)
        except OverflowError:  # the exact sum left the float64 range
            self.overflowed = True
        self._parts = parts

    @property
    def value(self):
        return math.inf if self.overflowed else math.fsum(self._parts)


class Summary:
    """Row counts and the exact sum, fed one chunk of per-row losses at a time."""

    def __init__(self):
        self.rows = 0
        self.nan_rows = 0
        self.inf_rows = 0
        self.seconds = 0.0
        self._sum = ExactSum()

    def add(self, losses):
        values = np.asarray(losses, dtype=np.float64).ravel()
        nan = np.isnan(values)
        inf = np.isinf(values)
        self.rows += values.size
        self.nan_rows += int(nan.sum())
        self.inf_rows += int(inf.sum())
        self._sum.add(values[~(nan | inf)].tolist())

    @property
    def sum(self):
        return math.inf if self.inf_rows else self._sum.value

    @property
    def mean(self):
        if self.rows == 0:
            return 0.0  # as kd_loss: the mean of no rows is 0
        counted = self.rows - self.nan_rows
        return self.sum / counted if counted else math.nan


def chunk_losses(student, teacher, temperature, chunk_rows, num_threads):
    """Yield the per-row losses (1-D, output dtype) of rows ``0:chunk_rows``, ``chunk_rows:2 * chunk_rows`` ...

    Only one chunk of each input is mapped at a time: the views are dropped (and with them the
    memory maps) before the next chunk is read.
    """
    for start in range(0, student.rows, chunk_rows):
        stop = min(student.rows, start + chunk_rows)
        student_rows = student.read_rows(start, stop)
        teacher_rows = teacher.read_rows(start, stop)
        losses = kd_loss(student_rows, teacher_rows, temperature, reduction="none", num_threads=num_threads)
        del student_rows, teacher_rows
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
