"""kdloss.torch.generalized_jsd_loss against TRL's ``GKDTrainer.generalized_jsd_loss``, written out
here from TRL's source (trl/trainer/gkd_trainer.py) so that TRL need not be installed: values and
gradients, float32 and float64, every reduction, with and without labels, beta 0 and 1 included."""

import inspect
import re

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from torch_reference import logits

import kdloss.torch as kdt

BETAS = (0.0, 0.1, 0.5, 0.9, 1.0)
REDUCTIONS = ("batchmean", "sum", "mean")


def trl_generalized_jsd_loss(student_logits, teacher_logits, labels=None, beta=0.5, temperature=1.0,
                             reduction="batchmean"):
    """TRL's formulation: log-softmax of both at T; the endpoints as one kl_div each, otherwise
    the mixture's log-probabilities by logsumexp and two kl_divs; element-wise values, the -100
    tokens dropped by boolean indexing, then TRL's reduction."""
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits / temperature, dim=-1)
    if beta == 0:
        elementwise = F.kl_div(log_q, log_p, reduction="none", log_target=True)  # KL(P || Q)
    elif beta == 1:
        elementwise = F.kl_div(log_p, log_q, reduction="none", log_target=True)  # KL(Q || P)
    else:
        beta = torch.tensor(beta, dtype=log_q.dtype)
        log_m = torch.logsumexp(torch.stack([log_q + torch.log(1 - beta), log_p + torch.log(beta)]), dim=0)
        elementwise = (beta * F.kl_div(log_m, log_p, reduction="none", log_target=True)
                       + (1 - beta) * F.kl_div(log_m, log_q, reduction="none", log_target=True))
    if labels is not None:
        mask = labels != -100
        elementwise = elementwise[mask]
    if reduction == "batchmean":
        return elementwise.sum() / (mask.sum() if labels is not None else elementwise.size(0))
    if reduction == "sum":
        return elementwise.sum()
    if reduction == "mean":
        return elementwise.mean()
    return elementwise


def tolerances(dtype):
    return {"rtol": 2e-5, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-11, "atol": 1e-14}


def token_labels(shape, seed=0):
    """Labels of ``shape`` (batch, sequence) with padding (-100) at the end of two sequences."""
    labels = torch.randint(0, 50, shape, generator=torch.Generator().manual_seed(seed))
    labels[0, -2:] = -100
    labels[-1, 1:] = -100
    return labels


def test_signature_is_trls():
    parameters = inspect.signature(kdt.generalized_jsd_loss).parameters
    assert list(parameters) == ["student_logits", "teacher_logits", "labels", "beta", "temperature", "reduction"]
    defaults = {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}
    assert defaults == {"labels": None, "beta": 0.5, "temperature": 1.0, "reduction": "batchmean"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("with_labels", [True, False], ids=["labels", "no-labels"])
@pytest.mark.parametrize("beta", BETAS)
def test_values_and_gradients_are_trls(dtype, reduction, with_labels, beta):
    """The loss and both gradients, with a non-unit upstream gradient, against TRL's formula in
    float64 (and so against TRL's own dtype: kdloss computes in double and rounds once)."""
    shape, temperature = (3, 5, 37), 2.0
    student = logits(shape, dtype, seed=1).requires_grad_()
    teacher = logits(shape, dtype, seed=2).requires_grad_()
    s64, t64 = (x.detach().double().requires_grad_() for x in (student, teacher))
    labels = token_labels(shape[:-1]) if with_labels else None
    loss = kdt.generalized_jsd_loss(student, teacher, labels, beta, temperature, reduction)
    expected = trl_generalized_jsd_loss(s64, t64, labels, beta, temperature, reduction)
    assert loss.dtype == dtype and loss.shape == ()
    torch.testing.assert_close(loss, expected.to(dtype), **tolerances(dtype))
    got = torch.autograd.grad(loss * 0.7, [student, teacher])
    want = torch.autograd.grad(expected * 0.7, [s64, t64])
    for g, w in zip(got, want):
        assert g.dtype == dtype
        torch.testing.assert_close(g, w.to(dtype), **tolerances(dtype))
    # TRL in the inputs' own dtype agrees too (float32: to its own rounding).
    same_dtype = trl_generalized_jsd_loss(student.detach(), teacher.detach(), labels, beta, temperature, reduction)
    torch.testing.assert_close(loss.detach(), same_dtype, rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=0)


@pytest.mark.parametrize("shape", [(6, 11), (2, 3, 4, 9), (13,)], ids=["2d", "4d", "1d"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_batchmean_divides_by_the_first_axis_without_labels(shape, reduction):
    """TRL's "batchmean" without labels divides by ``logits.shape[0]`` (the batch, not the tokens;
    for 1-D logits the vocabulary), whatever the number of axes."""
    student, teacher = logits(shape, seed=3), logits(shape, seed=4)
    loss = kdt.generalized_jsd_loss(student, teacher, None, 0.3, 1.5, reduction)
    torch.testing.assert_close(loss, trl_generalized_jsd_loss(student, teacher, None, 0.3, 1.5, reduction),
                               rtol=1e-11, atol=0)


def test_no_temperature_squared_factor():
    """TRL's value is kd_loss's divided by T^2."""
    student, teacher = logits((4, 9), seed=5), logits((4, 9), seed=6)
    for temperature in (0.5, 1.0, 3.0):
        ours = kdt.generalized_jsd_loss(student, teacher, None, 0.5, temperature, "sum")
        kd = kdt.kd_loss(student, teacher, temperature, "sum", divergence="jsd", beta=0.5)
        torch.testing.assert_close(ours, kd / temperature**2, rtol=1e-15, atol=0)


@pytest.mark.parametrize("reduction", ["batchmean", "mean"])
def test_no_kept_token_gives_zero_not_nan(reduction):
    """Every label -100: 0 (TRL's 0 / 0 is NaN) with zero gradients."""
    student = logits((2, 3, 5), seed=7).requires_grad_()
    labels = torch.full((2, 3), -100)
    loss = kdt.generalized_jsd_loss(student, logits((2, 3, 5), seed=8), labels, 0.5, 2.0, reduction)
    assert trl_generalized_jsd_loss(student, logits((2, 3, 5), seed=8), labels, 0.5, 2.0, reduction).isnan()
    assert loss.item() == 0.0
    loss.backward()
    assert (student.grad == 0).all()


def test_as_a_drop_in_static_method():
    """``GKDTrainer.generalized_jsd_loss = staticmethod(...)`` on a stand-in class: calls by keyword
    as TRL's compute_loss makes them."""

    class Trainer:
        generalized_jsd_loss = staticmethod(trl_generalized_jsd_loss)

        def compute(self, student, teacher, labels):
            return self.generalized_jsd_loss(student_logits=student, teacher_logits=teacher, labels=labels, beta=0.4)

    student, teacher, labels = logits((2, 4, 10), seed=9), logits((2, 4, 10), seed=10), token_labels((2, 4))
    before = Trainer().compute(student, teacher, labels)
    Trainer.generalized_jsd_loss = staticmethod(kdt.generalized_jsd_loss)
    torch.testing.assert_close(Trainer().compute(student, teacher, labels), before, rtol=1e-11, atol=0)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"reduction": "none"}, r'reduction="none" is not supported: TRL returns the element-wise'),
        ({"reduction": "avg"}, "reduction must be one of 'batchmean', 'sum', 'mean', 'none', got 'avg'"),
        ({"beta": 1.5}, r"beta of divergence 'jsd' must be in \[0.0, 1.0\], got 1.5"),
        ({"temperature": 0.0}, "temperature must be finite and > 0"),
    ],
)
def test_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        kdt.generalized_jsd_loss(logits((2, 3)), logits((2, 3)), **arguments)


@pytest.mark.parametrize("labels_shape", [(3, 2), (2,), (2, 3, 1), (1, 3)], ids=str)
def test_labels_of_another_shape_are_refused(labels_shape):
    """TRL's ``jsd[labels != -100]`` raises on such labels; kd_loss's weights would broadcast."""
    with pytest.raises(ValueError, match=r"labels must have the logits' shape without the vocabulary axis, "
                                         rf"\(2, 3\), got {re.escape(str(labels_shape))}"):
        kdt.generalized_jsd_loss(logits((2, 3, 5)), logits((2, 3, 5), seed=1), torch.zeros(labels_shape, dtype=int))


def test_compiles_without_graph_breaks():
    torch._dynamo.reset()
    student, teacher, labels = logits((2, 4, 10), seed=11).requires_grad_(), logits((2, 4, 10), seed=12), None
    labels = token_labels((2, 4))

    def step(student, teacher, labels):
        return (kdt.generalized_jsd_loss(student, teacher, labels, 0.3, 2.0)
                + kdt.generalized_jsd_loss(student, teacher, None, 0.7, 1.0, "mean"))

    eager = step(student, teacher, labels)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(student, teacher, labels)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    torch._dynamo.reset()
