"""What the tests know of each divergence beyond its registry row (``kdloss._divergences``):
one ``DivergenceCase`` per row of ``DIVERGENCES``, under the same name.

Table-driven tests take the registry's rows (the ``divergence`` fixture of conftest.py) and
look their case up here, so a new divergence is tested by adding its row here, not test code;
``test_tables.py`` fails while a registry row has no case.
"""

import dataclasses
import math
from collections.abc import Callable

from exact_reference import exact_kd_grad, exact_kd_loss
from gradient_checks import kd_error_scales

import kdloss

inf, nan = math.inf, math.nan


@dataclasses.dataclass(frozen=True)
class DivergenceCase:
    """loss, loss_and_grad: the public functions that compute the divergence (signature of
        ``kdloss.kd_loss`` / ``kdloss.kd_loss_and_grad``; ``divergence=`` arrives with issue 11).
    exact: ``exact(student_row, teacher_row, T)``: ``T^2 D`` of one row in mpmath (lists in).
    exact_grad: ``exact_grad(student_row, teacher_row, T)``: ``(d_student, d_teacher)``, mpf lists.
    gradient_error_scales: per element, the scales of a double computation's rounding error of
        ``(d_student, d_teacher)`` (see gradient_checks.py).
    special_rows: name -> (student row, teacher row, T -> T^2 D). Placeholders "H", "-H" stand
        for a huge finite logit of the input dtype (see test_special_values.py).
    huge_rows: the same with huge finite logits; the expected value is ``f(T, H)``, exact (a
        huge float16 logit is only ~8e3).
    """

    loss: Callable
    loss_and_grad: Callable
    exact: Callable
    exact_grad: Callable
    gradient_error_scales: Callable
    special_rows: dict
    huge_rows: dict


KL = DivergenceCase(
    loss=kdloss.kd_loss,
    loss_and_grad=kdloss.kd_loss_and_grad,
    exact=exact_kd_loss,
    exact_grad=exact_kd_grad,
    gradient_error_scales=kd_error_scales,
    special_rows={
        "teacher -inf masks its class": ([0, 0, 0], [-inf, 0, 0], lambda T: T**2 * math.log(1.5)),
        "masked class, student large there": (
            [5, 0, 0], [-inf, 0, 0], lambda T: T**2 * math.log((math.exp(5 / T) + 2) / 2)
        ),
        "both -inf on one class": ([-inf, 0, 0], [-inf, 0, 0], lambda T: 0.0),
        "both -inf on one class, rest differs": ([-inf, 1, 0], [-inf, 0, 1], lambda T: T * math.tanh(0.5 / T)),
        "student -inf, teacher finite": ([-inf, 0, 0], [0, 0, 0], lambda T: inf),
        "student -inf, teacher finite but negligible": ([-inf, 0, 0], [-1e4, 0, 0], lambda T: inf),
        "teacher all -inf": ([0, 0, 0], [-inf, -inf, -inf], lambda T: nan),
        "both all -inf": ([-inf, -inf, -inf], [-inf, -inf, -inf], lambda T: nan),
        "teacher +inf": ([0, 0, 0], [inf, 0, 0], lambda T: nan),
        "student +inf": ([inf, 0, 0], [0, 0, 0], lambda T: nan),
        "student +inf on a masked class": ([inf, 0, 0], [-inf, 0, 0], lambda T: nan),
        "both +inf": ([inf, 0, 0], [inf, 0, 0], lambda T: nan),
        "teacher NaN": ([0, 0, 0], [0, nan, 0], lambda T: nan),
        "student NaN": ([0, 0, nan], [0, 0, 0], lambda T: nan),
        "student NaN on a masked class": ([nan, 0, 0], [-inf, 0, 0], lambda T: nan),
        "teacher NaN, student -inf": ([-inf, 0, 0], [nan, 0, 0], lambda T: nan),
        "student all -inf": ([-inf, -inf, -inf], [0, 1, 0], lambda T: inf),
        "one class, student -inf": ([-inf], [3], lambda T: inf),
        "one class": ([7], [-3], lambda T: 0.0),
        "one class, huge": (["H"], ["-H"], lambda T: 0.0),
    },
    huge_rows={
        "huge, different argmax": ([0, "H"], ["H", 0], lambda T, H: T * H * math.tanh(H / (2 * T))),
        "huge, same argmax": (["H", "-H", 0], ["H", 0, "-H"], lambda T, H: 0.0),
        "huge, identical": (["H", "-H"], ["H", "-H"], lambda T, H: 0.0),
        "huge student on a masked class": (  # T^2 log((e^(H/T) + 2) / 2)
            ["H", 0, 0], [-inf, 0, 0], lambda T, H: T * H + T**2 * (math.log1p(2 * math.exp(-H / T)) - math.log(2))
        ),
        "huge with a masked class": (["H", "H", 0], [-inf, "H", 0], lambda T, H: T**2 * math.log(2)),
    },
)

CASES = {"kl": KL}
