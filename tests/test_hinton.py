"""hinton_loss and hinton_loss_and_grad: ``alpha T^2 KL(P || Q) + (1 - alpha) CE(softmax(s), y)``.

Checked against the NumPy oracle, PyTorch (``alpha * F.kl_div(...) * T^2 + (1 - alpha) *
F.cross_entropy(s, y, ignore_index=...)``), central finite differences (float64), and mpmath
for the label's gradient when the student is sure of it (``R_y - 1`` must not cancel). Then:
ignore_index, the alpha = 0 and alpha = 1 ends, the T = 1 path (the cross-entropy shares the
KL's normaliser) and the T != 1 path, threads, layouts, special values and errors.
"""

import collections
import functools
import math
import os
import re
import subprocess
import sys
import textwrap

import mpmath
import numpy as np
import pytest
from conftest import DTYPES, LAYOUTS, THREAD_COUNTS, rng_for, share_of
from exact_reference import DPS, exact_hinton_grad
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
from kdloss import reference

# Every test here runs once per kernel target (see conftest.py).
pytestmark = pytest.mark.usefixtures("kernel_target")

MODULES = pytest.mark.parametrize("module", (kdloss, reference), ids=("kernel", "reference"))
inf, nan = math.inf, math.nan
IGNORE = -100
REDUCTIONS = ("mean", "sum", "none", "batchmean")
SHAPES = ((9,), (13, 9), (3, 5, 17), (4, 100))
ALPHAS = (0.0, 0.3, 1.0)
TEMPERATURES = (1.0, 2.5)  # T = 1: the cross-entropy reuses Q's normaliser; else its own


def hinton_case(shape, dtype, seed=0, ignore_index=IGNORE, masked=True):
    """(student, teacher, labels): random logits, the teacher masking some classes (never the
    label), and about a quarter of the rows labelled ``ignore_index`` (never all of them)."""
    rng = rng_for(shape, np.dtype(dtype).name, seed)
    teacher = rng.normal(0, 2, shape)
    student = teacher + rng.normal(0, 1.5, shape)
    labels = rng.integers(0, shape[-1], shape[:-1])
    if masked:
        teacher[..., 3::7] = -inf
        teacher[..., 3::7] = np.where(np.arange(shape[-1])[3::7] == labels[..., None], 0.0, -inf)
    ignored = np.array(rng.random(shape[:-1]) < 0.25)
    if ignored.all():
        ignored.flat[0] = False
    if ignored.size > 1 and not ignored.any():
        ignored.flat[-1] = True
    labels = np.where(ignored, ignore_index, labels)
    return student.astype(dtype), teacher.astype(dtype), labels


def kept_rows(labels, weights=None, ignore_index=IGNORE):
    kept = (np.asarray(labels) != ignore_index).astype(np.float64)
    return kept if weights is None else kept * np.broadcast_to(weights, kept.shape)


def factors_of(reduction, kept, grad_output):
    if reduction == "none":
        return kept * (1.0 if grad_output is None else grad_output)
    g = 1.0 if grad_output is None else grad_output
    if reduction == "sum":
        return g * kept
    return g * kept / np.sum(kept) if np.sum(kept) else 0.0 * kept


def hinton_atol(student, teacher, labels, temperature, alpha, factors, k=32):
    """Tolerances (d_s, d_t) against a float64 computation: the KL part as in
    test_gradients.oracle_atol; the cross-entropy's ``R - onehot`` as the error of ``R`` (the
    scales of ``kd_error_scales`` at T = 1 with P = Q = R), plus 1 at the label (the onehot's
    size: ``R_y - 1`` is rounded relative to 1)."""
    kd_s, kd_t = kd_error_scales(student, teacher, temperature)
    onehot = np.arange(kd_s.shape[-1]) == np.asarray(labels)[..., None]
    ce_s = kd_error_scales(student, student, 1.0)[0] + onehot
    f = row_factors_like(factors, kd_s.shape)
    eps = k * intermediate_eps(np.asarray(student).dtype)
    return eps * f * (alpha * kd_s + (1 - alpha) * ce_s), eps * f * alpha * kd_t


def grad_output_for(shape, reduction):
    if reduction != "none":
        return 1.25
    return rng_for(shape, "grad_output").uniform(-2, 2, shape[:-1])


# ---------------------------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------------------------

VARIANTS = [(reduction, weighted, with_g) for reduction in REDUCTIONS for weighted in (False, True)
            for with_g in (False, True)]

@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_oracle(shape, dtype, alpha, temperature, kernel_target):
    student, teacher, labels = hinton_case(shape, dtype)
    # Every reduction, with and without weights and grad_output: each target takes its share.
    for reduction, weighted, with_g in share_of(VARIANTS, kernel_target):
        weights = rng_for(shape, "w").uniform(0, 2, shape[:-1]) if weighted else None
        g = grad_output_for(shape, reduction) if with_g else None
        kwargs = {"reduction": reduction, "weights": weights, "grad_output": g, "teacher_grad": True}
        loss, d_s, d_t = kdloss.hinton_loss_and_grad(student, teacher, labels, temperature, alpha, **kwargs)
        want = reference.hinton_loss_and_grad(student, teacher, labels, temperature, alpha, **kwargs)
        assert type(want[0]) is type(loss)
        np.testing.assert_allclose(loss, want[0], rtol=max(8 * np.finfo(dtype).eps, 1e-9))
        factors = factors_of(reduction, kept_rows(labels, weights), g)
        atol_s, atol_t = hinton_atol(student, teacher, labels, temperature, alpha, factors)
        what = f"{reduction}, weights {weights is not None}, grad_output {g is not None}"
        assert d_s.dtype == d_t.dtype == dtype and d_s.shape == shape
        assert_grad_close(d_s, want[1].astype(np.float64), atol_s, dtype, f"d_student ({what})")
        assert_grad_close(d_t, want[2].astype(np.float64), atol_t, dtype, f"d_teacher ({what})")


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + ((64, 100),))
def test_loss_is_exactly_hinton_loss(shape, dtype, alpha, temperature):
    """hinton_loss_and_grad's loss is hinton_loss's, to the bit (as kd_loss_and_grad's is
    kd_loss's), whatever else is asked for."""
    student, teacher, labels = hinton_case(shape, dtype, seed=9)
    weights = rng_for(shape, "w").uniform(0, 2, shape[:-1])
    for reduction in REDUCTIONS:
        plain = kdloss.hinton_loss(student, teacher, labels, temperature, alpha, reduction=reduction,
                                   weights=weights)
        for teacher_grad in (False, True):
            loss = kdloss.hinton_loss_and_grad(student, teacher, labels, temperature, alpha, reduction=reduction,
                                               weights=weights, teacher_grad=teacher_grad)[0]
            assert type(plain) is type(loss)
            assert np.asarray(plain).tobytes() == np.asarray(loss).tobytes(), (reduction, plain, loss)


@pytest.mark.parametrize("dtype", DTYPES)
def test_labels_in_later_chunks_of_a_long_row(dtype, kernel_target):
    """The driver recomputes the label's entry from the values the sums' pass kept, which each
    chunk of a long row keeps from its own start (float32 ones in half the bytes): a label in the
    second or third chunk must read its own. Labels the teacher favours, so that a wrong read
    would move the entry by about alpha T P_y."""
    chunk = kdloss._kernel.CHUNK_CLASSES
    shape = (3, 2 * chunk + 100)
    student, teacher, _ = hinton_case(shape, np.float64, seed=4, masked=False)
    labels = np.array([chunk + 7, 2 * chunk + 50, 5])
    teacher[np.arange(3), labels] += 8.0
    student, teacher = student.astype(dtype), teacher.astype(dtype)
    factors = factors_of("sum", kept_rows(labels), None)
    for temperature in TEMPERATURES:
        _, d_s, d_t = kdloss.hinton_loss_and_grad(student, teacher, labels, temperature, 0.3, reduction="sum",
                                                  teacher_grad=True)
        want = reference.hinton_loss_and_grad(student, teacher, labels, temperature, 0.3, reduction="sum",
                                              teacher_grad=True)
        atol_s, atol_t = hinton_atol(student, teacher, labels, temperature, 0.3, factors)
        assert_grad_close(d_s, want[1].astype(np.float64), atol_s, dtype, f"d_student, T = {temperature}")
        assert_grad_close(d_t, want[2].astype(np.float64), atol_t, dtype, f"d_teacher, T = {temperature}")


# ---------------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------------

def torch_hinton(student, teacher, labels, temperature, alpha, ignore_index, reduction, grad_output):
    """PyTorch's loss and autograd gradients, float64 on the same values."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors (see test_gradients.torch_loss_and_grads)
    try:
        F = torch.nn.functional
        s = torch.tensor(np.asarray(student, np.float64), requires_grad=True)
        t = torch.tensor(np.asarray(teacher, np.float64), requires_grad=True)
        y = torch.tensor(np.asarray(labels, np.int64))
        T, n_classes = temperature, s.shape[-1]
        kl_rows = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,
                           reduction="none").sum(-1) * T * T
        kept = (y != ignore_index).to(torch.float64)
        flat_s, flat_y = s.reshape(-1, n_classes), y.reshape(-1)
        torch_reduction = "mean" if reduction == "batchmean" else reduction
        ce = F.cross_entropy(flat_s, flat_y, ignore_index=ignore_index, reduction=torch_reduction)
        if reduction == "none":
            loss = alpha * kl_rows * kept + (1 - alpha) * ce.reshape(kl_rows.shape)
            loss.backward(torch.tensor(grad_output))
        else:
            kl = (kl_rows * kept).sum()
            loss = alpha * (kl if reduction == "sum" else kl / kept.sum()) + (1 - alpha) * ce
            loss.backward(torch.tensor(grad_output, dtype=torch.float64))
        return loss.detach().numpy(), s.grad.numpy(), t.grad.numpy()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("ignore_index", [IGNORE, -1])
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_torch(shape, dtype, alpha, temperature, ignore_index, kernel_target):
    # PyTorch makes masked classes NaN in kl_div: unmasked teachers here.
    student, teacher, labels = hinton_case(shape, dtype, seed=1, ignore_index=ignore_index, masked=False)
    for reduction in share_of(REDUCTIONS, kernel_target):  # each target its share
        g = grad_output_for(shape, reduction)
        loss, d_s, d_t = kdloss.hinton_loss_and_grad(student, teacher, labels, temperature, alpha,
                                                     ignore_index=ignore_index, reduction=reduction,
                                                     grad_output=g, teacher_grad=True)
        want_loss, want_s, want_t = torch_hinton(student, teacher, labels, temperature, alpha, ignore_index,
                                                 reduction, g)
        np.testing.assert_allclose(loss, want_loss, rtol=max(8 * np.finfo(dtype).eps, 1e-9), atol=1e-13)
        factors = factors_of(reduction, kept_rows(labels, None, ignore_index), g)
        atol_s, atol_t = hinton_atol(student, teacher, labels, temperature, alpha, factors)
        assert_grad_close(d_s, want_s, atol_s, dtype, f"d_student ({reduction})")
        assert_grad_close(d_t, want_t, atol_t, dtype, f"d_teacher ({reduction})")


# ---------------------------------------------------------------------------------------------
# Finite differences (float64)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("shape", [(5,), (4, 4), (2, 2, 3)])
def test_matches_finite_differences(shape, alpha, temperature, kernel_target):
    # Each kernel target takes its share of the reductions (conftest.share_of).
    for reduction in share_of(REDUCTIONS, kernel_target):
        check_finite_differences(shape, alpha, temperature, reduction)


def check_finite_differences(shape, alpha, temperature, reduction):
    student, teacher, labels = hinton_case(shape, np.float64, seed=2, masked=False)
    weights = rng_for(shape, "fd weights").uniform(0.5, 2, shape[:-1])
    g = grad_output_for(shape, reduction)

    def objective(s, t):
        loss = kdloss.hinton_loss(s, t, labels, temperature, alpha, reduction=reduction, weights=weights)
        return float(np.sum(g * loss))

    _, d_s, d_t = kdloss.hinton_loss_and_grad(student, teacher, labels, temperature, alpha, reduction=reduction,
                                              weights=weights, grad_output=g, teacher_grad=True)
    # The cross-entropy is at T = 1: the step and error of the smaller of T and 1.
    scale = min(temperature, 1.0)
    atol = finite_difference_atol(objective(student, teacher), scale)
    for index, got in ((0, d_s), (1, d_t)):
        numeric = central_differences(objective, (student, teacher), index, scale)
        np.testing.assert_allclose(got, numeric, rtol=0, atol=atol)


# ---------------------------------------------------------------------------------------------
# ignore_index, and the two ends of alpha
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES[1:])
def test_ignored_rows_are_left_out(shape, dtype, temperature):
    student, teacher, labels = hinton_case(shape, dtype, seed=3)
    ignored = labels == IGNORE
    assert ignored.any() and not ignored.all()
    student[ignored] = nan  # never read
    rows, kept = student[~ignored], ~ignored
    for reduction in ("mean", "sum"):
        loss, d_s, d_t = kdloss.hinton_loss_and_grad(student, teacher, labels, temperature, 0.4,
                                                     reduction=reduction, teacher_grad=True)
        want, want_s, want_t = kdloss.hinton_loss_and_grad(rows, teacher[kept], labels[kept], temperature, 0.4,
                                                           reduction=reduction, teacher_grad=True)
        assert loss == pytest.approx(want, rel=1e-14)
        # The same rows, the same factor (1 / kept rows for the mean): the same bits.
        assert d_s[kept].tobytes() == want_s.tobytes() and d_t[kept].tobytes() == want_t.tobytes()
        assert np.all(d_s[ignored] == 0.0) and np.all(d_t[ignored] == 0.0)
    none = kdloss.hinton_loss(student, teacher, labels, temperature, 0.4, reduction="none")
    assert np.all(none[ignored] == 0.0) and np.all(np.isfinite(none))


@MODULES
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_rows_ignored(reduction, module):
    student, teacher, _ = hinton_case((4, 6), np.float64)
    student[1] = nan
    labels = np.full(4, IGNORE)
    loss, d_s, d_t = module.hinton_loss_and_grad(student, teacher, labels, 2.0, reduction=reduction,
                                                 teacher_grad=True)
    plain = module.hinton_loss(student, teacher, labels, 2.0, reduction=reduction)
    if reduction == "none":
        assert np.array_equal(loss, np.zeros(4)) and np.array_equal(plain, np.zeros(4))
    else:
        assert type(loss) is float and loss == 0.0 and plain == 0.0
    assert np.all(d_s == 0.0) and np.all(d_t == 0.0)


@MODULES
def test_ignore_index_may_be_a_class(module):
    """ignore_index inside [0, C): rows with that label are ignored, not trained on class 2."""
    student, teacher, labels = hinton_case((8, 5), np.float64, seed=4)
    labels = np.where(labels == IGNORE, 2, labels)
    as_padding = np.where(labels == 2, IGNORE, labels)
    for reduction in ("mean", "none"):
        got = module.hinton_loss_and_grad(student, teacher, labels, ignore_index=2, reduction=reduction)
        want = module.hinton_loss_and_grad(student, teacher, as_padding, reduction=reduction)
        for a, b in zip(got, want):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


@MODULES
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("bad", [nan, inf, -inf])
def test_alpha_zero_does_not_read_the_teacher(bad, temperature, module):
    student, teacher, labels = hinton_case((5, 7), np.float64, seed=5)
    teacher[:, 2] = bad
    clean = hinton_case((5, 7), np.float64, seed=5)[1]
    for reduction in REDUCTIONS:
        loss, d_s, d_t = module.hinton_loss_and_grad(student, teacher, labels, temperature, 0.0,
                                                     reduction=reduction, teacher_grad=True)
        want = module.hinton_loss_and_grad(student, clean, labels, temperature, 0.0, reduction=reduction,
                                           teacher_grad=True)
        assert np.all(np.isfinite(loss)) and np.all(np.isfinite(d_s))
        assert np.all(d_t == 0.0)
        for a, b in zip((loss, d_s, d_t), want):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES[1:])
def test_alpha_one_is_kd_loss_over_the_kept_rows(shape, dtype, temperature):
    student, teacher, labels = hinton_case(shape, dtype, seed=6)
    kept = labels != IGNORE
    for reduction in ("mean", "sum"):
        loss, d_s, d_t = kdloss.hinton_loss_and_grad(student, teacher, labels, temperature, 1.0,
                                                     reduction=reduction, teacher_grad=True)
        want, want_s, want_t = kdloss.kd_loss_and_grad(student[kept], teacher[kept], temperature,
                                                       reduction=reduction, teacher_grad=True)
        assert loss == pytest.approx(want, rel=1e-14)
        assert d_s[kept].tobytes() == want_s.tobytes() and d_t[kept].tobytes() == want_t.tobytes()
    none = kdloss.hinton_loss(student, teacher, labels, temperature, 1.0, reduction="none")
    assert none[kept].tobytes() == kdloss.kd_loss(student[kept], teacher[kept], temperature,
                                                  reduction="none").tobytes()


# ---------------------------------------------------------------------------------------------
# The label's gradient when the student is sure: R_y - 1 must not cancel
# ---------------------------------------------------------------------------------------------

WORST = collections.defaultdict(float)


@pytest.fixture(scope="module", autouse=True)
def report_worst_errors(kernel_target):
    WORST.clear()
    yield
    print(f"\nWorst errors of hinton_loss_and_grad's d_student against mpmath ({DPS} digits), {kernel_target}:")
    for category, error in sorted(WORST.items()):
        print(f"  {category:<58} {error:.3g}")


GAPS = (5.0, 20.0, 40.0, 80.0)  # R_y - 1 ~ -C e^-gap: down to 1e-34, still normal in float32


@functools.cache
def confident_case(n_classes, dtype, alpha, temperature, label_is_top):
    """Rows sure of one class, their labels, and each row's exact d_student (as mpf, and as
    double-double arrays), computed once for every kernel target."""
    rng = rng_for(n_classes, np.dtype(dtype).name, "confident")
    student = rng.normal(0, 1, (len(GAPS), n_classes))
    top = rng.integers(0, n_classes, len(GAPS))
    student[np.arange(len(GAPS)), top] += GAPS
    student = student.astype(dtype)
    labels = top if label_is_top else (top + 1) % n_classes
    exact_rows = []
    for row, label in zip(student.tolist(), labels.tolist()):
        exact = exact_hinton_grad(row, row, label, temperature, alpha)[0]
        exact_rows.append((exact, double_double(exact)))
    return student, labels, exact_rows


@pytest.mark.parametrize("label_is_top", [True, False])
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_classes", [5, 70, 300])
def test_confident_student_label_gradient_is_accurate(n_classes, dtype, alpha, temperature, label_is_top):
    """Rows sure of one class (by ``gap``): ``d_s[y] = (1 - alpha)(R_y - 1)`` (the teacher is
    the student, so the KL part is 0) to relative accuracy. The other classes too, up to the
    KL part's own (absolute) rounding error when alpha > 0."""
    student, labels, exact_rows = confident_case(n_classes, dtype, alpha, temperature, label_is_top)
    _, d_s = kdloss.hinton_loss_and_grad(student, student, labels, temperature, alpha, reduction="sum")
    eps = intermediate_eps(dtype)
    kl_atol = 4 * eps * alpha * kd_error_scales(student, student, temperature)[0]
    name = f"{np.dtype(dtype).name}, label {'is' if label_is_top else 'is not'} the top class"
    for row, (exact, (hi, lo)) in enumerate(exact_rows):
        error = errors_against_exact(d_s[row], (hi, lo)) / np.abs(hi)
        y = labels[row]
        WORST[f"label class, relative, {name}"] = max(WORST[f"label class, relative, {name}"], error[y])
        WORST[f"other classes, relative, {name}"] = max(WORST[f"other classes, relative, {name}"],
                                                       float(np.max(np.delete(error, y))))
        # Each e^(s_j - s_max) is off by ~eps (1 + |s_j - s_max|) relative; float32 rounds once more.
        spread = 1.0 + float(np.max(student[row]) - np.min(student[row])) + math.log(n_classes)
        rtol = 4 * eps * spread + (0.0 if dtype == np.float64 else 0.5 * float(np.finfo(dtype).eps))
        allowed = np.full(n_classes, rtol)
        allowed += np.where(np.arange(n_classes) == y, 0.0, kl_atol[row] / np.abs(hi))
        bad = ~(error <= allowed)
        assert not bad.any(), (
            f"row {row} (gap {GAPS[row]}): classes {np.nonzero(bad)[0][:5]} off by {error[bad][:5]} "
            f"(relative; tolerance {rtol:.3g}); label {y}: got {d_s[row, y]!r}, exact {mpmath.nstr(exact[y], 17)}"
        )


# ---------------------------------------------------------------------------------------------
# Threads and layouts
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_threads", THREAD_COUNTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_same_bits_for_every_thread_count(temperature, dtype, num_threads):
    student, teacher, labels = hinton_case((150, 800), dtype, seed=7)  # 120,000 elements: 7 threads
    expected = kdloss.hinton_loss_and_grad(student, teacher, labels, temperature, 0.3, teacher_grad=True,
                                           num_threads=1)
    got = kdloss.hinton_loss_and_grad(student, teacher, labels, temperature, 0.3, teacher_grad=True,
                                      num_threads=num_threads)
    for a, b in zip(got, expected):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(13, 9), (3, 5, 17), (2, 3, 100)])
def test_same_bits_for_every_layout(shape, dtype, layout, layout_of):
    student, teacher, labels = hinton_case(shape, dtype, seed=8)
    expected = kdloss.hinton_loss_and_grad(student, teacher, labels, 1.0, 0.6, reduction="none", teacher_grad=True)
    s, t, y = layout_of(student, layout), layout_of(teacher, layout), layout_of(labels, layout)
    copies = [s.copy(), t.copy(), y.copy()]
    got = kdloss.hinton_loss_and_grad(s, t, y, 1.0, 0.6, reduction="none", teacher_grad=True)
    for a, b in zip(got, expected):
        assert a.tobytes() == b.tobytes()
    for array, copy in zip((s, t, y), copies):
        assert array.tobytes() == copy.tobytes()


# ---------------------------------------------------------------------------------------------
# Special values
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values(dtype, temperature):
    rows = {
        "label logit -inf": ([-inf, 0.0, 1.0], [0.0, 0.0, 0.0], 0),
        "student NaN": ([0.0, nan, 1.0], [0.0, 0.0, 0.0], 0),
        "student +inf": ([0.0, inf, 1.0], [0.0, 0.0, 0.0], 0),
        "student all -inf": ([-inf, -inf, -inf], [0.0, 0.0, 0.0], 0),
        "ordinary": ([0.5, 0.0, 1.0], [0.0, 1.0, 0.0], 2),
    }
    student = np.array([r[0] for r in rows.values()], dtype)
    teacher = np.array([r[1] for r in rows.values()], dtype)
    labels = np.array([r[2] for r in rows.values()])
    # alpha = 0: the cross-entropy alone. +inf for a label ruled out, NaN for undefined rows.
    loss, d_s, d_t = kdloss.hinton_loss_and_grad(student, teacher, labels, temperature, 0.0, reduction="none",
                                                 teacher_grad=True)
    assert loss[0] == inf
    r = reference.softmax(student[0].astype(np.float64))
    assert_grad_close(d_s[0], r - np.eye(3)[0], 1e-15, dtype, "R - onehot with a -inf label logit")
    assert np.all(np.isnan(loss[1:4])) and np.all(np.isnan(d_s[1:4]))
    assert np.all(np.isfinite(d_s[4])) and np.all(d_t == 0.0)
    # alpha in (0, 1): a NaN in either term makes the row's d_student NaN; the KL's +inf (the
    # student rules out a class the teacher allows) makes d_teacher NaN.
    loss, d_s, d_t = kdloss.hinton_loss_and_grad(student, teacher, labels, temperature, 0.5, reduction="none",
                                                 teacher_grad=True)
    want = reference.hinton_loss_and_grad(student, teacher, labels, temperature, 0.5, reduction="none",
                                          teacher_grad=True)
    assert loss[0] == inf and np.all(np.isfinite(d_s[0])) and np.all(np.isnan(d_t[0]))
    assert np.all(np.isnan(d_s[1:4])) and np.all(np.isnan(d_t[1:4]))
    for got, expected in zip((loss, d_s, d_t), want):
        assert np.array_equal(np.isnan(got), np.isnan(expected))
    # The ordinary row is the same bits as alone.
    alone = kdloss.hinton_loss_and_grad(student[4:], teacher[4:], labels[4:], temperature, 0.5,
                                        reduction="none", teacher_grad=True)
    for got, expected in zip((loss, d_s, d_t), alone):
        assert got[4:].tobytes() == expected.tobytes()


# ---------------------------------------------------------------------------------------------
# Errors: the exception type, and a message naming the bad thing
# ---------------------------------------------------------------------------------------------

GOOD = np.zeros((4, 3))
GOOD_LABELS = np.array([0, 1, 2, IGNORE])


def both_functions(module, labels=GOOD_LABELS, **kwargs):
    return (
        lambda: module.hinton_loss(GOOD, GOOD, labels, **kwargs),
        lambda: module.hinton_loss_and_grad(GOOD, GOOD, labels, **kwargs),
    )


BAD_LABELS = [
    (np.array([0, 1, 3, 0]), ValueError,
     r"labels must be in \[0, 3\) or equal ignore_index=-100; got 3 at index \(2,\)"),
    (np.array([0, -1, 2, 0]), ValueError, r"labels must be in \[0, 3\).*got -1 at index \(1,\)"),
    (np.array([1000, 1, 2, 0]), ValueError, r"labels must be in \[0, 3\).*got 1000"),
    (np.array([0, 1, 2, -101]), ValueError, r"got -101"),
    (np.array([0.0, 1.0, 2.0, 0.0]), TypeError, r"labels must hold integers.*float64"),
    (np.array([True, False, True, False]), TypeError, r"labels must hold integers.*bool"),
    (np.array(["0", "1", "2", "0"]), TypeError, r"labels must hold integers"),
    (np.array([0, 1, 2]), ValueError, r"labels must have shape \(4,\).*got \(3,\)"),
    (np.zeros((4, 1), dtype=np.int64), ValueError, r"labels must have shape \(4,\).*got \(4, 1\)"),
    (0, ValueError, r"labels must have shape \(4,\).*got \(\)"),
]


@MODULES
@pytest.mark.parametrize("labels, error, pattern", BAD_LABELS, ids=range(len(BAD_LABELS)))
def test_bad_labels(labels, error, pattern, module):
    for alpha in (0.5, 1.0):  # labels are checked even when the cross-entropy is not computed
        for call in both_functions(module, labels=labels, alpha=alpha):
            with pytest.raises(error, match=pattern):
                call()


@MODULES
@pytest.mark.parametrize(
    "alpha, error, pattern",
    [(-0.1, ValueError, r"alpha must be in \[0, 1\], got -0\.1"),
     (1.5, ValueError, r"alpha must be in \[0, 1\], got 1\.5"),
     (nan, ValueError, r"alpha must be in \[0, 1\], got nan"),
     (inf, ValueError, r"alpha must be in \[0, 1\], got inf"),
     ("0.5", TypeError, r"alpha must be a real number, got '0\.5'"),
     (True, TypeError, r"alpha must be a real number, got True"),
     (np.array([0.5]), TypeError, r"alpha must be a real number"),
     (0.5j, TypeError, r"alpha must be a real number")],
)
def test_bad_alpha(alpha, error, pattern, module):
    for call in both_functions(module, alpha=alpha):
        with pytest.raises(error, match=pattern):
            call()


@MODULES
@pytest.mark.parametrize("ignore_index", [1.5, -100.0, "x", None, True, np.array(-100)])
def test_bad_ignore_index(ignore_index, module):
    for call in both_functions(module, ignore_index=ignore_index):
        with pytest.raises(TypeError, match="ignore_index must be an int, got " + re.escape(repr(ignore_index))):
            call()


def test_unsigned_labels_with_ignored_rows_do_not_crash(kernel_target):
    """Unsigned labels and an ignored row: the row must be ignored, not read at label 2^k - 1
    (uint32 reads 32 GB past the row). In a subprocess, so that a crash fails one test only."""
    code = textwrap.dedent("""
        import numpy as np, kdloss
        g = np.zeros((4, 3))
        for dtype in ("uint8", "uint16", "uint32", "uint64"):
            labels = np.array([0, 1, 2, 7], dtype=dtype)
            got = kdloss.hinton_loss_and_grad(g, g + np.arange(3), labels, ignore_index=7, reduction="none")
            print(dtype, float(got[0][3]), float(np.abs(got[1][3]).max()))
    """)
    env = dict(os.environ, KDLOSS_TARGET=kernel_target)
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 0, f"exit status {out.returncode}\n{out.stdout}{out.stderr}"
    for line in out.stdout.split("\n")[:-1]:
        _, loss, grad = line.split()
        assert float(loss) == 0.0 and float(grad) == 0.0, line


@MODULES
def test_numpy_integer_labels_and_ignore_index_are_accepted(module):
    labels = np.array([0, 1, 2, 7], dtype=np.uint8)
    got = module.hinton_loss(GOOD, GOOD + np.arange(3), labels, ignore_index=np.int16(7), reduction="none")
    want = module.hinton_loss(GOOD, GOOD + np.arange(3), labels.astype(np.int64), ignore_index=7, reduction="none")
    assert got.tobytes() == want.tobytes() and got[3] == 0.0
