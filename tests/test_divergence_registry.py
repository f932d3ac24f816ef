"""The divergence table (``kdloss._divergences``): its rows, their oracles, and resolving a choice."""

import dataclasses
import math

import numpy as np
import pytest

import kdloss
from kdloss import _divergences, reference
from kdloss._divergences import (
    DIVERGENCES,
    HINTON_TERMS,
    KERNEL_KL,
    KERNEL_MIXTURE,
    KERNEL_TVD,
    KL_FORM,
    REVERSE_KL_FORM,
    Divergence,
    KernelForm,
    resolve_divergence,
)


def pair(shape=(7, 11), seed=0):
    rng = np.random.default_rng(seed)
    teacher = 3 * rng.standard_normal(shape)
    return teacher + rng.standard_normal(shape), teacher


def test_kl_is_row_zero_of_the_kernel_without_parameters():
    kl = DIVERGENCES["kl"]
    assert (kl.name, kl.kernel_form(), kl.parameters, kl.parameter_ranges) == ("kl", KL_FORM, {}, {})
    assert KL_FORM.code == KERNEL_KL == 0 and KL_FORM.infinite_where_student_rules_out
    assert not KL_FORM.infinite_where_teacher_rules_out
    assert kl.oracle is reference.kl_rows and "KL" in kl.summary
    with pytest.raises(dataclasses.FrozenInstanceError):
        kl.kernel_form = None


def test_the_kernel_rows_are_the_kernels():
    from kdloss import _kernel

    assert {KERNEL_KL, KERNEL_MIXTURE, KERNEL_TVD} <= set(range(_kernel.DIVERGENCE_COUNT))


@pytest.mark.parametrize(("name", "beta", "form"), [
    ("reverse_kl", None, REVERSE_KL_FORM),
    ("jsd", 0.0, KL_FORM),
    ("jsd", 1.0, REVERSE_KL_FORM),
    ("jsd", 0.25, KernelForm(KERNEL_MIXTURE, (0.25, 0.25, 0.75))),
    ("skew_kl", 0.0, KL_FORM),
    ("skew_kl", 0.1, KernelForm(KERNEL_MIXTURE, (0.1, 1.0, 0.0))),
    ("skew_reverse_kl", 0.0, REVERSE_KL_FORM),
    ("skew_reverse_kl", 0.1, KernelForm(KERNEL_MIXTURE, (0.9, 0.0, 1.0))),
    ("tvd", None, KernelForm(KERNEL_TVD)),
])
def test_kernel_forms_and_where_they_are_infinite(name, beta, form):
    divergence, parameters = resolve_divergence(name, beta)
    assert divergence.kernel_form(**parameters) == form
    reverse = form.weights == (1.0, 0.0, 1.0)
    assert form.infinite_where_teacher_rules_out == reverse
    assert form.infinite_where_student_rules_out == (form == KL_FORM)


def test_reverse_kl_is_kl_of_the_exchanged_pair():
    """The engine runs reverse KL as KL with the roles exchanged: the same bits, gradients
    exchanged too (and the mixture form, which Hinton's loss takes, agrees to rounding)."""
    student, teacher = pair()
    reverse, d_student, d_teacher = kdloss.kd_loss_and_grad(
        student, teacher, 2.0, reduction="none", divergence="reverse_kl", teacher_grad=True)
    forward, d_teacher_kl, d_student_kl = kdloss.kd_loss_and_grad(
        teacher, student, 2.0, reduction="none", teacher_grad=True)
    np.testing.assert_array_equal(reverse, forward)
    np.testing.assert_array_equal(d_student, d_student_kl)
    np.testing.assert_array_equal(d_teacher, d_teacher_kl)
    labels = np.zeros(reverse.shape, dtype=np.int64)
    mixture = kdloss.hinton_loss(student, teacher, labels, 2.0, alpha=1.0, reduction="none",
                                 divergence="reverse_kl")
    np.testing.assert_allclose(mixture, reverse, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_every_row_is_complete(name):
    row = DIVERGENCES[name]
    assert row.name == name and row.summary
    assert isinstance(row.kernel_form(**row.parameters), KernelForm)
    assert set(row.parameters) == set(row.parameter_ranges)
    assert row.oracle.__module__ == row.gradient_oracle.__module__ == "kdloss.reference"
    for key, default in row.parameters.items():
        lo, hi = row.parameter_ranges[key]
        assert lo <= default <= hi


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_the_kl_oracle_is_t2_kl_per_row_in_float64(temperature):
    student, teacher = pair()
    rows = DIVERGENCES["kl"].oracle(student, teacher, temperature)
    assert rows.dtype == np.float64 and rows.shape == (7,)
    log_p = teacher / temperature - np.log(np.sum(np.exp(teacher / temperature), -1, keepdims=True))
    log_q = student / temperature - np.log(np.sum(np.exp(student / temperature), -1, keepdims=True))
    direct = temperature**2 * np.sum(np.exp(log_p) * (log_p - log_q), -1)
    np.testing.assert_allclose(rows, direct, rtol=1e-12)
    np.testing.assert_allclose(rows, kdloss.kd_loss(student, teacher, temperature, reduction="none"), rtol=1e-12)


def test_the_cross_entropy_term_oracle():
    term = HINTON_TERMS["cross_entropy"]
    assert (term.weight, term.at_temperature, term.needs) == ("1 - alpha", False, "labels")
    student, teacher = pair()
    labels = np.array([0, 3, -1, 10, 5, -1, 2])  # -1: ignored, as check_labels returns them
    rows = term.oracle(student, labels)
    want = np.log(np.sum(np.exp(student), -1)) - student[np.arange(7), np.maximum(labels, 0)]
    np.testing.assert_allclose(rows, np.where(labels >= 0, want, 0.0), rtol=1e-13)
    # Hinton's loss with alpha = 0 is the cross-entropy term alone.
    np.testing.assert_allclose(
        kdloss.hinton_loss(student, teacher, np.where(labels < 0, -100, labels), alpha=0.0, reduction="none"),
        rows, rtol=1e-13)
    assert HINTON_TERMS["divergence"].weight == "alpha" and HINTON_TERMS["divergence"].at_temperature


def test_resolve_the_default_and_by_name():
    assert resolve_divergence() == (DIVERGENCES["kl"], {})
    assert resolve_divergence("kl") == (DIVERGENCES["kl"], {})


@pytest.mark.parametrize("name", ["JSD", "KL", "", None, 0])
def test_unknown_divergence_lists_the_known_ones(name):
    known = "'kl', 'reverse_kl', 'jsd', 'skew_kl', 'skew_reverse_kl', 'tvd'"
    with pytest.raises(ValueError, match=f"divergence must be one of {known}; got " + repr(name).replace("(", r"\(")):
        resolve_divergence(name)


@pytest.mark.parametrize("beta", [0.5, 0.0, np.float64(0.25)])
def test_a_parameter_given_to_kl_is_refused_by_name(beta):
    with pytest.raises(ValueError) as info:
        resolve_divergence("kl", beta=beta)
    message = str(info.value)
    assert "'kl'" in message and "takes no parameters" in message and f"beta={float(beta)!r}" in message


@pytest.fixture
def with_a_parameter_row(monkeypatch):
    """A row with a parameter, as the next divergences (JSD(beta)) will add: one dict entry."""
    row = Divergence(name="test_jsd", kernel_form=lambda beta: KernelForm(99), parameters={"beta": 0.5},
                     parameter_ranges={"beta": (0.0, 1.0)}, oracle=reference.kl_rows,
                     gradient_oracle=reference.kl_row_grads, summary="a test row")
    monkeypatch.setitem(_divergences.DIVERGENCES, "test_jsd", row)
    return row


def test_a_row_with_a_parameter_takes_its_default_and_checks_its_range(with_a_parameter_row):
    assert resolve_divergence("test_jsd") == (with_a_parameter_row, {"beta": 0.5})
    assert resolve_divergence("test_jsd", beta=np.float32(0.25)) == (with_a_parameter_row, {"beta": 0.25})
    assert resolve_divergence("test_jsd", beta=1) == (with_a_parameter_row, {"beta": 1.0})
    for bad in (1.5, -0.1, math.nan, math.inf, np.float64(2.0)):
        with pytest.raises(ValueError) as info:
            resolve_divergence("test_jsd", beta=bad)
        assert str(info.value) == f"beta of divergence 'test_jsd' must be in [0.0, 1.0], got {float(bad)!r}"
    for bad in ("0.5", True, [0.5], 1j):
        with pytest.raises(TypeError, match="beta must be a real number"):
            resolve_divergence("test_jsd", beta=bad)
    with pytest.raises(ValueError, match="one of 'kl', .*, 'tvd', 'test_jsd'"):
        resolve_divergence("nope")


def test_the_engine_refuses_a_divergence_the_kernel_lacks(with_a_parameter_row):
    from kdloss import _engine

    student, teacher = pair()
    with pytest.raises(ValueError, match="'test_jsd'"):
        _engine.rows(student, teacher, 1.0, np.empty(7), 1, divergence=with_a_parameter_row)


BAD_CHOICES = [("nope", None), ("kl", 0.5), ("tvd", 0.0), ("reverse_kl", 1.0), ("jsd", 1.5), ("skew_kl", -0.1),
               ("skew_reverse_kl", math.nan)]


@pytest.mark.parametrize(("name", "beta"), BAD_CHOICES)
def test_the_oracle_refuses_what_the_kernel_refuses_with_the_same_message(name, beta):
    student, teacher = pair((2, 5))
    labels = [0, 1]
    calls = [("kd_loss", (student, teacher)), ("kd_loss_and_grad", (student, teacher)),
             ("hinton_loss", (student, teacher, labels)), ("hinton_loss_and_grad", (student, teacher, labels))]
    for function, args in calls:
        messages = []
        for module in (kdloss, reference):
            with pytest.raises(ValueError) as info:
                getattr(module, function)(*args, divergence=name, beta=beta)
            messages.append(str(info.value))
        assert messages[0] == messages[1] and repr(name) in messages[0], function


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_the_public_oracle_takes_every_divergence(name):
    """reference.kd_loss & co. with ``divergence=`` are the registry's oracles, reduced."""
    row = DIVERGENCES[name]
    student, teacher = pair()
    given = {"beta": 0.3} if row.parameters else {}
    rows = row.oracle(student, teacher, 2.0, **given)
    np.testing.assert_array_equal(reference.kd_loss(student, teacher, 2.0, reduction="none", divergence=name,
                                                    **given), rows)
    loss, d_s, d_t = reference.kd_loss_and_grad(student, teacher, 2.0, reduction="sum", teacher_grad=True,
                                                divergence=name, **given)
    want_rows, want_s, want_t = row.gradient_oracle(student, teacher, 2.0, **given)
    np.testing.assert_array_equal(want_rows, rows)
    assert loss == pytest.approx(math.fsum(rows), rel=1e-12)
    np.testing.assert_array_equal(d_s, want_s)
    np.testing.assert_array_equal(d_t, want_t)
    labels = np.arange(7) % 3
    hinton, h_s = reference.hinton_loss_and_grad(student, teacher, labels, 2.0, 1.0, reduction="sum",
                                                 divergence=name, **given)
    assert hinton == pytest.approx(loss, rel=1e-12) and np.allclose(h_s, d_s, rtol=1e-12, atol=1e-15)
    assert reference.hinton_loss(student, teacher, labels, 2.0, 1.0, reduction="sum", divergence=name,
                                 **given) == pytest.approx(loss, rel=1e-12)
    # Hinton's loss with this divergence: the kernel agrees with the oracle.
    got = kdloss.hinton_loss_and_grad(student, teacher, labels, 2.0, 0.3, teacher_grad=True, divergence=name,
                                      **given)
    want = reference.hinton_loss_and_grad(student, teacher, labels, 2.0, 0.3, teacher_grad=True, divergence=name,
                                          **given)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-14)
    # The kernel agrees (values and gradients; every invariant: test_tables.py).
    k_loss, k_s, k_t = kdloss.kd_loss_and_grad(student, teacher, 2.0, reduction="sum", teacher_grad=True,
                                               divergence=name, **given)
    assert k_loss == pytest.approx(loss, rel=1e-9)
    np.testing.assert_allclose(k_s, d_s, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(k_t, d_t, rtol=1e-9, atol=1e-14)


def test_reverse_kl_under_hintons_loss_keeps_its_special_values():
    """Under a cross-entropy term reverse KL takes the mixture row (the student's logits are
    read for the labels): its special rows agree with the exchanged KL's, a student class of
    negligible mass where the teacher masks it included (+inf, not an underflow to 0)."""
    from divergence_cases import MASKED_ROWS

    inf = math.inf
    rows = [(s, t) for s, t in MASKED_ROWS.values() if len(s) == 3 and "H" not in s + t]
    rows.append(([-1e4, 0, 0], [-inf, 0, 0]))
    student = np.array([s for s, _ in rows], dtype=np.float64)
    teacher = np.array([t for _, t in rows], dtype=np.float64)
    labels = np.zeros(len(rows), dtype=np.int64)
    for temperature in (1.0, 3.0):
        alone = kdloss.kd_loss(student, teacher, temperature, reduction="none", divergence="reverse_kl")
        mixed = kdloss.hinton_loss(student, teacher, labels, temperature, alpha=1.0, reduction="none",
                                   divergence="reverse_kl")
        np.testing.assert_allclose(mixed, alone, rtol=1e-13, atol=1e-300)
    assert alone[-1] == inf
