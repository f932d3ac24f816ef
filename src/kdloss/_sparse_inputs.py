"""Validation of a sparse (top-k) teacher, shared by ``kdloss.sparse_kd_loss``, its oracle
(``kdloss.reference.sparse_kd_loss``), ``kdloss.torch.sparse_kd_loss`` and ``kdloss score``.

A sparse teacher row is ``k`` token ids (``teacher_indices``) and the teacher's values there
(``teacher_values``: log-probabilities or logits). A value of -inf is padding: the slot is left
out. What the kernel layer is handed (:class:`SparseTeacher`) has the leading axes merged into
rows, each row's ids sorted with its padding last, and the number of real slots per row.
"""

import dataclasses
import math

import numpy as np

from ._divergences import resolve_divergence
from ._validation import _reject_autograd_tensor, logits_row, plain

TAILS = ("renormalize", "zero", "bucket")
VALUE_KINDS = ("logprobs", "logits")
# values="logprobs" whose exps sum above this in a row are not log-probabilities (raw logits,
# most likely). The slack is far beyond rounding: bfloat16 log-probabilities of a top-k holding the
# whole mass sum to within 2^-9 log V (0.023 at V = 128256) of 1.
LOGPROB_SUM_LIMIT = 1.0 + 2.0**-4


@dataclasses.dataclass(frozen=True)
class SparseTeacher:
    """A validated sparse teacher, rows merged: ``ids`` (int64, ``(rows, k)``, each row's real ids
    sorted ascending, then its padding slots), ``values`` (float64, same order; -inf at padding),
    ``counts`` (int64, ``(rows,)``: real slots per row) and ``rows_shape`` (the leading axes)."""

    ids: np.ndarray
    values: np.ndarray
    counts: np.ndarray
    rows_shape: tuple


def check_tail(tail, values_kind):
    """``(tail, values_kind)`` checked: ValueError names the bad one (``"bucket"`` needs
    log-probabilities: the rest of the teacher's mass is unknown from logits)."""
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {', '.join(map(repr, TAILS))}; got {plain(tail)!r}")
    if values_kind not in VALUE_KINDS:
        raise ValueError(f"values must be one of {', '.join(map(repr, VALUE_KINDS))}; got {plain(values_kind)!r}")
    if tail == "bucket" and values_kind != "logprobs":
        raise ValueError("tail='bucket' needs values='logprobs' (the teacher's rest mass, 1 - sum exp(values), "
                         "is unknown from logits); use tail='renormalize' or tail='zero' with logits")
    return tail, values_kind


def check_sparse_divergence(divergence, beta, tail):
    """``(Divergence, parameters)`` of the divergence table, or ValueError where the divergence
    is infinite by construction with this tail: ``"zero"`` gives the teacher no mass outside its
    ids, where the student always has some."""
    row, parameters = resolve_divergence(divergence, beta)
    form = row.kernel_form(**parameters)
    if tail == "zero" and form.infinite_where_teacher_rules_out:
        raise ValueError(
            f"divergence {row.name!r} with tail='zero' is infinite by construction: the teacher has no mass "
            "outside its ids and the student has some there; use tail='bucket' or tail='renormalize'"
        )
    return row, parameters


def _row_name(rows_shape, flat_row):
    return tuple(int(i) for i in np.unravel_index(flat_row, rows_shape)) if rows_shape else ()


def check_sparse_teacher(teacher_indices, teacher_values, student_shape, values_kind, name="teacher"):
    """The sparse teacher as a :class:`SparseTeacher` for a student of ``student_shape``
    (``(..., V)``), its values of ``values_kind`` (checked by :func:`check_tail`). TypeError for a
    non-integer index or non-real value dtype; ValueError, naming the row, for shapes that do not
    match, an index outside ``[0, V)``, an id twice in a row (padding slots excepted) or, for
    ``"logprobs"``, probabilities that sum above ``LOGPROB_SUM_LIMIT``."""
    _reject_autograd_tensor(teacher_indices, f"{name}_indices")
    indices = np.asarray(teacher_indices)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"{name}_indices must hold integers (token ids), got dtype {indices.dtype}")
    _reject_autograd_tensor(teacher_values, f"{name}_values")
    values = np.asarray(teacher_values)
    logits_row(values.dtype, f"{name}_values")  # TypeError unless real numbers
    if indices.shape != values.shape:
        raise ValueError(
            f"{name}_indices and {name}_values must have the same shape, got {indices.shape} and {values.shape}"
        )
    if indices.ndim == 0 or indices.shape[-1] == 0:
        raise ValueError(f"{name}_indices must have at least one slot per row (shape (..., k), k >= 1), "
                         f"got shape {indices.shape}")
    student_shape = tuple(student_shape)
    if indices.shape[:-1] != student_shape[:-1]:
        raise ValueError(
            f"{name}_indices must have the student's leading axes: student {student_shape}, "
            f"{name}_indices {indices.shape} (shape (..., k))"
        )
    n_classes, k = student_shape[-1], indices.shape[-1]
    rows_shape = indices.shape[:-1]
    ids = indices.reshape(-1, k)
    bad = (ids < 0) | (ids >= n_classes)
    if bad.any():
        row, slot = np.unravel_index(np.argmax(bad), bad.shape)
        raise ValueError(
            f"{name}_indices must be in [0, {n_classes}); row {_row_name(rows_shape, row)} holds "
            f"{plain(ids[row, slot])} (slot {int(slot)})"
        )
    ids = ids.astype(np.int64, copy=False)
    with np.errstate(over="ignore"):
        vals = values.reshape(-1, k).astype(np.float64)
    padding = vals == -math.inf
    if values_kind == "logprobs":
        _check_probability_sums(vals, rows_shape, name)
    # Sorted by id, padding last (as ids n_classes + slot: beyond every real id, and distinct).
    key = np.where(padding, n_classes + np.arange(k, dtype=np.int64), ids)
    order = np.argsort(key, axis=-1, kind="stable")
    key = np.take_along_axis(key, order, axis=-1)
    twice = key[:, 1:] == key[:, :-1]
    if twice.any():
        row, slot = np.unravel_index(np.argmax(twice), twice.shape)
        raise ValueError(
            f"{name}_indices must be distinct within a row (padding slots, value -inf, excepted); row "
            f"{_row_name(rows_shape, row)} holds {plain(key[row, slot])} twice"
        )
    return SparseTeacher(
        ids=np.ascontiguousarray(np.take_along_axis(ids, order, axis=-1)),
        values=np.ascontiguousarray(np.take_along_axis(vals, order, axis=-1)),
        counts=np.ascontiguousarray(k - padding.sum(axis=-1, dtype=np.int64)),
        rows_shape=rows_shape,
    )


def _check_probability_sums(vals, rows_shape, name):
    """ValueError naming the first row whose exps sum above ``LOGPROB_SUM_LIMIT``. Rows holding NaN
    or +inf are left to the kernel (NaN rows, README "Sparse teachers")."""
    with np.errstate(invalid="ignore", over="ignore"):
        top = np.max(vals, axis=-1)
        shift = np.where(np.isfinite(top), top, 0.0)
        sums = np.exp(shift) * np.sum(np.exp(vals - shift[:, None]), axis=-1)
    bad = (sums > LOGPROB_SUM_LIMIT) & np.isfinite(top)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(
            f"{name}_values are log-probabilities (values='logprobs'), whose exps sum to at most 1; row "
            f"{_row_name(rows_shape, row)} sums to {sums[row]:.6g}: pass values='logits' for the teacher's logits"
        )


def teacher_rest_log(values, counts, n_classes):
    """``log r`` per row of ``"bucket"``, ``r = 1 - sum exp(values)`` over the real slots, as
    log1mexp of their log-sum-exp (no cancellation); -inf where rounding makes ``r <= 0`` and
    where the ids cover all ``n_classes`` (no rest bucket), and -inf for a row of padding only
    (the teacher then has no mass: a NaN row)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        top = np.max(values, axis=-1)
        shift = np.where(np.isfinite(top), top, 0.0)
        lse = shift + np.log(np.sum(np.exp(values - shift[:, None]), axis=-1))
        lse = np.where(top == np.inf, np.nan, lse)
        log_r = np.where(lse > -math.log(2.0), np.log(-np.expm1(lse)), np.log1p(-np.exp(lse)))
        log_r = np.where(lse >= 0.0, -np.inf, log_r)
    return np.where((counts >= n_classes) | (counts == 0), -np.inf, log_r)
