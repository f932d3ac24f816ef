"""The divergence table (Python side): one row per divergence kdloss computes.

A row names the divergence, the code the kernel knows it by, its parameters (defaults and
ranges), how the kernel computes it at given parameters (its ``kernel_form``: a row of the
kernel's divergence table and that row's weights), its oracle (a per-row float64 function in
``kdloss.reference``) and a one-line summary. Front ends resolve a user's choice with
:func:`resolve_divergence`; the engine (``kdloss._engine``) hands the kernel form to the kernel.

The kernel's table has three rows (``_simd/simd.h``): forward KL; a *mixture* row,
``c_P KL(P || M) + c_Q KL(Q || M)`` with ``M = lam P + (1 - lam) Q``, which covers reverse KL,
JSD(beta) and both skew KLs by its weights ``(lam, c_P, c_Q)``; and TVD. Where a divergence's
parameters make it exactly forward or reverse KL (``jsd`` at ``beta = 0`` and 1, the skew KLs at
``beta = 0``) it takes that form, so that the identity holds bit for bit. Reverse KL is computed
as forward KL of the exchanged pair (``KernelForm.exchanged``).

Adding a divergence on the Python side is one row in ``DIVERGENCES`` plus its oracle and its
gradient oracle in ``kdloss.reference`` (the C side has its own table row; see README "Layout"). Its parameters
come from the keyword arguments of :func:`resolve_divergence` (add one there if it is new).

Hinton's loss mixes a divergence with a cross-entropy on hard labels; its two terms are data
in ``HINTON_TERMS`` (the cross-entropy takes labels, not a teacher, so it is not a divergence).
"""

import dataclasses
import math
from collections.abc import Callable

from . import reference
from ._validation import plain, real_scalar

# Rows of the kernel's divergence table (simd.h's KD_KL, KD_MIXTURE, KD_TVD).
KERNEL_KL, KERNEL_MIXTURE, KERNEL_TVD = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class KernelForm:
    """How the kernel computes one divergence at given parameters.

    code: the row of the kernel's divergence table (``KERNEL_KL``, ``KERNEL_MIXTURE``, ``KERNEL_TVD``).
    weights: the mixture row's ``(lam, c_P, c_Q)``: ``c_P KL(P || M) + c_Q KL(Q || M)``,
        ``M = lam P + (1 - lam) Q`` (zeros for the other rows).
    exchanged: the same divergence as a form of the pair with student and teacher exchanged, or
        None. Reverse KL is forward KL with the roles exchanged: the engine then runs KL's one-pass
        row on the exchanged pair (same values and special values; KL's speed), except when a
        cross-entropy term reads the student's logits (Hinton's loss), where it takes this form.
    """

    code: int
    weights: tuple[float, float, float] = (0.0, 0.0, 0.0)
    exchanged: "KernelForm | None" = None

    @property
    def infinite_where_student_rules_out(self) -> bool:
        """+inf where the student rules out (P > 0, Q = 0) a class the teacher allows."""
        lam, c_p, _ = self.weights
        return self.code == KERNEL_KL or (self.code == KERNEL_MIXTURE and c_p > 0.0 and lam == 0.0)

    @property
    def infinite_where_teacher_rules_out(self) -> bool:
        """+inf where the teacher rules out (P = 0, Q > 0) a class the student allows."""
        lam, _, c_q = self.weights
        return self.code == KERNEL_MIXTURE and c_q > 0.0 and lam == 1.0


KL_FORM = KernelForm(KERNEL_KL)
REVERSE_KL_FORM = KernelForm(KERNEL_MIXTURE, (1.0, 0.0, 1.0), exchanged=KL_FORM)  # KL(Q || M), M = P


def _jsd_form(beta):
    if beta == 0.0:
        return KL_FORM  # TRL's and Liger's endpoint: KL(P || Q)
    if beta == 1.0:
        return REVERSE_KL_FORM
    return KernelForm(KERNEL_MIXTURE, (beta, beta, 1.0 - beta))


@dataclasses.dataclass(frozen=True, eq=False)
class Divergence:
    """One divergence ``D(P || Q)`` between ``P = softmax(teacher / T)`` and ``Q = softmax(student / T)``.

    name: what users pass (``divergence="kl"``).
    kernel_form: ``kernel_form(**parameters)``: its :class:`KernelForm` at those parameters.
    parameters: parameter name -> default value.
    parameter_ranges: parameter name -> ``(lo, hi)``, both included.
    oracle: ``oracle(student, teacher, temperature, **parameters)``: ``T^2 * D`` per row in
        float64 (shape ``logits.shape[:-1]``), special values included; in ``kdloss.reference``.
    gradient_oracle: ``gradient_oracle(student, teacher, temperature, **parameters)``:
        ``(T^2 D per row, d_student, d_teacher)`` in float64, unscaled (``d_s = T Q (g - E_Q[g])``,
        ``d_t = T P (f - E_P[f])``, ``g = dD/dQ``, ``f = dD/dP``), special values as the kernel's;
        in ``kdloss.reference``.
    summary: one line, for messages and docs.
    """

    name: str
    kernel_form: Callable[..., KernelForm]
    parameters: dict[str, float]
    parameter_ranges: dict[str, tuple[float, float]]
    oracle: Callable
    gradient_oracle: Callable
    summary: str


DIVERGENCES = {
    "kl": Divergence(
        name="kl",
        kernel_form=lambda: KL_FORM,
        parameters={},
        parameter_ranges={},
        oracle=reference.kl_rows,
        gradient_oracle=reference.kl_row_grads,
        summary="forward KL: T^2 * KL(P || Q), P = softmax(teacher/T), Q = softmax(student/T)",
    ),
    "reverse_kl": Divergence(
        name="reverse_kl",
        kernel_form=lambda: REVERSE_KL_FORM,
        parameters={},
        parameter_ranges={},
        oracle=reference.reverse_kl_rows,
        gradient_oracle=reference.reverse_kl_row_grads,
        summary="reverse KL: T^2 * KL(Q || P)",
    ),
    "jsd": Divergence(
        name="jsd",
        kernel_form=_jsd_form,
        parameters={"beta": 0.5},
        parameter_ranges={"beta": (0.0, 1.0)},
        oracle=reference.jsd_rows,
        gradient_oracle=reference.jsd_row_grads,
        summary=("generalized JSD: T^2 * (beta KL(P || M) + (1 - beta) KL(Q || M)), M = beta P + (1 - beta) Q; "
                 "KL(P || Q) at beta = 0, KL(Q || P) at beta = 1"),
    ),
    "skew_kl": Divergence(
        name="skew_kl",
        kernel_form=lambda beta: KL_FORM if beta == 0.0 else KernelForm(KERNEL_MIXTURE, (beta, 1.0, 0.0)),
        parameters={"beta": 0.1},
        parameter_ranges={"beta": (0.0, 1.0)},
        oracle=reference.skew_kl_rows,
        gradient_oracle=reference.skew_kl_row_grads,
        summary="skew KL: T^2 * KL(P || beta P + (1 - beta) Q)",
    ),
    "skew_reverse_kl": Divergence(
        name="skew_reverse_kl",
        kernel_form=lambda beta: REVERSE_KL_FORM if beta == 0.0 else KernelForm(KERNEL_MIXTURE, (1.0 - beta, 0.0, 1.0)),
        parameters={"beta": 0.1},
        parameter_ranges={"beta": (0.0, 1.0)},
        oracle=reference.skew_reverse_kl_rows,
        gradient_oracle=reference.skew_reverse_kl_row_grads,
        summary="skew reverse KL: T^2 * KL(Q || beta Q + (1 - beta) P)",
    ),
    "tvd": Divergence(
        name="tvd",
        kernel_form=lambda: KernelForm(KERNEL_TVD),
        parameters={},
        parameter_ranges={},
        oracle=reference.tvd_rows,
        gradient_oracle=reference.tvd_row_grads,
        summary="total variation: T^2 * (1/2) sum |P - Q|",
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
