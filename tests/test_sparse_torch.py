"""kdloss.torch.sparse_kd_loss: the operator's registration (opcheck), gradients (gradcheck, and
the NumPy layer's), torch.compile, dtypes and reductions."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import kdloss
import kdloss.torch as kdt
from kdloss.torch._sparse import sparse_kd_loss_op


def inputs(rows=(3, 4), classes=20, k=5, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    teacher = 2 * torch.randn(*rows, classes, generator=generator, dtype=torch.float64)
    student = (teacher + torch.randn(*rows, classes, generator=generator, dtype=torch.float64)).to(dtype)
    logprobs, ids = torch.log_softmax(teacher, -1).topk(k, dim=-1)
    return student, ids, logprobs.to(dtype)


# Every tail and reduction; the dtypes in turn (each meets every tail and every reduction).
OPCHECK_CASES = [(tail, reduction, (torch.float32, torch.float64)[(i + j) % 2])
                 for i, tail in enumerate(("bucket", "zero", "renormalize"))
                 for j, reduction in enumerate(("mean", "none"))]


@pytest.mark.parametrize("tail, reduction, dtype", OPCHECK_CASES)
def test_opcheck(tail, reduction, dtype):
    student, ids, logprobs = inputs(dtype=dtype)
    weights = torch.rand(3, 4, dtype=dtype)
    for w in (None, weights):
        args = (student.requires_grad_(), ids, logprobs, 2.0, "logprobs", tail, "kl", None, reduction, w, True)
        torch.library.opcheck(sparse_kd_loss_op, args)


@pytest.mark.parametrize("tail", ["bucket", "zero", "renormalize"])
@pytest.mark.parametrize("divergence, beta", [("kl", None), ("jsd", 0.3), ("tvd", None)])
def test_gradcheck(tail, divergence, beta):
    student, ids, logprobs = inputs(rows=(2,), classes=8, k=3, seed=1)
    student.requires_grad_()
    for reduction in ("sum", "none"):
        torch.autograd.gradcheck(
            lambda s, reduction=reduction: kdt.sparse_kd_loss(s, ids, logprobs, 1.5, tail=tail,
                                                              divergence=divergence, beta=beta, reduction=reduction),
            (student,),
        )


def test_values_and_gradient_match_the_numpy_layer():
    student, ids, logprobs = inputs(dtype=torch.float32)
    student.requires_grad_()
    loss = kdt.sparse_kd_loss(student, ids, logprobs, 2.0)
    loss.backward()
    want, want_grad = kdloss.sparse_kd_loss_and_grad(student.detach().numpy(), ids.numpy(), logprobs.numpy(), 2.0)
    assert loss.dtype == torch.float32 and loss.item() == np.float32(want)
    np.testing.assert_array_equal(student.grad.numpy(), want_grad)


def test_compile():
    student, ids, logprobs = inputs()

    def step(s):
        return kdt.sparse_kd_loss(s, ids, logprobs, 2.0, tail="zero") * 3.0

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    s1, s2 = student.clone().requires_grad_(), student.clone().requires_grad_()
    step(s1).backward()
    compiled(s2).backward()
    torch.testing.assert_close(s2.grad, s1.grad, rtol=0, atol=0)


def test_bfloat16_student_and_errors():
    student, ids, logprobs = inputs(dtype=torch.bfloat16)
    loss = kdt.sparse_kd_loss(student, ids, logprobs)
    assert loss.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="infinite by construction"):
        kdt.sparse_kd_loss(student.float(), ids, logprobs.float(), tail="zero", divergence="reverse_kl")
    with pytest.raises(TypeError, match="CPU float32"):
        kdt.sparse_kd_loss(student.to(torch.int64), ids, logprobs)


def test_backward_scales_and_refuses_second_order():
    student, ids, logprobs = inputs()
    student.requires_grad_()
    loss = kdt.sparse_kd_loss(student, ids, logprobs, 2.0, reduction="none")
    upstream = torch.rand(loss.shape, dtype=loss.dtype)
    (grad,) = torch.autograd.grad(loss, student, upstream)
    _, want = kdloss.sparse_kd_loss_and_grad(student.detach().numpy(), ids.numpy(), logprobs.numpy(), 2.0,
                                             reduction="none", grad_output=upstream.numpy())
    np.testing.assert_allclose(grad.numpy(), want, rtol=1e-14, atol=1e-300)
    loss = kdt.sparse_kd_loss(student, ids, logprobs, 2.0)
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(loss, student, create_graph=True)
