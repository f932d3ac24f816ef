"""kd_loss_and_grad: the gradient of T^2 KL(P || Q), checked four ways.

(a) central finite differences of ``kd_loss`` (float64); (b) PyTorch autograd of the pure
expression ``F.kl_div(F.log_softmax(s / T), F.log_softmax(t / T), log_target=True) * T^2``
(float64 on the same values); (c) the NumPy oracle ``kdloss.reference``; (d) an exact gradient
in mpmath at 60 digits. Then: the loss is ``kd_loss``'s (the same bits), the gradient is the same
bits for every thread count and memory layout, and special values (masked classes, -inf, NaN,
huge logits, one class) give what the docstring promises.

Tolerances come from ``gradient_checks.py``. The worst errors against mpmath are printed at the
end of the module, per kernel target (``pytest tests/test_gradients.py -s``).
"""

import collections
import functools
import math
import re

import mpmath
import numpy as np
import pytest
from conftest import DTYPES, HUGE, rng_for, rotated, share_of, thread_counts_for
from exact_reference import DPS, exact_kd_grad
from gradient_checks import (
    assert_grad_close,
    central_differences,
    double_double,
    errors_against_exact,
    finite_difference_atol,
    intermediate_eps,
    kd_error_scales,
    row_factors_like,
)

import kdloss
from kdloss import _training, reference

# Every test here runs once per kernel target (see conftest.py).
pytestmark = pytest.mark.usefixtures("kernel_target")

inf, nan = math.inf, math.nan
REDUCTIONS = ("mean", "sum", "none", "batchmean")
# One row; short rows (the short-row pass, <= 64 classes) in 2-D and 3-D; long rows (> 64).
SHAPES = ((9,), (13, 9), (3, 5, 17), (2, 64), (3, 65), (4, 1000))


def random_pair(shape, dtype, kind="independent", seed=0):
    """(student, teacher) of ``shape``: "independent", "close" (student = teacher + 1e-3 noise)
    or "masked" (independent, the teacher masks every fourth class, never all of a row)."""
    rng = rng_for(shape, np.dtype(dtype).name, kind, seed)
    teacher = rng.normal(0, 2, shape)
    student = rng.normal(0, 2, shape) if kind != "close" else teacher + 1e-3 * rng.normal(0, 1, shape)
    if kind == "masked":
        teacher[..., 1::4] = -inf
    return student.astype(dtype), teacher.astype(dtype)


def row_weights(shape, kind):
    """Per-row weights for ``shape``'s rows: None, or random in [0, 2) with some exact zeros."""
    if kind is None:
        return None
    rng = rng_for(shape, "weights")
    w = rng.uniform(0, 2, shape[:-1])
    w[rng.random(shape[:-1]) < 0.25] = 0.0
    return w


def grad_output_for(shape, reduction, kind):
    """None, a scalar (for the reductions), or per-row values (for "none")."""
    if kind is None:
        return None
    if reduction != "none":
        return -0.75
    return rng_for(shape, "grad_output").uniform(-2, 2, shape[:-1])


def factors_of(shape, reduction, weights, grad_output):
    """The factor each row's gradient is multiplied by (float64, the rows' shape)."""
    rows = shape[:-1]
    w = np.ones(rows) if weights is None else np.broadcast_to(weights, rows)
    if reduction == "none":
        return w * (1.0 if grad_output is None else grad_output)
    g = 1.0 if grad_output is None else grad_output
    if reduction == "sum":
        return g * w
    return g * w / np.sum(w) if np.sum(w) else 0.0 * w


def oracle_atol(student, teacher, temperature, factors, k=32):
    """Absolute tolerances (d_s, d_t) against a float64 computation: ``k`` times the
    intermediate accuracy per scale unit (the oracle's own error is of the same form)."""
    scale_s, scale_t = kd_error_scales(student, teacher, temperature)
    f = row_factors_like(factors, scale_s.shape)
    eps = k * intermediate_eps(np.asarray(student).dtype)
    return eps * f * scale_s, eps * f * scale_t


# ---------------------------------------------------------------------------------------------
# The loss is kd_loss's
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("weights", [None, "random"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_loss_is_exactly_kd_loss(shape, dtype, reduction, weights):
    student, teacher = random_pair(shape, dtype, "masked")
    w = row_weights(shape, weights)
    expected = kdloss.kd_loss(student, teacher, 1.5, reduction=reduction, weights=w)
    for teacher_grad in (False, True):  # and grad_output: none of them changes the loss
        result = kdloss.kd_loss_and_grad(student, teacher, 1.5, reduction=reduction, weights=w,
                                         teacher_grad=teacher_grad,
                                         grad_output=grad_output_for(shape, reduction, "values"))
        assert len(result) == (3 if teacher_grad else 2)
        loss = result[0]
        assert type(loss) is type(expected)
        if reduction == "none":
            assert loss.dtype == expected.dtype and loss.shape == shape[:-1]
            assert loss.tobytes() == expected.tobytes()
        else:
            assert loss == expected
        for grad in result[1:]:
            assert grad.dtype == dtype and grad.shape == shape and grad.flags.c_contiguous


# ---------------------------------------------------------------------------------------------
# (c) The oracle
# ---------------------------------------------------------------------------------------------

# Every reduction, with and without weights and grad_output: each kernel target takes its share
# (conftest.share_of), so every variant runs on some target and every target runs some.
VARIANTS = [(reduction, weights, grad_output) for reduction in REDUCTIONS
            for weights in (None, "random") for grad_output in (None, "values")]


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("kind", ["independent", "masked"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_gradient_matches_oracle(shape, dtype, kind, temperature, kernel_target):
    student, teacher = random_pair(shape, dtype, kind)
    for reduction, weights, grad_output in share_of(VARIANTS, kernel_target):
        w = row_weights(shape, weights)
        g = grad_output_for(shape, reduction, grad_output)
        kwargs = {"reduction": reduction, "weights": w, "grad_output": g, "teacher_grad": True}
        loss, d_s, d_t = kdloss.kd_loss_and_grad(student, teacher, temperature, **kwargs)
        want_loss, want_s, want_t = reference.kd_loss_and_grad(student, teacher, temperature, **kwargs)
        assert want_s.dtype == want_t.dtype == dtype
        np.testing.assert_allclose(loss, want_loss, rtol=max(8 * np.finfo(dtype).eps, 1e-9))
        atol_s, atol_t = oracle_atol(student, teacher, temperature, factors_of(shape, reduction, w, g))
        what = f"{reduction}, weights {weights}, grad_output {grad_output}"
        assert_grad_close(d_s, want_s.astype(np.float64), atol_s, dtype, f"d_student ({what})")
        assert_grad_close(d_t, want_t.astype(np.float64), atol_t, dtype, f"d_teacher ({what})")


# ---------------------------------------------------------------------------------------------
# (a) Finite differences, float64
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("weights", [None, "random"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("temperature", [0.5, 2.0])
@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 2, 3)])
def test_gradient_matches_finite_differences(shape, temperature, reduction, weights):
    student, teacher = random_pair(shape, np.float64, "independent", seed=1)
    w = row_weights(shape, weights)
    g = grad_output_for(shape, reduction, "values")

    def objective(s, t):
        loss = kdloss.kd_loss(s, t, temperature, reduction=reduction, weights=w)
        return float(np.sum(g * loss))

    _loss, d_s, d_t = kdloss.kd_loss_and_grad(student, teacher, temperature, reduction=reduction,
                                             weights=w, grad_output=g, teacher_grad=True)
    atol = finite_difference_atol(objective(student, teacher), temperature)
    for index, got in ((0, d_s), (1, d_t)):
        numeric = central_differences(objective, (student, teacher), index, temperature)
        np.testing.assert_allclose(got, numeric, rtol=0, atol=atol)


# ---------------------------------------------------------------------------------------------
# (b) PyTorch autograd
# ---------------------------------------------------------------------------------------------

def torch_loss_and_grads(student, teacher, temperature, reduction, weights, grad_output):
    """Autograd of the pure PyTorch expression, in float64 on the same values."""
    torch = pytest.importorskip("torch")
    # Tiny tensors: PyTorch's thread pool only waits for the kernel's OpenMP threads (ms a call).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _torch_loss_and_grads(torch, student, teacher, temperature, reduction, weights, grad_output)
    finally:
        torch.set_num_threads(threads)


def _torch_loss_and_grads(torch, student, teacher, temperature, reduction, weights, grad_output):
    F = torch.nn.functional
    s = torch.tensor(np.asarray(student, np.float64), requires_grad=True)
    t = torch.tensor(np.asarray(teacher, np.float64), requires_grad=True)
    T = temperature

    def kl_div(red):
        return F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction=red)

    rows = kl_div("none").sum(-1) * T * T
    w = None if weights is None else torch.tensor(np.broadcast_to(weights, rows.shape))
    if reduction == "none":
        loss = rows if w is None else w * rows
        loss.backward(torch.ones_like(loss) if grad_output is None else torch.tensor(grad_output))
    else:
        if w is not None:
            loss = (w * rows).sum()
            loss = loss / w.sum() if reduction != "sum" else loss
        elif reduction == "sum":
            loss = kl_div("sum") * T * T
        elif reduction == "batchmean" and s.dim() == 2:
            loss = kl_div("batchmean") * T * T
        else:
            loss = rows.mean()
        loss.backward(torch.tensor(1.0 if grad_output is None else grad_output, dtype=torch.float64))
    return loss.detach().numpy(), s.grad.numpy(), t.grad.numpy()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_gradient_matches_torch_autograd(shape, dtype, temperature, kernel_target):
    student, teacher = random_pair(shape, dtype, "independent", seed=2)
    for reduction, weights, grad_output in share_of(VARIANTS, kernel_target):
        w = row_weights(shape, weights)
        if w is not None and not np.any(w):
            w[...] = 1.0  # PyTorch's 0 / 0 is NaN; kdloss's all-zero mean (0.0) is tested elsewhere
        g = grad_output_for(shape, reduction, grad_output)
        loss, d_s, d_t = kdloss.kd_loss_and_grad(student, teacher, temperature, reduction=reduction,
                                                 weights=w, grad_output=g, teacher_grad=True)
        want_loss, want_s, want_t = torch_loss_and_grads(student, teacher, temperature, reduction, w, g)
        np.testing.assert_allclose(loss, want_loss, rtol=max(8 * np.finfo(dtype).eps, 1e-9), atol=1e-13)
        atol_s, atol_t = oracle_atol(student, teacher, temperature, factors_of(shape, reduction, w, g))
        what = f"{reduction}, weights {weights}, grad_output {grad_output}"
        assert_grad_close(d_s, want_s, atol_s, dtype, f"d_student ({what})")
        assert_grad_close(d_t, want_t, atol_t, dtype, f"d_teacher ({what})")


@pytest.mark.parametrize("dtype", DTYPES)
def test_more_than_one_chunk_of_classes(dtype):
    """One case of > 16,384 classes (a row in several chunks), against autograd and the oracle."""
    shape = (2, 20000)
    student, teacher = random_pair(shape, dtype, "independent", seed=3)
    teacher[1, ::7] = -inf
    loss, d_s, d_t = kdloss.kd_loss_and_grad(student, teacher, 2.0, teacher_grad=True)
    assert loss == kdloss.kd_loss(student, teacher, 2.0)
    atol_s, atol_t = oracle_atol(student, teacher, 2.0, [0.5, 0.5])
    _, want_s, want_t = reference.kd_loss_and_grad(student, teacher, 2.0, teacher_grad=True)
    assert_grad_close(d_s, want_s.astype(np.float64), atol_s, dtype, "d_student vs oracle")
    assert_grad_close(d_t, want_t.astype(np.float64), atol_t, dtype, "d_teacher vs oracle")
    assert np.all(d_t[1, ::7] == 0.0)
    finite = (student[:1], teacher[:1])  # PyTorch makes masked classes NaN: the unmasked row only
    _, want_s, want_t = torch_loss_and_grads(*finite, 2.0, "mean", None, None)
    _, d_s, d_t = kdloss.kd_loss_and_grad(*finite, 2.0, teacher_grad=True)
    atol_s, atol_t = oracle_atol(*finite, 2.0, [1.0])
    assert_grad_close(d_s, want_s, atol_s, dtype, "d_student vs autograd")
    assert_grad_close(d_t, want_t, atol_t, dtype, "d_teacher vs autograd")


# ---------------------------------------------------------------------------------------------
# Threads and layouts: the same bits
# ---------------------------------------------------------------------------------------------

# The same bits for every thread count and layout (losses and gradients, every divergence and
# input dtype): test_tables.py.


@pytest.mark.parametrize(
    "shape, num_threads", [((40, 100), None)] + [((1, 40000), n) for n in thread_counts_for((1, 40000))]
)
def test_teacher_gradient_alone_is_the_teacher_gradient(shape, num_threads):
    # What kdloss.torch asks for when only the teacher requires grad.
    student, teacher = random_pair(shape, np.float32, "masked", seed=6)
    _, _, expected = kdloss.kd_loss_and_grad(student, teacher, 2.0, teacher_grad=True, num_threads=1)
    loss, d_student, d_teacher = _training.kd_loss_and_grads(
        student, teacher, 2.0, student_grad=False, teacher_grad=True, num_threads=num_threads)
    assert d_student is None and loss == kdloss.kd_loss(student, teacher, 2.0)
    assert d_teacher.tobytes() == expected.tobytes()


def test_mixed_and_integer_dtypes_give_gradients_in_the_compute_dtype():
    student = np.array([[1, 0, 2], [0, 0, 1]], dtype=np.int32)
    teacher = np.array([[0.5, 0, 1], [1, 0, 0]], dtype=np.float32)
    loss, d_s, d_t = kdloss.kd_loss_and_grad(student, teacher, teacher_grad=True)
    assert d_s.dtype == d_t.dtype == np.float64
    expected = kdloss.kd_loss_and_grad(student.astype(np.float64), teacher.astype(np.float64), teacher_grad=True)
    for a, b in zip((loss, d_s, d_t), expected):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    _, d_s = kdloss.kd_loss_and_grad(teacher.astype(np.float16), teacher)
    assert d_s.dtype == np.float32


@pytest.mark.parametrize("module", (kdloss, reference), ids=("kernel", "reference"))
def test_bad_grad_output_is_refused(module):
    student, teacher = random_pair((4, 3), np.float64)
    with pytest.raises(ValueError, match=r"grad_output must be a scalar.*'mean'.*\(4,\)"):
        module.kd_loss_and_grad(student, teacher, grad_output=np.ones(4))
    with pytest.raises(ValueError, match=re.escape("grad_output must have shape (4,)")):
        module.kd_loss_and_grad(student, teacher, reduction="none", grad_output=np.ones(3))
    with pytest.raises(TypeError, match="grad_output"):
        module.kd_loss_and_grad(student, teacher, grad_output=1j)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batches(dtype):
    empty = np.zeros((0, 5), dtype)
    for reduction in REDUCTIONS:
        loss, d_s, d_t = kdloss.kd_loss_and_grad(empty, empty, reduction=reduction, teacher_grad=True)
        assert d_s.shape == d_t.shape == (0, 5) and d_s.dtype == dtype
        assert (loss.shape == (0,)) if reduction == "none" else (loss == 0.0)


# ---------------------------------------------------------------------------------------------
# (d) Exactness against mpmath
# ---------------------------------------------------------------------------------------------

WORST = collections.defaultdict(float)  # category -> largest error measured

# Near-identical rows (student = teacher + 1e-7 noise) and a pure offset keep Q - P tiny.
EXACT_KINDS = ("independent", "close 1e-3", "close 1e-7", "offset", "masked", "shared top")
EXACT_CLASSES = (3, 9, 65, 300)
EXACT_TEMPERATURES = (0.5, 1.0, 4.0)
# The kernel's error, in units of the intermediate accuracy times the scales of
# gradient_checks (measured worst: see the report). A double computation of these formulas
# cannot promise less than about one.
EXACT_K = 4


def exact_pair(kind, dtype, n_classes, temperature):
    rng = rng_for(kind, np.dtype(dtype).name, n_classes, temperature)
    teacher = 2.0 * min(temperature, 1.0) * rng.standard_normal((2, n_classes))
    noise = rng.standard_normal((2, n_classes))
    if kind == "independent" or kind == "masked":
        student = 2.0 * min(temperature, 1.0) * noise
        if kind == "masked":
            teacher[:, ::3] = -inf
            student[0, ::6] = -inf  # both -inf on some of the masked classes
    elif kind.startswith("close"):
        teacher = teacher.astype(dtype).astype(np.float64)
        student = teacher + float(kind.split()[1]) * noise
    elif kind == "offset":
        teacher = np.round(teacher.astype(dtype) * 64) / 64
        student = teacher + 3.0  # exact: the same distribution
        student[1] += 1e-6 * noise[1]
    elif kind == "shared top":  # both sure of the same class, the rest disagrees
        top = rng.integers(0, n_classes, 2)
        student = noise.copy()
        teacher[np.arange(2), top] = student[np.arange(2), top] = 20.0
    else:
        raise ValueError(kind)
    return student.astype(dtype), teacher.astype(dtype)


@functools.cache
def exact_case(kind, dtype, n_classes, temperature):
    """The inputs and their exact gradients, as (hi, lo) pairs of flattened float64 arrays."""
    student, teacher = exact_pair(kind, dtype, n_classes, temperature)
    rows = [exact_kd_grad(s, t, temperature) for s, t in zip(student.tolist(), teacher.tolist())]
    d_s = double_double([v for row in rows for v in row[0]])
    d_t = double_double([v for row in rows for v in row[1]])
    return student, teacher, d_s, d_t


@pytest.fixture(scope="module", autouse=True)
def report_worst_errors(kernel_target):
    WORST.clear()
    yield
    print(f"\nWorst gradient errors against mpmath ({DPS} digits), kernel target {kernel_target}:")
    for category, error in sorted(WORST.items()):
        print(f"  {category:<58} {error:.3g}")


def record(category, errors):
    if errors.size:
        WORST[category] = max(WORST[category], float(np.max(errors)))


@pytest.mark.parametrize("temperature", EXACT_TEMPERATURES)
@pytest.mark.parametrize("n_classes", EXACT_CLASSES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", EXACT_KINDS)
def test_gradient_against_exact(kind, dtype, n_classes, temperature):
    student, teacher, exact_s, exact_t = exact_case(kind, dtype, n_classes, temperature)
    _, d_s, d_t = kdloss.kd_loss_and_grad(student, teacher, temperature, reduction="sum", teacher_grad=True)
    scale_s, scale_t = kd_error_scales(student, teacher, temperature)
    name = np.dtype(dtype).name
    for what, got, exact, scale in (("d_student", d_s, exact_s, scale_s), ("d_teacher", d_t, exact_t, scale_t)):
        got, scale = got.astype(np.float64).ravel(), scale.ravel()
        error = errors_against_exact(got, exact)
        magnitude = np.abs(exact[0])
        rounding = 0.0 if dtype == np.float64 else 0.5 * float(np.finfo(dtype).eps) * magnitude
        # Worst errors: absolute (in units of T), relative (elements >= 1e-6 T; smaller ones
        # are measured against that floor), and in eps64 per scale unit (float64 only).
        record(f"{what} absolute / T, {name}", error / temperature)
        record(f"{what} relative, {name}", error / np.maximum(magnitude, 1e-6 * temperature))
        eps = intermediate_eps(dtype)
        if dtype == np.float64:
            with np.errstate(divide="ignore", invalid="ignore"):
                units = np.where(error > 0, error / (eps * scale), 0.0)
            record(f"{what} error / (eps64 * scale), float64", units)
        else:  # beyond the rounding to float32
            with np.errstate(divide="ignore", invalid="ignore"):
                units = np.where(error > rounding, (error - rounding) / (eps * scale), 0.0)
            record(f"{what} (error - half ulp) / (5e-12 * scale), float32", units)
        bound = EXACT_K * eps * scale + rounding * (1 + 1e-6)
        bad = ~(error <= bound)
        assert not bad.any(), (
            f"{what}: {bad.sum()} elements off; worst error {error.max():.3g}, "
            f"got {got[bad][:4]}, exact {exact[0][bad][:4]}"
        )


def test_exact_reference_has_converged():
    """60 digits agree with 100 on the near-identical case, whose Q - P cancels the most."""
    student, teacher = exact_pair("close 1e-7", np.float64, 9, 1.0)
    at_60 = exact_kd_grad(student[0].tolist(), teacher[0].tolist(), 1.0)
    at_100 = exact_kd_grad(student[0].tolist(), teacher[0].tolist(), 1.0, dps=100)
    for a, b in zip(at_60, at_100):
        for x, y in zip(a, b):
            assert abs(x - y) <= mpmath.mpf(10) ** -45 * max(abs(y), mpmath.mpf(10) ** -300)


# ---------------------------------------------------------------------------------------------
# Special values
# ---------------------------------------------------------------------------------------------

# (student row, teacher row, what the gradient row must be). "H" stands for HUGE[dtype]
# (conftest.py).
# "finite": finite d_s and d_t; "inf loss": finite d_s, NaN d_t; "nan": NaN d_s and d_t.
SPECIAL_ROWS = {
    "teacher masks a class": ([0, 0, 0], [-inf, 0, 0], "finite"),
    "masked class, student large there": ([5, 0, 0], [-inf, 0, 0], "finite"),
    "both -inf on one class": ([-inf, 1, 0], [-inf, 0, 1], "finite"),
    "both -inf on one class, same rest": ([-inf, 0, 0], [-inf, 0, 0], "finite"),
    "student -inf, teacher finite": ([-inf, 0, 0], [0, 0, 0], "inf loss"),
    "student -inf, teacher negligible": ([-inf, 0, 0], [-1e4, 0, 0], "inf loss"),
    "student -inf on two classes": ([-inf, 2, -inf], [0, 1, -inf], "inf loss"),
    "teacher all -inf": ([0, 0, 0], [-inf, -inf, -inf], "nan"),
    "both all -inf": ([-inf, -inf, -inf], [-inf, -inf, -inf], "nan"),
    "teacher +inf": ([0, 0, 0], [inf, 0, 0], "nan"),
    "student +inf": ([inf, 0, 0], [0, 0, 0], "nan"),
    "student +inf on a masked class": ([inf, 0, 0], [-inf, 0, 0], "nan"),
    "teacher NaN": ([0, 0, 0], [0, nan, 0], "nan"),
    "student NaN": ([0, 0, nan], [0, 0, 0], "nan"),
    "student NaN on a masked class": ([nan, 0, 0], [-inf, 0, 0], "nan"),
    "teacher NaN, student -inf": ([-inf, 0, 0], [nan, 0, 0], "nan"),
    "student all -inf": ([-inf, -inf, -inf], [0, 1, 0], "inf loss, undefined Q"),
    "one class, student -inf": ([-inf], [3], "inf loss, undefined Q"),
    "huge, different argmax": ([0, "H"], ["H", 0], "finite"),
    "huge, same argmax": (["H", "-H", 0], ["H", 0, "-H"], "finite"),
    "huge, identical": (["H", "-H"], ["H", "-H"], "finite"),
    "huge student on a masked class": (["H", 0, 0], [-inf, 0, 0], "finite"),
    "huge with a masked class": (["H", "H", 0], [-inf, "H", 0], "finite"),
}


def special_batch(student_row, teacher_row, dtype):
    """(3, C): ordinary random rows around the special row (index 1)."""
    def row(values):
        return [{"H": HUGE[dtype], "-H": -HUGE[dtype]}.get(v, v) if isinstance(v, str) else v for v in values]
    rng = rng_for(len(student_row), "neighbours")
    student, teacher = rng.normal(0, 2, (2, 3, len(student_row)))
    student[1], teacher[1] = row(student_row), row(teacher_row)
    return student.astype(dtype), teacher.astype(dtype)


def closed_form_d_student(student, teacher, temperature):
    """T (Q - P) of each row, in float64 (from the oracle's softmax)."""
    p = reference.softmax(teacher.astype(np.float64), temperature)
    q = reference.softmax(student.astype(np.float64), temperature)
    return temperature * (q - p)


@pytest.mark.parametrize("case", SPECIAL_ROWS)
def test_special_rows(case, dtype_row, kernel_target):
    # One temperature per (target, dtype) (conftest.rotated): each row meets every one.
    check_special_row(case, dtype_row.numpy_dtype, rotated((0.5, 1.0, 3.0), kernel_target, dtype_row))


def check_special_row(case, dtype, temperature):
    student_row, teacher_row, outcome = SPECIAL_ROWS[case]
    if "H" in student_row + teacher_row and temperature > 1:
        temperature = 1.0  # keeps T * H within float32
    student, teacher = special_batch(student_row, teacher_row, dtype)
    loss, d_s, d_t = kdloss.kd_loss_and_grad(student, teacher, temperature, reduction="none", teacher_grad=True)
    if outcome == "nan":
        assert np.isnan(loss[1]) and np.all(np.isnan(d_s[1])) and np.all(np.isnan(d_t[1]))
    elif outcome == "inf loss, undefined Q":  # a student row all -inf: Q is 0 / 0
        assert loss[1] == inf and np.all(np.isnan(d_s[1])) and np.all(np.isnan(d_t[1]))
    else:
        assert not np.any(np.isnan(d_s[1])) and np.all(np.isfinite(d_s[1]))
        atol_s, atol_t = oracle_atol(student[1], teacher[1], temperature, 1.0)
        assert_grad_close(d_s[1], closed_form_d_student(student[1], teacher[1], temperature), atol_s, dtype,
                          "d_student = T (Q - P)")
        if outcome == "inf loss":
            assert loss[1] == inf and np.all(np.isnan(d_t[1]))
        else:
            assert np.all(np.isfinite(d_t[1]))
            assert np.all(d_t[1][teacher[1] == -inf] == 0.0)  # masked classes: exactly 0
            _, _, want_t = reference.kd_loss_and_grad(student[1], teacher[1], temperature, teacher_grad=True)
            assert_grad_close(d_t[1], want_t.astype(np.float64), atol_t, dtype, "d_teacher")
    # The oracle agrees on the special row (NaN placement included).
    _, want_s, want_t = reference.kd_loss_and_grad(student, teacher, temperature, reduction="none", teacher_grad=True)
    assert np.array_equal(np.isnan(d_s), np.isnan(want_s)) and np.array_equal(np.isnan(d_t), np.isnan(want_t))

    # The neighbours: finite, and the same bits as computed alone, for every reduction.
    neighbours = (student[[0, 2]], teacher[[0, 2]])
    for reduction, scale in (("none", None), ("sum", 1.0), ("mean", 1 / 3)):
        _, d_s, d_t = kdloss.kd_loss_and_grad(student, teacher, temperature, reduction=reduction, teacher_grad=True)
        alone_reduction = "none" if reduction == "none" else "sum"
        _, alone_s, alone_t = kdloss.kd_loss_and_grad(*neighbours, temperature, reduction=alone_reduction,
                                                      grad_output=scale, teacher_grad=True)
        assert np.all(np.isfinite(alone_s)) and np.all(np.isfinite(alone_t))
        assert d_s[[0, 2]].tobytes() == alone_s.tobytes() and d_t[[0, 2]].tobytes() == alone_t.tobytes()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["teacher NaN", "student +inf", "teacher all -inf", "student -inf, teacher finite"])
def test_zero_weight_row_with_special_values_is_left_out(case, dtype, reduction):
    student_row, teacher_row, _ = SPECIAL_ROWS[case]
    student, teacher = special_batch(student_row, teacher_row, dtype)
    weights = np.array([1.0, 0.0, 2.0])
    loss, d_s, d_t = kdloss.kd_loss_and_grad(student, teacher, 2.0, reduction=reduction, weights=weights,
                                             teacher_grad=True)
    assert np.all(np.isfinite(loss))
    assert loss == pytest.approx(kdloss.kd_loss(student, teacher, 2.0, reduction=reduction, weights=weights))
    assert np.all(d_s[1] == 0.0) and np.all(d_t[1] == 0.0)
    assert np.all(np.isfinite(d_s)) and np.all(np.isfinite(d_t))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (4, 1), (2, 3, 1)])
def test_one_class_has_zero_loss_and_zero_gradient(shape, dtype, reduction):
    rng = rng_for(shape, "one class")
    student, teacher = (rng.normal(0, 100, shape).astype(dtype) for _ in range(2))
    loss, d_s, d_t = kdloss.kd_loss_and_grad(student, teacher, 0.3, reduction=reduction, teacher_grad=True)
    assert np.all(np.asarray(loss) == 0.0)
    assert np.all(d_s == 0.0) and np.all(d_t == 0.0)


# Identical rows: exactly 0 loss and gradients, for every divergence and input dtype (test_tables.py).


def test_float32_student_gradient_is_accurate_where_q_minus_p_cancels(kernel_target):
    # Issue 14, item 12: near-identical rows, where Q - P cancels most. The one-engine kernel takes
    # Q - P as P (e^-d - 1 - y) / (1 + y), without cancellation. In double (the scalar target)
    # each float32 element is the exact value rounded once: within half an ulp (plus the double
    # intermediates' 1e-9 of it). The vector targets evaluate float32 inputs in float32 (issue 13):
    # within 1e-6 of the row's largest entry (measured 4.5e-8), whatever the row's scale.
    rng = np.random.default_rng(3)
    teacher = rng.standard_normal(300).astype(np.float32)
    student = (teacher + 1e-6 * rng.standard_normal(300)).astype(np.float32)
    _, d_student = kdloss.kd_loss_and_grad(student[None], teacher[None], 1.0, reduction="sum")
    exact = np.array([float(v) for v in exact_kd_grad(student.tolist(), teacher.tolist(), 1.0)[0]])
    error = np.abs(d_student[0].astype(np.float64) - exact)
    if kernel_target == "scalar":
        ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
        assert np.max(error / ulp) <= 0.5 + 1e-3
    else:
        assert np.max(error) <= 1e-6 * np.max(np.abs(exact))


def test_gradients_rounded_to_odd_for_a_second_rounding(kernel_target):
    # kdloss.torch asks for float32 gradients rounded to odd (2-byte logits), so that rounding them
    # to float16/bfloat16 is the exact value's one rounding: the kernel's float32 stores must be
    # the gradient rounded to odd, positive and negative entries alike (a sign bug once sent
    # negative entries away from zero).
    from kdloss import _reduction, _training

    rng = np.random.default_rng(11)
    teacher = rng.standard_normal((40, 300)).astype(np.float32)
    student = (teacher + 0.3 * rng.standard_normal(teacher.shape)).astype(np.float32)
    wide = _training.kd_loss_and_grads(student.astype(np.float64), teacher.astype(np.float64), 3.0,
                                       reduction="none", teacher_grad=True)
    odd = _training.kd_loss_and_grads(student, teacher, 3.0, reduction="none", teacher_grad=True,
                                      round_to_odd=True)
    nearest = _training.kd_loss_and_grads(student, teacher, 3.0, reduction="none", teacher_grad=True)
    for got, near, want in zip(odd, nearest, wide):
        assert got.dtype == np.float32
        if kernel_target == "scalar":
            # In double, the float32-input path's intermediates are good to 1e-9 of the row's
            # scale, so an entry far smaller than its row's largest may sit on the other side of a
            # float32 value: the next odd float32 (two units) off, rarely. Everything else is the
            # float64 value rounded to odd.
            rounded = _reduction.float32_rounded_to_odd(want)
            assert np.all(np.abs(got.astype(np.float64) - rounded) <= 2 * np.spacing(np.abs(rounded)))
            assert np.mean(got == rounded) > 0.999
        # Both stores round the same intermediate (float32 arithmetic on the vector targets): the
        # odd one is the nearest one where that is even (the value was a float32), else one unit
        # from it, on the same side of zero, with its last bit set.
        got_bits, near_bits = got.view(np.int32), near.view(np.int32)
        assert np.all(np.signbit(got) == np.signbit(near))
        assert np.all(np.abs(got_bits - near_bits) <= 1)
        assert np.all(((got_bits & 1) == 1) | (got == near))
        assert np.mean(got != near) > 0.1  # the rounding did change something
