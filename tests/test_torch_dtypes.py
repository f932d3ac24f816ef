"""kdloss.torch on float16 and bfloat16 logits: values and gradients against float64 rounded to
the logits' dtype, autocast, opcheck and torch.compile."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from divergence_arguments import divergence_arguments, in_turn
from torch_reference import (
    IGNORE,
    REDUCTIONS,
    labels_for,
    logits,
    reference_hinton,
    reference_kd,
    weights_for,
)

import kdloss
import kdloss.torch as kdt
from kdloss import _kernel
from kdloss.torch import _ops, _two_byte

NARROW = (torch.float16, torch.bfloat16)


def rounded_once(values, dtype):
    """float64 ``values`` rounded to nearest in ``dtype``, chosen among torch's conversion and its
    two neighbours by distance in float64 (torch converts through float32: two roundings)."""
    first = values.to(dtype)
    candidates = torch.stack([torch.nextafter(first, torch.tensor(-torch.inf, dtype=dtype)), first,
                              torch.nextafter(first, torch.tensor(torch.inf, dtype=dtype))])
    distance = (candidates.double() - values).abs()
    distance = torch.where(torch.isnan(distance), torch.inf, distance)
    best = candidates.gather(0, distance.argmin(0, keepdim=True))[0]
    largest = torch.tensor(torch.finfo(dtype).max, dtype=dtype)
    overflow = largest.double() + (
        largest.double() - torch.nextafter(largest, torch.zeros((), dtype=dtype)).double()) / 2
    best = torch.where(values.abs() >= overflow, torch.copysign(torch.tensor(torch.inf), values).to(dtype), best)
    return torch.where(torch.isfinite(values), best, first)


def ulps_apart(got, want):
    """Distance in units in the last place of ``got``'s dtype (same sign, finite values)."""
    return (got.view(torch.int16).int() - want.view(torch.int16).int()).abs()


def test_rounding_once_where_torch_rounds_twice():
    """1 + 2^-8 + 2^-40 is just above bfloat16's halfway point between 1 and 1 + 2^-7: torch's
    float64 -> float32 -> bfloat16 ties to 1; once rounded it is 1 + 2^-7. So for float16 at
    1 + 2^-11 + 2^-40. Also: overflow, signs, NaN, tiny values."""
    for dtype, bits in ((torch.bfloat16, 8), (torch.float16, 11)):
        value = 1 + 2.0**-bits + 2.0**-40
        assert torch.tensor(value).to(dtype).item() == 1.0  # the double rounding this avoids
        assert _two_byte.loss_scalar(value, dtype).item() == 1 + 2.0 ** (1 - bits)
        assert _two_byte.loss_scalar(-value, dtype).item() == -(1 + 2.0 ** (1 - bits))
        assert _two_byte.loss_scalar(1 + 2.0**-bits, dtype).item() == 1.0  # an exact tie: to even
        for special in (0.0, -0.0, float("inf"), 1e300, 1e-300, 3.0):
            want = rounded_once(torch.tensor([special], dtype=torch.float64), dtype)
            assert torch.equal(_two_byte.loss_scalar(special, dtype).reshape(1), want), special
        assert _two_byte.loss_scalar(float("nan"), dtype).isnan()


def pair(shape, dtype, seed):
    student = logits(shape, torch.float64, seed).to(dtype).requires_grad_()
    teacher = logits(shape, torch.float64, seed + 1).to(dtype).requires_grad_()
    exact = [x.detach().double().requires_grad_() for x in (student, teacher)]
    return student, teacher, exact


@pytest.mark.parametrize("dtype", NARROW, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_name", ["kd", "hinton"])
def test_values_and_gradients_are_float64_rounded(dtype, reduction, loss_name):
    """The loss is float64's rounded once; per-row losses and gradients, rounded from the
    kernel's float32, are within one unit of that (exact but for a float32 value on a halfway
    point)."""
    student, teacher, (s64, t64) = pair((6, 9, 40), dtype, seed=3)
    labels = labels_for((6, 9), 40, ignored=[(0, 2)])
    weights = weights_for((6, 9))
    if loss_name == "kd":
        loss = kdt.kd_loss(student, teacher, 2.0, reduction, weights)
        expected = reference_kd(s64, t64, 2.0, reduction, weights)
    else:
        loss = kdt.hinton_loss(student, teacher, labels, 2.0, 0.4, IGNORE, reduction, weights.to(dtype))
        expected = reference_hinton(s64, t64, labels, 2.0, 0.4, reduction, weights.to(dtype).double())
    assert loss.dtype == dtype and loss.shape == expected.shape
    if reduction == "none":
        assert ulps_apart(loss, rounded_once(expected, dtype)).max() <= 1
    else:
        assert torch.equal(loss, rounded_once(expected.detach(), dtype))
    got = torch.autograd.grad(loss, [student, teacher], torch.ones_like(loss), retain_graph=True)
    want = torch.autograd.grad(expected, [s64, t64], torch.ones_like(expected))
    for g, w in zip(got, want):
        assert g.dtype == dtype
        rounded = rounded_once(w, dtype)
        assert ulps_apart(g, rounded).max() <= 1
        assert (g == rounded).double().mean() > 0.99
    # Another upstream gradient scales them in the logits' dtype, as PyTorch's chain rule does.
    upstream = logits(expected.shape, seed=9).to(dtype)
    scaled = torch.autograd.grad(loss, [student, teacher], upstream)
    for g, unit in zip(scaled, got):
        assert torch.equal(g, (upstream if reduction == "none" else upstream.expand(6, 9)).unsqueeze(-1) * unit)


@pytest.mark.parametrize("target", ["scalar", "auto"])
@pytest.mark.parametrize("dtype", NARROW, ids=str)
@pytest.mark.parametrize("ml_dtypes", [True, False], ids=["ml_dtypes", "without-ml_dtypes"])
def test_per_row_losses_and_gradients_are_rounded_once(dtype, ml_dtypes, target, monkeypatch, divergence):
    """Each per-row loss and gradient element is kdloss's float64 value on the widened logits
    rounded once to the logits' dtype (the NumPy layer hands float32 rounded to odd, so the second
    rounding is exact), bfloat16 read natively (ml_dtypes) or widened to float32 first alike;
    for every divergence. That holds exactly where the kernel computes in double (the scalar
    target); the vector targets' float32 arithmetic (within 1e-7 of the row's largest entry) can
    land on the neighbouring value where the exact one is that close to a rounding boundary."""
    if not ml_dtypes:
        monkeypatch.setattr(_two_byte, "_numpy_bfloat16", lambda: None)
    chosen = divergence_arguments(divergence)
    student, teacher, (s64, t64) = pair((64, 300), dtype, seed=4)
    want_loss, want_s, want_t = kdloss.kd_loss_and_grad(
        s64.detach().numpy(), t64.detach().numpy(), 3.0, reduction="none", teacher_grad=True, **chosen)
    _kernel.select_target(target)
    try:
        loss = kdt.kd_loss(student, teacher, 3.0, "none", **chosen)
        loss.sum().backward()
    finally:
        _kernel.select_target("auto")
    for got, want in ((loss.detach(), want_loss), (student.grad, want_s), (teacher.grad, want_t)):
        rounded = rounded_once(torch.from_numpy(want), dtype)
        if target == "scalar":
            assert torch.equal(got, rounded)
        else:
            assert ulps_apart(got, rounded).max() <= 1
            assert (got == rounded).double().mean() > 0.99


def test_autocast_forward_and_backward_on_a_small_model():
    """Under CPU autocast a model's logits are bfloat16; the losses run in float32 (as
    kl_div and cross_entropy do there) and gradients reach the model, as with PyTorch's
    formulation on the same float32 logits."""
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 10))
    teacher = nn.Linear(12, 10).requires_grad_(False)
    inputs = torch.randn(64, 12)
    labels = teacher(inputs).argmax(-1)
    labels[:3] = IGNORE

    def parameter_grads(loss_function):
        student.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            student_logits, teacher_logits = student(inputs), teacher(inputs)
            assert student_logits.dtype == teacher_logits.dtype == torch.bfloat16
            loss = loss_function(student_logits, teacher_logits)
        assert loss.dtype == torch.float32
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in student.parameters()]

    cases = {
        "hinton": (lambda s, t: kdt.HintonLoss(2.0, 0.5)(s, t, labels),
                   lambda s, t: reference_hinton(s.float(), t.float(), labels, 2.0, 0.5)),
        "kd": (lambda s, t: kdt.kd_loss(s, t, 2.0, weights=torch.ones(64, dtype=torch.bfloat16)),
               lambda s, t: reference_kd(s.float(), t.float(), 2.0)),
        "operator": (lambda s, t: torch.ops.kdloss.kd_loss(s, t, 2.0, "mean", None, "kl", None, True, False)[0],
                     lambda s, t: reference_kd(s.float(), t.float(), 2.0)),
        # Another divergence: the same float32 computation as on float32 logits made outside autocast.
        "jsd operator": (lambda s, t: torch.ops.kdloss.kd_loss(s, t, 2.0, "mean", None, "jsd", 0.3, True, False)[0],
                         lambda s, t: kdt.kd_loss(s.float(), t.float(), 2.0, divergence="jsd", beta=0.3)),
        "tvd": (lambda s, t: kdt.kd_loss(s, t, 2.0, divergence="tvd"),
                lambda s, t: kdt.kd_loss(s.float(), t.float(), 2.0, divergence="tvd")),
    }
    for name, (ours, theirs) in cases.items():
        got_loss, got = parameter_grads(ours)
        want_loss, want = parameter_grads(theirs)
        torch.testing.assert_close(got_loss, want_loss, rtol=1e-6, atol=1e-6, msg=name)
        for g, w in zip(got, want):  # through bfloat16 layers: bfloat16 differences
            torch.testing.assert_close(g, w, rtol=2e-2, atol=1e-3, msg=name)


def test_opcheck(divergence):
    # Each divergence in one of the 2-byte dtypes, in turn (the registration is the same for all).
    dtype = in_turn(NARROW, divergence)
    s3, t3 = logits((3, 4, 5), dtype, 3).requires_grad_(), logits((3, 4, 5), dtype, 4).requires_grad_()
    weights, labels = weights_for((3, 4)).to(dtype), labels_for((3, 4), 5)
    chosen = tuple(divergence_arguments(divergence).values())
    torch.library.opcheck(_ops.kd_loss_op, (s3, t3, 0.5, "none", weights, *chosen, True, True))
    torch.library.opcheck(_ops.kd_loss_op, (s3, t3.detach(), 2.0, "mean", None, *chosen, True, False))
    torch.library.opcheck(_ops.hinton_loss_op, (s3, t3, labels, 2.0, 0.3, IGNORE, "sum", weights, *chosen, True, True))


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# aot_eager traces the ops' fake kernels and autograd formulas as inductor does, without
# compiling the bfloat16 glue around them to C++ (17 s here); test_torch_training.py runs
# inductor itself.
@pytest.mark.usefixtures("fresh_dynamo")
def test_compiled_with_bfloat16():
    """torch.compile(fullgraph=True) on bfloat16 logits computes eager's bits."""
    student, teacher, _ = pair((8, 6, 16), torch.bfloat16, seed=5)
    labels = labels_for((8, 6), 16)

    def step(student, teacher):
        return (kdt.kd_loss(student, teacher, 2.0) + kdt.hinton_loss(student, teacher, labels, 2.0, 0.5)) * 0.5

    results = []
    for function in (step, torch.compile(step, fullgraph=True, backend="aot_eager")):
        student.grad = teacher.grad = None
        loss = function(student, teacher)
        loss.backward()
        assert loss.dtype == student.grad.dtype == torch.bfloat16
        results.append((loss.detach(), student.grad, teacher.grad))
    for eager, compiled in zip(*results):
        assert torch.equal(eager, compiled)


@pytest.mark.usefixtures("fresh_dynamo")
def test_compiled_under_autocast():
    torch.manual_seed(1)
    model = nn.Linear(8, 5)
    inputs, targets = torch.randn(16, 8), torch.randn(16, 5)

    def step(inputs, targets):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return kdt.kd_loss(model(inputs), targets, 2.0)

    results = []
    for function in (step, torch.compile(step, fullgraph=True, backend="aot_eager")):
        model.zero_grad()
        loss = function(inputs, targets)
        loss.backward()
        assert loss.dtype == torch.float32
        results.append((loss.detach(), model.weight.grad.clone()))
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)
