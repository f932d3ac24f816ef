"""The identities between the divergences of the table (README "Divergences"), checked bit for
bit where the registry computes both sides the same way, and to rounding elsewhere; and the
errors a bad ``divergence=`` / ``beta=`` gives, from every public function.

- ``jsd`` at beta 0 is ``kl`` and at beta 1 ``reverse_kl`` (TRL's and Liger's endpoints);
  ``skew_kl`` at beta 0 is ``kl`` and ``skew_reverse_kl`` at beta 0 ``reverse_kl``: bit for bit
  (the registry gives them the same kernel form), values and gradients;
- ``skew_kl`` and ``skew_reverse_kl`` at beta 1 are exactly 0 (``M`` is the other side itself);
- ``jsd(P, Q; beta) = jsd(Q, P; 1 - beta)``, to rounding;
- ``0 <= tvd <= T^2``, and ``0 <=`` every divergence.
"""

import math

import numpy as np
import pytest
from conftest import rng_for

import kdloss
from kdloss import reference
from kdloss._divergences import DIVERGENCES, resolve_divergence

# Every test here runs once per kernel target (see conftest.py).
pytestmark = pytest.mark.usefixtures("kernel_target")

inf = math.inf
DTYPES = (np.float32, np.float64)
# Short rows, the short-row pass's limit, long rows, rows split into chunks.
SHAPES = ((6, 9), (4, 64), (3, 300), (2, 40000))


def pair(shape, dtype, kind="independent"):
    """(student, teacher): "independent", "close" (1e-3 noise) or "masked" (each side masks
    every fourth class, at different places, and both mask a common one)."""
    rng = rng_for(shape, np.dtype(dtype).name, kind)
    teacher = rng.normal(0, 3, shape)
    student = teacher + (1e-3 if kind == "close" else 1.0) * rng.normal(0, 1, shape)
    if kind == "masked":
        teacher[..., 1::4] = -inf
        student[..., 3::4] = -inf
        student[..., 1] = -inf
    return student.astype(dtype), teacher.astype(dtype)


def everything(student, teacher, temperature, divergence, beta=None):
    """Per-row losses and both gradients of one divergence, as bytes."""
    given = {} if beta is None else {"beta": beta}
    losses = kdloss.kd_loss(student, teacher, temperature, reduction="none", divergence=divergence, **given)
    _, d_s, d_t = kdloss.kd_loss_and_grad(student, teacher, temperature, reduction="none", teacher_grad=True,
                                          divergence=divergence, **given)
    labels = np.arange(teacher.shape[0]) % teacher.shape[-1]
    hinton = kdloss.hinton_loss_and_grad(student, teacher, labels, temperature, 0.7, reduction="none",
                                         teacher_grad=True, divergence=divergence, **given)
    return [np.asarray(v).tobytes() for v in (losses, d_s, d_t, *hinton)]


ENDPOINTS = [("jsd", 0.0, "kl"), ("jsd", 1.0, "reverse_kl"), ("skew_kl", 0.0, "kl"),
             ("skew_reverse_kl", 0.0, "reverse_kl")]


@pytest.mark.parametrize(("divergence", "beta", "same_as"), ENDPOINTS, ids=[f"{d}@{b}" for d, b, _ in ENDPOINTS])
@pytest.mark.parametrize("kind", ("independent", "close", "masked"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_endpoints_are_bit_for_bit_the_plain_divergence(divergence, beta, same_as, kind, dtype):
    # The registry makes the identity hold by construction: one kernel form for both.
    assert DIVERGENCES[divergence].kernel_form(beta=beta) == DIVERGENCES[same_as].kernel_form()
    for shape in SHAPES:
        student, teacher = pair(shape, dtype, kind)
        for temperature in (0.5, 2.0):
            assert everything(student, teacher, temperature, divergence, beta) == everything(
                student, teacher, temperature, same_as), (shape, temperature)
    # The oracle's endpoints are the plain divergence's oracle too.
    student, teacher = pair((5, 9), np.float64, kind)
    np.testing.assert_array_equal(DIVERGENCES[divergence].oracle(student, teacher, 1.5, beta=beta),
                                  DIVERGENCES[same_as].oracle(student, teacher, 1.5))


@pytest.mark.parametrize("divergence", ("skew_kl", "skew_reverse_kl"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_skew_at_beta_one_is_exactly_zero(divergence, dtype):
    for shape in SHAPES:
        for kind in ("independent", "masked"):
            student, teacher = pair(shape, dtype, kind)
            loss, d_s, d_t = kdloss.kd_loss_and_grad(student, teacher, 1.5, reduction="none", teacher_grad=True,
                                                     divergence=divergence, beta=1.0)
            assert np.all(loss == 0.0) and np.all(d_s == 0.0) and np.all(d_t == 0.0), (shape, kind)


@pytest.mark.parametrize("beta", (0.1, 0.5, 0.9))
@pytest.mark.parametrize("dtype", DTYPES)
def test_jsd_exchanging_the_sides_exchanges_beta(beta, dtype):
    """``JSD(P, Q; beta) = JSD(Q, P; 1 - beta)``: the same terms, summed in another order."""
    rtol = 64 * float(np.finfo(dtype).eps) if dtype == np.float32 else 1e-13
    for shape in SHAPES[:3]:
        for kind in ("independent", "close", "masked"):
            student, teacher = pair(shape, dtype, kind)
            forward = kdloss.kd_loss(student, teacher, 2.0, reduction="none", divergence="jsd", beta=beta)
            exchanged = kdloss.kd_loss(teacher, student, 2.0, reduction="none", divergence="jsd", beta=1.0 - beta)
            np.testing.assert_allclose(forward, exchanged, rtol=rtol, atol=0, err_msg=f"{shape} {kind}")


@pytest.mark.parametrize("temperature", (0.5, 1.0, 4.0))
@pytest.mark.parametrize("dtype", DTYPES)
def test_tvd_is_between_zero_and_t_squared(temperature, dtype):
    rows = []
    for kind in ("independent", "close", "masked"):
        rows += [np.concatenate(pair((6, 9), dtype, kind), axis=0)]
    h = float(np.finfo(dtype).max) / 4
    # The largest TVD: mass on classes the other side (nearly) rules out.
    extreme = np.array([[h, 0, -h], [-inf, 0, 0], [0, -inf, h], [-h, h, 0]], dtype=dtype)
    other = np.array([[-h, 0, h], [0, -inf, -inf], [0, h, -inf], [h, -h, 0]], dtype=dtype)
    student = np.concatenate([r[: len(r) // 2] for r in rows])
    teacher = np.concatenate([r[len(r) // 2:] for r in rows])
    for s, t in ((student, teacher), (extreme, other), (other, extreme)):
        tvd = kdloss.kd_loss(s, t, temperature, reduction="none", divergence="tvd")
        assert np.all(tvd >= 0.0) and np.all(tvd <= temperature**2), tvd
    tvd = kdloss.kd_loss(extreme, other, temperature, reduction="none", divergence="tvd")
    assert np.all(tvd == temperature**2)  # disjoint supports (to rounding of e^(-2h/T): exactly)


@pytest.mark.parametrize("divergence", sorted(DIVERGENCES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_never_negative_near_zero(divergence, dtype):
    """Students a few ulps from their teachers, and pure offsets: every value >= 0."""
    rng = rng_for(divergence, np.dtype(dtype).name, "near zero")
    teacher = rng.normal(0, 3, (64, 300)).astype(dtype)
    ulps = rng.integers(-2, 3, teacher.shape)
    student = np.nextafter(teacher, np.where(ulps > 0, inf, -inf).astype(dtype))
    student = np.where(ulps == 0, teacher, student)
    offset = (teacher + np.asarray(0.75, dtype)).astype(dtype)
    for s in (student, offset):
        for temperature in (0.5, 1.0, 4.0):
            losses = kdloss.kd_loss(s, teacher, temperature, reduction="none", divergence=divergence)
            assert np.all(losses >= 0.0) and np.all(np.isfinite(losses))


# ---------------------------------------------------------------------------------------------
# Errors: every public function, the kernel's and the oracle's, the same ValueError
# ---------------------------------------------------------------------------------------------

KNOWN = "'kl', 'reverse_kl', 'jsd', 'skew_kl', 'skew_reverse_kl', 'tvd'"
BAD = [
    ("JSD", None, rf"divergence must be one of {KNOWN}; got 'JSD'"),
    ("forward_kl", 0.5, rf"divergence must be one of {KNOWN}; got 'forward_kl'"),
    ("kl", 0.5, r"divergence 'kl' \(.*\) takes no parameters; got beta=0.5"),
    ("reverse_kl", 0.0, r"divergence 'reverse_kl' \(.*\) takes no parameters; got beta=0.0"),
    ("tvd", 1.0, r"divergence 'tvd' \(.*\) takes no parameters; got beta=1.0"),
    ("jsd", 1.5, r"beta of divergence 'jsd' must be in \[0.0, 1.0\], got 1.5"),
    ("jsd", -0.0001, r"beta of divergence 'jsd' must be in \[0.0, 1.0\], got -0.0001"),
    ("skew_kl", math.nan, r"beta of divergence 'skew_kl' must be in \[0.0, 1.0\], got nan"),
    ("skew_reverse_kl", inf, r"beta of divergence 'skew_reverse_kl' must be in \[0.0, 1.0\], got inf"),
]


@pytest.mark.parametrize("module", (kdloss, reference), ids=("kernel", "reference"))
@pytest.mark.parametrize(("divergence", "beta", "message"), BAD, ids=[f"{d}-{b}" for d, b, _ in BAD])
def test_bad_divergence_or_beta(divergence, beta, message, module):
    student, teacher = pair((2, 5), np.float64)
    labels = [0, 1]
    for function, args in (("kd_loss", (student, teacher)), ("kd_loss_and_grad", (student, teacher)),
                           ("hinton_loss", (student, teacher, labels)),
                           ("hinton_loss_and_grad", (student, teacher, labels))):
        with pytest.raises(ValueError, match=message):
            getattr(module, function)(*args, divergence=divergence, beta=beta)


def test_beta_defaults_are_the_registry_ones():
    student, teacher = pair((4, 9), np.float64)
    for name, row in DIVERGENCES.items():
        assert resolve_divergence(name)[1] == row.parameters
        if row.parameters:
            default = kdloss.kd_loss(student, teacher, divergence=name, reduction="none")
            given = kdloss.kd_loss(student, teacher, divergence=name, beta=row.parameters["beta"], reduction="none")
            assert default.tobytes() == given.tobytes()
    assert {name: row.parameters for name, row in DIVERGENCES.items() if row.parameters} == {
        "jsd": {"beta": 0.5}, "skew_kl": {"beta": 0.1}, "skew_reverse_kl": {"beta": 0.1}}
