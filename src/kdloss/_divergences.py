"""The divergence table (Python side): one row per divergence kdloss computes.

A row names the divergence, the code the kernel knows it by, its parameters (defaults and
ranges), its oracle (a per-row float64 function in ``kdloss.reference``) and a one-line summary.
Front ends resolve a user's choice with :func:`resolve_divergence`; the engine
(``kdloss._engine``) hands ``kernel_code`` and the parameters to the kernel.

Adding a divergence on the Python side is one row in ``DIVERGENCES`` plus its oracle in
``kdloss.reference`` (the C side has its own table row; see README "Layout"). Its parameters
come from the keyword arguments of :func:`resolve_divergence` (add one there if it is new).

Hinton's loss mixes a divergence with a cross-entropy on hard labels; its two terms are data
in ``HINTON_TERMS`` (the cross-entropy takes labels, not a teacher, so it is not a divergence).
"""

import dataclasses
import math
from collections.abc import Callable

from . import reference
from ._validation import plain, real_scalar


@dataclasses.dataclass(frozen=True, eq=False)
class Divergence:
    """One divergence ``D(P || Q)`` between ``P = softmax(teacher / T)`` and ``Q = softmax(student / T)``.

    name: what users pass (``divergence="kl"``).
    kernel_code: the divergence's code in the kernel's table.
    parameters: parameter name -> default value.
    parameter_ranges: parameter name -> ``(lo, hi)``, both included.
    oracle: ``oracle(student, teacher, temperature, **parameters)``: ``T^2 * D`` per row in
        float64 (shape ``logits.shape[:-1]``), special values included; in ``kdloss.reference``.
    summary: one line, for messages and docs.
    """

    name: str
    kernel_code: int
    parameters: dict[str, float]
    parameter_ranges: dict[str, tuple[float, float]]
    oracle: Callable
    summary: str


DIVERGENCES = {
    "kl": Divergence(
        name="kl",
        kernel_code=0,
        parameters={},
        parameter_ranges={},
        oracle=reference.kl_rows,
        summary="forward KL: T^2 * KL(softmax(teacher/T) || softmax(student/T))",
    ),
}


def resolve_divergence(name="kl", beta=None):
    """``(Divergence, parameters)``: the row called ``name`` and every parameter's value (the
    given one, checked against its range, or the default). A parameter left at None is not
    given. ValueError names the divergence and what it accepts; TypeError for a non-number."""
    divergence = DIVERGENCES.get(name) if isinstance(name, str) else None
    if divergence is None:
        raise ValueError(f"divergence must be one of {', '.join(map(repr, DIVERGENCES))}; got {plain(name)!r}")
    given = {key: value for key, value in {"beta": beta}.items() if value is not None}
    unknown = [key for key in given if key not in divergence.parameters]
    if unknown:
        accepts = (f"takes {', '.join(divergence.parameters)}" if divergence.parameters
                   else "takes no parameters")
        got = ", ".join(f"{key}={plain(given[key])!r}" for key in unknown)
        raise ValueError(f"divergence {divergence.name!r} ({divergence.summary}) {accepts}; got {got}")
    parameters = {}
    for key, default in divergence.parameters.items():
        value = real_scalar(given.get(key, default), key)
        lo, hi = divergence.parameter_ranges[key]
        if not (math.isfinite(value) and lo <= value <= hi):
            raise ValueError(
                f"{key} of divergence {divergence.name!r} must be in [{lo}, {hi}], got {plain(given[key])!r}"
            )
        parameters[key] = value
    return divergence, parameters


@dataclasses.dataclass(frozen=True, eq=False)
class LossTerm:
    """One term of Hinton's loss, ``alpha * divergence + (1 - alpha) * cross_entropy``.

    weight: the factor in front of the term, in terms of ``alpha``.
    at_temperature: True when the term is computed at ``T``, False at ``T = 1``.
    needs: what the term reads besides the student's logits.
    oracle: its per-row float64 function in ``kdloss.reference`` (None: the divergence's own).
    """

    name: str
    weight: str
    at_temperature: bool
    needs: str
    oracle: Callable | None
    summary: str


HINTON_TERMS = {
    "divergence": LossTerm(
        name="divergence", weight="alpha", at_temperature=True, needs="teacher logits", oracle=None,
        summary="the chosen divergence's row, T^2 * D(P || Q) (the kernel's kl_weight)",
    ),
    "cross_entropy": LossTerm(
        name="cross_entropy", weight="1 - alpha", at_temperature=False, needs="labels",
        oracle=reference.cross_entropy_rows,
        summary="logsumexp(student) - student[label] at T = 1, 0 for ignored rows (the kernel's ce_weight)",
    ),
}
