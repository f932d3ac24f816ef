"""``kd_loss`` for Dask arrays: the same losses, computed block by block on any Dask scheduler.

Needs the ``[dask]`` extra (``pip install 'kdloss[dask]'``); ``import kdloss`` alone never
imports Dask.

How it maps onto Dask:

- Every block of rows is one task that calls :func:`kdloss.kd_loss` on that block
  (``dask.array.map_blocks``). A row needs all of its classes, so a class axis split into
  several chunks is first rechunked into one; the teacher is rechunked to the student's row
  chunks if they differ. Any row chunking works, also rows of unknown number (``x[mask]``), as
  long as student and teacher have the same row chunks (then no rechunking is needed).
- ``reduction="none"`` returns a lazy array of shape ``logits.shape[:-1]`` in the same dtype as
  the in-memory ``kd_loss`` (float32 for float16, bfloat16 and float32 inputs, float64 otherwise), bitwise
  equal to it: the kernel computes each row from that row alone.
- ``"sum"`` and ``"mean"`` (``"batchmean"``) return lazy 0-d float64 arrays. Each task returns
  ``kd_loss(block, reduction="sum")`` (float64, pairwise within the block) and its row count;
  the block sums are added with ``math.fsum`` (correctly rounded, in no particular order), so
  the result does not depend on task scheduling and equals the in-memory value to within
  summation rounding (bitwise when there is one block). NaN and inf follow ``kd_loss``: one NaN
  row makes the sum and mean NaN.
- Threads: a task runs the kernel with ``num_threads`` threads, and **``None`` means 1**. Dask
  already runs one task per worker thread at the same time, and the kernel releases the GIL, so
  one OpenMP thread per task fills the worker's cores without oversubscribing them (distributed's
  nanny sets ``OMP_NUM_THREADS=1`` in its workers for the same reason). To use bigger tasks with
  several threads each, start workers with fewer threads (``--nthreads 1``) and pass
  ``num_threads=K``: each task then uses K threads. Negative values count back from the
  worker's own default, as in :func:`kdloss.kd_loss`.
"""

from __future__ import annotations

try:
    import dask
    import dask.array as da
except ImportError as error:  # pragma: no cover - exercised by a test that hides dask
    raise ImportError(
        "kdloss.dask needs Dask; install the [dask] extra: pip install 'kdloss[dask]' "
        "(dask[array], distributed, zarr)"
    ) from error

import math

import numpy as np
from numpy.typing import ArrayLike

from . import _reduction
from . import kd_loss as _in_memory_kd_loss
from ._api import Reduction
from ._divergences import resolve_divergence
from ._typing import DivergenceName
from ._validation import (
    check_classes,
    check_num_threads,
    check_reduction,
    check_same_shape,
    check_temperature,
    logits_row,
    result_dtype,
)

__all__ = ["kd_loss"]


def _block_losses(student, teacher, temperature, num_threads, divergence, beta):
    return _in_memory_kd_loss(student, teacher, temperature, reduction="none", num_threads=num_threads,
                              divergence=divergence, beta=beta)


def _block_sum(student, teacher, temperature, num_threads, divergence, beta):
    rows = math.prod(teacher.shape[:-1])
    total = _in_memory_kd_loss(student, teacher, temperature, reduction="sum", num_threads=num_threads,
                               divergence=divergence, beta=beta)
    return total, rows


def _combine(partials, reduction):
    total = math.fsum(block_sum for block_sum, _ in partials)
    if reduction == "sum":
        return np.float64(total)
    return np.float64(_reduction.mean(total, sum(block_rows for _, block_rows in partials)))


def _as_dask_logits(logits, name):
    array = logits if isinstance(logits, da.Array) else da.asarray(logits)
    logits_row(array.dtype, name)  # TypeError for complex, object, string
    if array.ndim > 0 and math.isnan(array.shape[-1]):
        raise ValueError(
            f"{name} has a class axis of unknown size, which cannot be rechunked into one chunk; "
            "call .compute_chunk_sizes() on it first"
        )
    check_classes(array.shape, name)
    if array.numblocks[-1] > 1:
        array = array.rechunk({array.ndim - 1: -1})  # a row needs all of its classes
    return array


def _unknown(chunks):
    return any(math.isnan(size) for axis in chunks for size in axis)


def _same_chunks(a, b):
    """Equal chunks, an unknown (NaN) size matching an unknown one: blocks of rows that came
    from one array by the same selection (``x[mask]`` for both) line up."""
    return len(a) == len(b) and all(
        len(x) == len(y) and all(p == q or (math.isnan(p) and math.isnan(q)) for p, q in zip(x, y))
        for x, y in zip(a, b)
    )


def kd_loss(
    student_logits: da.Array | ArrayLike, teacher_logits: da.Array | ArrayLike, temperature: float = 1.0, *,
    reduction: Reduction = "mean", num_threads: int | None = None, divergence: DivergenceName = "kl",
    beta: float | None = None,
) -> da.Array:
    """:func:`kdloss.kd_loss` for Dask arrays, lazily: one task per block of rows.

    Parameters
    ----------
    student_logits, teacher_logits : dask.array.Array
        Of the same shape, with any chunking (anything else is wrapped as one chunk).
    temperature, reduction, divergence, beta
        As in :func:`kdloss.kd_loss` (the divergence and ``beta`` are checked here, before any
        task runs).
    num_threads : int, optional
        The threads *per task* (None: 1; see the module notes).

    Returns
    -------
    dask.array.Array
        Lazy: per-row losses for ``"none"``, a 0-d float64 array for ``"sum"`` and ``"mean"``.
        Errors in the arguments are raised here, before any task runs.

    Examples
    --------
    >>> import dask.array as da
    >>> import kdloss.dask
    >>> student = da.from_array([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]], chunks=(1, 3))
    >>> teacher = da.from_array([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]], chunks=(1, 3))
    >>> loss = kdloss.dask.kd_loss(student, teacher, temperature=2.0)  # lazy: nothing runs yet
    >>> float(loss.compute())
    0.6403
    >>> kdloss.dask.kd_loss(student, teacher, 2.0, reduction="none").compute()
    array([1.2806, 0.    ])
    >>> float(kdloss.dask.kd_loss(student, teacher, 2.0, divergence="jsd", beta=0.5).compute())
    0.1537
    """
    student = _as_dask_logits(student_logits, "student_logits")
    teacher = _as_dask_logits(teacher_logits, "teacher_logits")
    check_same_shape(student.shape, teacher.shape)  # rows of unknown number (NaN) match here
    temperature = check_temperature(temperature)
    reduction = check_reduction(reduction)
    threads = check_num_threads(num_threads) or 1  # errors now, not inside a task
    _, parameters = resolve_divergence(divergence, beta)
    beta = parameters.get("beta")  # the value it resolves to: each task resolves the same
    if not _same_chunks(teacher.chunks, student.chunks):
        if _unknown(student.chunks) or _unknown(teacher.chunks):
            raise ValueError(
                f"student chunks {student.chunks} and teacher chunks {teacher.chunks} differ and some row "
                "counts are unknown, so the teacher cannot be rechunked to the student's rows; call "
                ".compute_chunk_sizes() on both first"
            )
        teacher = teacher.rechunk(student.chunks)
    dtype = result_dtype(student.dtype, teacher.dtype)

    if reduction == "none":
        rows_ndim = student.ndim - 1
        return da.map_blocks(
            _block_losses, student, teacher, temperature, threads, divergence, beta,
            dtype=dtype, drop_axis=rows_ndim, meta=np.empty((0,) * rows_ndim, dtype),
            token="kdloss-kd-loss",
        )
    partials = [
        dask.delayed(_block_sum, pure=True)(s, t, temperature, threads, divergence, beta)
        for s, t in zip(student.to_delayed().ravel(), teacher.to_delayed().ravel())
    ]
    total = dask.delayed(_combine, pure=True)(partials, reduction)
    return da.from_delayed(total, shape=(), dtype=np.float64)
