"""kdloss.torch under torch.func: grad, vmap and their combinations (per-sample gradients,
Jacobians), against the same transforms of PyTorch's own formulation."""

import pytest

torch = pytest.importorskip("torch")
func = torch.func

from divergence_arguments import divergence_arguments
from torch_reference import IGNORE, REDUCTIONS, labels_for, logits, reference_hinton, reference_kd, weights_for

import kdloss
import kdloss.torch as kdt

# PyTorch's own kl_div has no batching rule (its formulation is the reference here).
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")

TOLERANCE = {"rtol": 1e-12, "atol": 1e-14}  # float64 throughout
SAMPLES, ROWS, CLASSES = 3, 4, 5


def losses(loss_name, reduction, labels=None, weights=None, temperature=2.0, alpha=0.3):
    """(kdloss's loss, PyTorch's formulation) as functions of (student, teacher)."""
    if loss_name == "kd":
        return (lambda s, t: kdt.kd_loss(s, t, temperature, reduction, weights),
                lambda s, t: reference_kd(s, t, temperature, reduction, weights))
    return (lambda s, t: kdt.hinton_loss(s, t, labels, temperature, alpha, IGNORE, reduction, weights),
            lambda s, t: reference_hinton(s, t, labels, temperature, alpha, reduction, weights))


def scalar(function, upstream):
    """``function`` made scalar: per-row losses weighed by ``upstream`` (not all ones)."""
    return lambda s, t: (function(s, t) * upstream).sum()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_name", ["kd", "hinton"])
def test_grad(loss_name, reduction):
    student, teacher = logits((ROWS, CLASSES), seed=1), logits((ROWS, CLASSES), seed=2)
    labels = labels_for((ROWS,), CLASSES, ignored=[(1,)])
    ours, theirs = losses(loss_name, reduction, labels, weights_for((ROWS,)))
    upstream = logits((ROWS,), seed=3) if reduction == "none" else 1.5
    got = func.grad(scalar(ours, upstream), argnums=(0, 1))(student, teacher)
    want = func.grad(scalar(theirs, upstream), argnums=(0, 1))(student, teacher)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOLERANCE)
    # A teacher that is not differentiated: only the student's gradient is computed.
    got_student = func.grad(scalar(ours, upstream))(student, teacher)
    torch.testing.assert_close(got_student, want[0], **TOLERANCE)


def test_grad_and_value_and_vjp():
    student, teacher = logits((ROWS, CLASSES), seed=1), logits((ROWS, CLASSES), seed=2)
    ours, theirs = losses("kd", "mean")
    (got_grad, got_value) = func.grad_and_value(ours)(student, teacher)
    (want_grad, want_value) = func.grad_and_value(theirs)(student, teacher)
    torch.testing.assert_close(got_value, want_value, **TOLERANCE)
    torch.testing.assert_close(got_grad, want_grad, **TOLERANCE)
    ours, theirs = losses("kd", "none")
    upstream = logits((ROWS,), seed=3)
    got = func.vjp(ours, student, teacher)[1](upstream)
    want = func.vjp(theirs, student, teacher)[1](upstream)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOLERANCE)


def batch_arguments(loss_name, batched_teacher, batched_per_row):
    """Inputs of SAMPLES samples: student (SAMPLES, ROWS, CLASSES); teacher, labels and weights
    batched too, or shared by every sample; and vmap's in_dims for (student, teacher, labels, weights)."""
    student = logits((SAMPLES, ROWS, CLASSES), seed=1)
    teacher = logits((SAMPLES, ROWS, CLASSES) if batched_teacher else (ROWS, CLASSES), seed=2)
    shape = (SAMPLES, ROWS) if batched_per_row else (ROWS,)
    labels = labels_for(shape, CLASSES, ignored=[(0, 1)] if batched_per_row else [(2,)])
    weights = weights_for(shape)
    if loss_name == "kd":
        labels = None
    return student, teacher, labels, weights, (0, 0 if batched_teacher else None, 0 if batched_per_row else None)


def call(loss_name, reduction, student, teacher, labels, weights, reference=False):
    if loss_name == "kd":
        return (reference_kd(student, teacher, 2.0, reduction, weights) if reference
                else kdt.kd_loss(student, teacher, 2.0, reduction, weights))
    return (reference_hinton(student, teacher, labels, 2.0, 0.3, reduction, weights) if reference
            else kdt.hinton_loss(student, teacher, labels, 2.0, 0.3, IGNORE, reduction, weights))


def vmapped(loss_name, reduction, arguments, in_dims, reference=False):
    student, teacher, labels, weights = arguments
    per_row = in_dims[2]
    return func.vmap(
        lambda s, t, y, w: call(loss_name, reduction, s, t, y, w, reference),
        in_dims=(in_dims[0], in_dims[1], per_row if labels is not None else None, per_row),
    )(student, teacher, labels, weights)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_name", ["kd", "hinton"])
@pytest.mark.parametrize("batched_teacher", [True, False], ids=["batched-teacher", "shared-teacher"])
@pytest.mark.parametrize("batched_per_row", [True, False], ids=["batched-weights", "shared-weights"])
def test_vmap_gives_each_sample_the_bits_of_its_own_call(loss_name, reduction, batched_teacher, batched_per_row):
    student, teacher, labels, weights, in_dims = batch_arguments(loss_name, batched_teacher, batched_per_row)
    got = vmapped(loss_name, reduction, (student, teacher, labels, weights), in_dims)
    for sample in range(SAMPLES):
        one = [x if x is None or dim is None else x[sample]
               for x, dim in zip((student, teacher, labels, weights), (*in_dims[:2], in_dims[2], in_dims[2]))]
        torch.testing.assert_close(got[sample], call(loss_name, reduction, *one), rtol=0, atol=0)
    want = vmapped(loss_name, reduction, (student, teacher, labels, weights), in_dims, reference=True)
    torch.testing.assert_close(got, want, **TOLERANCE)


def test_vmap_over_a_lower_rank_weight_and_a_non_leading_dimension():
    """Per-sample weights (ROWS,) broadcast over (tokens, ROWS) rows; the vmapped axis is the last
    but one of the logits."""
    student, teacher = logits((2, SAMPLES, ROWS, CLASSES), seed=1), logits((2, SAMPLES, ROWS, CLASSES), seed=2)
    weights = weights_for((ROWS, SAMPLES))
    for reduction in REDUCTIONS:
        def ours(s, t, w, reduction=reduction):
            return kdt.kd_loss(s, t, 2.0, reduction, w)

        def theirs(s, t, w, reduction=reduction):
            return reference_kd(s, t, 2.0, reduction, w.expand(2, ROWS))

        got = func.vmap(ours, in_dims=(1, 1, 1))(student, teacher, weights)
        want = func.vmap(theirs, in_dims=(1, 1, 1))(student, teacher, weights)
        torch.testing.assert_close(got, want, **TOLERANCE)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("loss_name", ["kd", "hinton"])
def test_per_sample_gradients(loss_name, reduction):
    """vmap(grad(...)): each sample's gradient of its own loss, both logits."""
    student, teacher, labels, weights, _ = batch_arguments(loss_name, True, True)
    upstream = logits((ROWS,), seed=4) if reduction == "none" else 1.0

    def gradients(reference):
        def loss(s, t, y, w):
            return (call(loss_name, reduction, s, t, y, w, reference) * upstream).sum()
        return func.vmap(func.grad(loss, argnums=(0, 1)), in_dims=(0, 0, 0 if labels is not None else None, 0))(
            student, teacher, labels, weights)

    for g, w in zip(gradients(False), gradients(True)):
        torch.testing.assert_close(g, w, **TOLERANCE)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_grad_of_vmap(reduction):
    """A gradient through a vmapped loss, with the teacher shared by every sample: its gradient
    sums over the samples."""
    student, teacher = logits((SAMPLES, ROWS, CLASSES), seed=1), logits((ROWS, CLASSES), seed=2)
    upstream = logits((SAMPLES, ROWS) if reduction == "none" else (SAMPLES,), seed=5)

    def total(loss):
        return lambda s, t: (func.vmap(loss, in_dims=(0, None))(s, t) * upstream).sum()

    ours, theirs = losses("kd", reduction)
    got = func.grad(total(ours), argnums=(0, 1))(student, teacher)
    want = func.grad(total(theirs), argnums=(0, 1))(student, teacher)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOLERANCE)


def test_jacobian_of_per_row_losses():
    """jacrev vmaps the backward over one-hot upstream gradients."""
    student, teacher = logits((ROWS, CLASSES), seed=1), logits((ROWS, CLASSES), seed=2)
    ours, theirs = losses("hinton", "none", labels_for((ROWS,), CLASSES))
    torch.testing.assert_close(func.jacrev(ours)(student, teacher), func.jacrev(theirs)(student, teacher), **TOLERANCE)


def test_vmap_under_ordinary_autograd():
    """vmap inside an ordinary autograd graph: .backward() reaches the batched logits."""
    student = logits((SAMPLES, ROWS, CLASSES), seed=1).requires_grad_()
    teacher = logits((SAMPLES, ROWS, CLASSES), seed=2)
    got = []
    for loss in losses("kd", "mean"):
        student.grad = None
        func.vmap(loss)(student, teacher).sum().backward()
        got.append(student.grad)
    torch.testing.assert_close(got[0], got[1], **TOLERANCE)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_vmap_over_the_operator_itself(reduction):
    """torch.ops.kdloss.* has the same vmap rule as the functions."""
    student, teacher, _, weights, _in_dims = batch_arguments("kd", True, True)
    got = func.vmap(lambda s, t, w: torch.ops.kdloss.kd_loss(s, t, 2.0, reduction, w, "kl", None, False, False)[0])(
        student, teacher, weights)
    want = func.vmap(lambda s, t, w: kdt.kd_loss(s, t, 2.0, reduction, w))(student, teacher, weights)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    "transform",
    [lambda f: func.grad(lambda s, t: func.grad(f)(s, t).sum()), lambda f: func.jacrev(func.jacrev(f))],
    ids=["grad-of-grad", "jacrev-of-jacrev"],
)
def test_second_derivatives_are_refused(transform):
    student, teacher = logits((ROWS, CLASSES), seed=1), logits((ROWS, CLASSES), seed=2)
    ours, _ = losses("kd", "mean")
    with pytest.raises(RuntimeError, match="first derivatives only"):
        transform(ours)(student, teacher)


# Forward mode imports a deprecated torch.jit API inside PyTorch.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_forward_mode_is_not_supported():
    """jvp, jacfwd and hessian (forward over reverse) need forward-mode AD, which the losses lack."""
    student, teacher = logits((ROWS, CLASSES), seed=1), logits((ROWS, CLASSES), seed=2)
    ours, _ = losses("kd", "mean")
    for transform in (func.jacfwd, func.hessian):
        with pytest.raises(RuntimeError, match="jvp function"):
            transform(ours)(student, teacher)


def test_vmap_and_per_sample_gradients_pass_the_divergence_on(divergence):
    """Each sample of vmap (per-row and reduced) and of vmap(grad) gets the bits of the NumPy
    layer's call on that sample with the same divergence and beta."""
    chosen = divergence_arguments(divergence)
    student, teacher = logits((SAMPLES, ROWS, CLASSES), seed=1), logits((SAMPLES, ROWS, CLASSES), seed=2)
    for reduction in ("none", "mean"):
        got = func.vmap(lambda s, t, reduction=reduction: kdt.kd_loss(s, t, 2.0, reduction, **chosen))(student, teacher)
        for sample in range(SAMPLES):
            want = kdloss.kd_loss(student[sample].numpy(), teacher[sample].numpy(), 2.0, reduction=reduction, **chosen)
            assert torch.equal(got[sample], torch.as_tensor(want, dtype=torch.float64))
    grads = func.vmap(func.grad(lambda s, t: kdt.kd_loss(s, t, 2.0, **chosen)))(student, teacher)
    for sample in range(SAMPLES):
        _, want = kdloss.kd_loss_and_grad(student[sample].numpy(), teacher[sample].numpy(), 2.0, **chosen)
        assert torch.equal(grads[sample], torch.from_numpy(want))
