"""Reductions, in one place: how per-row losses become what a call returns, and how the
reduction scales each row's gradient.

Rules (README "Semantics", "Weights", "Hinton's loss and ignore_index"):

- ``"none"``: one value per row, in the result dtype (a float32 value beyond 3.4e38 is inf).
- ``"sum"``: the float64 sum of the rows in C order, pairwise (``np.sum``) within blocks of
  ``SUM_BLOCK_ROWS`` rows and the block sums added exactly (``math.fsum``): the order depends on
  the shape alone, never on threads or layout.
- ``"mean"`` (``"batchmean"``): the sum over the mean's denominator, the total weight of the rows
  that count (rows with weight > 0 and, with labels, a label that is not ignored; without
  weights or labels, the number of rows). 0.0 when the denominator is 0 (no rows count).
- Weights: a row's value is ``w * loss``, exactly 0 where ``w == 0`` even when the loss is NaN.
  A NaN row that counts makes ``"sum"`` and ``"mean"`` NaN.
- Gradients: a row's gradient of its own loss times ``grad_output * w / denominator``
  (``"mean"``), ``grad_output * w`` (``"sum"``) or ``grad_output[i] * w_i`` (``"none"``); a row
  left out (``w == 0``) gets exactly 0.
"""

import math

import numpy as np

SUM_BLOCK_ROWS = 1 << 15
# Blocks a BlockwiseSum buffers (8 MiB of float64 at most): one kernel call fills them all, so a
# call of up to a million rows is one parallel region, not one per block (on a busy machine,
# every region waits for its slowest thread).
BUFFER_BLOCKS = 32


def blockwise_sum(values):
    """The sum of a float64 array of per-row values in C order: pairwise within blocks of
    ``SUM_BLOCK_ROWS``, the block sums exactly. :class:`BlockwiseSum` adds the same way."""
    values = np.ravel(values)
    if values.size <= SUM_BLOCK_ROWS:  # one block: fsum of one value is that value
        return float(np.sum(values))
    return math.fsum(float(np.sum(values[i : i + SUM_BLOCK_ROWS])) for i in range(0, values.size, SUM_BLOCK_ROWS))


class BlockwiseSum:
    """:func:`blockwise_sum` of ``n_values`` values written a piece at a time into one reused
    buffer of at most ``BUFFER_BLOCKS`` blocks of ``SUM_BLOCK_ROWS`` values, so a sum needs no
    per-row array.

    ``space()`` is where the next values go (write a prefix of it), ``commit(n)`` takes the
    first ``n`` of them; ``value`` is the sum once all are in.
    """

    def __init__(self, n_values, buffer_blocks=BUFFER_BLOCKS):
        self._buffer = np.empty(min(buffer_blocks * SUM_BLOCK_ROWS, n_values), dtype=np.float64)
        self._filled = 0
        self._block_sums = []

    def space(self):
        return self._buffer[self._filled :]

    def _add_blocks(self, values):
        self._block_sums += [float(np.sum(values[i : i + SUM_BLOCK_ROWS]))
                             for i in range(0, values.size, SUM_BLOCK_ROWS)]

    def commit(self, n):
        self._filled += n
        if self._filled == self._buffer.size:
            self._add_blocks(self._buffer)
            self._filled = 0

    @property
    def value(self):
        self._add_blocks(self._buffer[: self._filled])
        self._filled = 0
        return math.fsum(self._block_sums)


def weighted(values, factors):
    """``factors * values`` per row, and exactly 0 where a factor is 0 (even for a NaN value)."""
    with np.errstate(invalid="ignore"):
        return np.where(factors != 0.0, factors * values, 0.0)


def kept_weights(rows_shape, weights, labels):
    """Each row's weight in the mean (float64, ``rows_shape``): ``weights`` (1 without), 0 where
    a label is ignored (negative after ``check_labels``). None when every row counts once."""
    if labels is None:
        return weights
    return np.where(labels >= 0, 1.0 if weights is None else weights, 0.0)


def mean_denominator(rows_shape, kept):
    """The mean's denominator: the number of rows, or the total of ``kept`` weights."""
    return float(math.prod(rows_shape)) if kept is None else float(np.sum(kept))


def mean(total, denominator):
    """``total / denominator``, and 0.0 when no row counts."""
    return total / denominator if denominator else 0.0


def float32_rounded_to_odd(values):
    """float64 ``values`` rounded to float32 toward zero, with the last bit set where inexact.

    float32 has more than twice float16's and bfloat16's precision plus two bits, so rounding
    this on to either gives the float64 value rounded once (round-to-odd; the kernel's
    ``kd_float_rounded_to_odd`` does the same for gradients).
    """
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore"):
        nearest = values.astype(np.float32)
    widened = nearest.astype(np.float64)
    inexact = (widened != values) & ~np.isnan(values)
    away_from_zero = inexact & (np.abs(widened) > np.abs(values))
    truncated = np.where(away_from_zero, np.nextafter(nearest, np.float32(0)), nearest)
    return np.asarray(truncated.view(np.uint32) | inexact.astype(np.uint32)).view(np.float32)


def as_result(losses, dtype, round_to_odd=False):
    """Per-row float64 losses in the result dtype (a float32 loss beyond 3.4e38 is inf); float32
    rounded to odd with ``round_to_odd`` (see ``float32_rounded_to_odd``)."""
    if round_to_odd and dtype == np.float32:
        return float32_rounded_to_odd(losses)
    with np.errstate(over="ignore"):
        return losses.astype(dtype, copy=False)


def reduce(losses, reduction, denominator, result_dtype, round_to_odd=False):
    """Per-row float64 losses (already weighted) reduced: an array of ``result_dtype`` for
    ``"none"``, a float otherwise."""
    if reduction == "none":
        return as_result(losses, result_dtype, round_to_odd)
    total = blockwise_sum(losses)
    return total if reduction == "sum" else mean(total, denominator)


def grad_scale(reduction, grad_output, denominator):
    """The factor every row's gradient is scaled by, besides its weight, for ``"sum"`` and
    ``"mean"``: ``grad_output`` (a float) or ``grad_output / denominator`` (0.0 when no row
    counts). ``"none"`` scales each row by its own ``grad_output``: 1.0 here."""
    if reduction == "none":
        return 1.0
    return grad_output if reduction == "sum" else mean(grad_output, denominator)


def row_factors(reduction, kept, grad_output):
    """The factor of each row's gradient, as an array (``kept``: each row's weight, 0 for a row
    left out): ``grad_output * w / sum(w)`` for "mean", ``grad_output * w`` for "sum",
    ``grad_output[i] * w_i`` for "none" (``grad_output`` None: all ones)."""
    if reduction == "none":
        return kept if grad_output is None else grad_output * kept
    return grad_scale(reduction, grad_output, float(np.sum(kept))) * kept


def scaled(grads, factors, kept):
    """Each row of ``grads`` times its factor; exactly 0 in a row left out (``kept`` 0), even a
    NaN row. A row that counts keeps its NaN under a factor of 0 (as autograd gives)."""
    with np.errstate(invalid="ignore"):
        return np.where(kept[..., None] != 0.0, factors[..., None] * grads, 0.0)
