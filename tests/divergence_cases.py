"""What the tests know of each divergence beyond its registry row (``kdloss._divergences``):
one ``DivergenceCase`` per row of ``DIVERGENCES``, under the same name (at the row's default
parameters), and more cases of a row at other parameters ("jsd(beta=0.1)").

Table-driven tests take these cases (the ``case`` fixture of conftest.py), so a new divergence
is tested by adding its case here, not test code; ``test_tables.py`` fails while a registry row
has no case.
"""

import dataclasses
import functools
import math
from collections.abc import Callable

from exact_reference import exact_divergence, exact_divergence_grad, exact_kd_grad, exact_kd_loss
from gradient_checks import divergence_error_scales, kd_error_scales

import kdloss
from kdloss._divergences import DIVERGENCES, resolve_divergence

inf, nan = math.inf, math.nan


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity (test_tables caches per case)
class DivergenceCase:
    """divergence: the registry row's name; beta: the parameter given (None: the row's default).
    loss, loss_and_grad: the public functions at this divergence (signature of ``kdloss.kd_loss``
        / ``kdloss.kd_loss_and_grad``).
    exact: ``exact(student_row, teacher_row, T)``: ``T^2 D`` of one row in mpmath (lists in).
    exact_grad: ``exact_grad(student_row, teacher_row, T)``: ``(d_student, d_teacher)``, mpf lists.
    gradient_error_scales: per element, the scales of a double computation's rounding error of
        ``(d_student, d_teacher)`` (see gradient_checks.py).
    special_rows: name -> (student row, teacher row, T -> T^2 D). Placeholders "H", "-H" stand
        for a huge finite logit of the input dtype (see test_special_values.py).
    huge_rows: the same with huge finite logits; the expected value is ``f(T, H)``, exact (a
        huge float16 logit is only ~8e3).
    masks: the sides whose logits "masked" inputs set to -inf on some classes (test_tables.py):
        "teacher" (every fourth class from 1), "student" (every fourth from 3); where the
        divergence stays finite.
    special_ulps: how close a special row's finite value is to the exact one, in units of the
        result dtype's eps (a mixture's terms are logs of ratios near 1: a few ulps of them).
    """

    divergence: str
    beta: float | None
    loss: Callable
    loss_and_grad: Callable
    exact: Callable
    exact_grad: Callable
    gradient_error_scales: Callable
    special_rows: dict
    huge_rows: dict
    masks: tuple = ("teacher",)
    special_ulps: float = 32

    @property
    def row(self):
        """The registry row."""
        return DIVERGENCES[self.divergence]

    @property
    def parameters(self):
        """Every parameter's value, as the front ends resolve them."""
        return resolve_divergence(self.divergence, self.beta)[1]

    def oracle(self, student, teacher, temperature):
        """The registry's oracle at this case's parameters."""
        return self.row.oracle(student, teacher, temperature, **self.parameters)

    def gradient_oracle(self, student, teacher, temperature):
        """The registry's gradient oracle at this case's parameters."""
        return self.row.gradient_oracle(student, teacher, temperature, **self.parameters)


KL = DivergenceCase(
    divergence="kl",
    beta=None,
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



# ---------------------------------------------------------------------------------------------
# The other divergences: special rows from the definitions, values from the exact reference
# ---------------------------------------------------------------------------------------------

# Rows no divergence defines: a NaN or +inf logit anywhere, or neither side allowing a class.
UNDEFINED_ROWS = {
    "teacher +inf": ([0, 0, 0], [inf, 0, 0]),
    "student +inf": ([inf, 0, 0], [0, 0, 0]),
    "student +inf on a masked class": ([inf, 0, 0], [-inf, 0, 0]),
    "both +inf": ([inf, 0, 0], [inf, 0, 0]),
    "teacher NaN": ([0, 0, 0], [0, nan, 0]),
    "student NaN": ([0, 0, nan], [0, 0, 0]),
    "student NaN on a masked class": ([nan, 0, 0], [-inf, 0, 0]),
    "teacher NaN, student -inf": ([-inf, 0, 0], [nan, 0, 0]),
    "both all -inf": ([-inf, -inf, -inf], [-inf, -inf, -inf]),
}
# Rows with masks (-inf), negligible classes, one class, or huge logits ("H"): each divergence's value is its
# definition's, +inf where one side rules out a class the other allows and that counts (KL(X || Y)
# with Y = 0 where X > 0), NaN where a side allows no class at all.
MASKED_ROWS = {
    "teacher -inf masks its class": ([0, 0, 0], [-inf, 0, 0]),
    "masked class, student large there": ([5, 0, 0], [-inf, 0, 0]),
    "student -inf masks its class": ([-inf, 0, 0], [0, 0, 0]),
    "masked class, teacher large there": ([-inf, 0, 0], [5, 0, 0]),
    "both -inf on one class": ([-inf, 0, 0], [-inf, 0, 0]),
    "both -inf on one class, rest differs": ([-inf, 1, 0], [-inf, 0, 1]),
    "student -inf, teacher finite but negligible": ([-inf, 0, 0], [-1e4, 0, 0]),
    "teacher -inf, student finite but negligible": ([-1e4, 0, 0], [-inf, 0, 0]),
    # Reverse KL ~ 8192 / (3 T); the mirror, KL ~ 8192 / (3 T).
    "teacher negligible where the student is not": ([0, 0, 0], [-8192, 0, 0]),
    "student negligible where the teacher is not": ([-8192, 0, 0], [0, 0, 0]),
    "teacher all -inf": ([0, 0, 0], [-inf, -inf, -inf]),
    "student all -inf": ([-inf, -inf, -inf], [0, 1, 0]),
    "one class": ([7], [-3]),
    "one class, huge": (["H"], ["-H"]),
    "one class, student -inf": ([-inf], [3]),
    "one class, teacher -inf": ([3], [-inf]),
    "huge student on a masked class": (["H", 0, 0], [-inf, 0, 0]),
    "huge teacher on a class the student masks": ([-inf, 0, 0], ["H", 0, 0]),
}
# The rows above where one side allows no class at all.
NO_CLASS_ROWS = {"teacher all -inf", "student all -inf", "one class, student -inf", "one class, teacher -inf"}
# Huge finite logits everywhere (every divergence but KL and reverse KL is bounded there).
HUGE_ROWS = {
    "huge, different argmax": ([0, "H"], ["H", 0]),
    "huge, same argmax": (["H", "-H", 0], ["H", 0, "-H"]),
    "huge, identical": (["H", "-H"], ["H", "-H"]),
    "huge with a masked class": (["H", "H", 0], [-inf, "H", 0]),
    "huge with a class the student masks": ([-inf, "H", 0], ["H", "H", 0]),
}


def _with_huge(values, huge):
    return [{"H": huge, "-H": -huge}.get(v, v) if isinstance(v, str) else v for v in values]


def _exact_value(exact, student, teacher):
    """``T -> float(exact)`` of a special row (its "H" placeholders at the float64 huge value;
    a row whose value depends on H goes to huge_rows)."""
    return lambda T: float(exact(_with_huge(student, 1e300), _with_huge(teacher, 1e300), T))


def case_of(divergence, beta=None, infinite=(), masks=("teacher", "student")):
    """The case of ``divergence`` at ``beta``: special rows from the tables above, NaN for the
    undefined ones, +inf for those named in ``infinite``, the exact value for the others, and
    every huge row that stays finite."""
    exact_beta = resolve_divergence(divergence, beta)[1].get("beta")  # the default where not given
    exact = functools.partial(exact_divergence, divergence, beta=exact_beta)
    special = {name: (s, t, lambda T: nan) for name, (s, t) in UNDEFINED_ROWS.items()}
    for name, (s, t) in MASKED_ROWS.items():
        if name in infinite:
            special[name] = (s, t, lambda T: inf)
        elif name in NO_CLASS_ROWS:
            special[name] = (s, t, lambda T: nan)
        else:
            special[name] = (s, t, _exact_value(exact, s, t))
    huge = {name: (s, t, lambda T, H, s=s, t=t: float(exact(_with_huge(s, H), _with_huge(t, H), T)))
            for name, (s, t) in HUGE_ROWS.items()}
    given = {} if beta is None else {"beta": beta}
    return DivergenceCase(
        divergence=divergence,
        beta=beta,
        loss=functools.partial(kdloss.kd_loss, divergence=divergence, **given),
        loss_and_grad=functools.partial(kdloss.kd_loss_and_grad, divergence=divergence, **given),
        exact=exact,
        exact_grad=functools.partial(exact_divergence_grad, divergence, beta=exact_beta),
        gradient_error_scales=divergence_error_scales,
        special_rows=special,
        huge_rows=huge,
        masks=masks,
        special_ulps=256,  # measured: up to 131 (skew_kl and skew_reverse_kl at beta = 0.9)
    )


# Reverse KL is +inf where the teacher rules out a class the student allows (the mirror of KL),
# and of the size of H where the student puts its mass on a class of the teacher's e^(-H/T).
REVERSE_KL = case_of("reverse_kl", masks=("student",), infinite=(
    "teacher -inf masks its class", "masked class, student large there", "teacher all -inf",
    "one class, teacher -inf", "huge student on a masked class", "teacher -inf, student finite but negligible"))
REVERSE_KL = dataclasses.replace(
    REVERSE_KL,
    special_rows={name: row for name, row in REVERSE_KL.special_rows.items()
                  if name != "huge teacher on a class the student masks"},
    huge_rows={
        **{name: row for name, row in REVERSE_KL.huge_rows.items() if name != "huge with a masked class"},
        "huge, different argmax": ([0, "H"], ["H", 0], lambda T, H: T * H * math.tanh(H / (2 * T))),
        "huge teacher on a class the student masks": (  # T^2 log((e^(H/T) + 2) / 2), as KL's mirror
            [-inf, 0, 0], ["H", 0, 0],
            lambda T, H: T * H + T**2 * (math.log1p(2 * math.exp(-H / T)) - math.log(2))),
    })

CASES = {
    "kl": KL,
    "reverse_kl": REVERSE_KL,
    # JSD, the skew KLs and TVD are finite wherever both sides allow some class.
    "jsd": case_of("jsd"),
    "jsd(beta=0.1)": case_of("jsd", 0.1),
    "jsd(beta=0.9)": case_of("jsd", 0.9),
    "skew_kl": case_of("skew_kl"),
    "skew_kl(beta=0.9)": case_of("skew_kl", 0.9),
    "skew_reverse_kl": case_of("skew_reverse_kl"),
    "skew_reverse_kl(beta=0.9)": case_of("skew_reverse_kl", 0.9),
    "tvd": case_of("tvd"),
}
