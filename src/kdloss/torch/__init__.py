"""PyTorch autograd for kdloss's losses: ``kd_loss``, ``hinton_loss``, ``KDLoss``, ``HintonLoss``,
and TRL's ``generalized_jsd_loss`` (a drop-in for ``trl.GKDTrainer.generalized_jsd_loss``).

    import kdloss.torch as kdt
    loss = kdt.kd_loss(student_logits, teacher_logits, temperature=2.0)
    loss.backward()

The losses are custom operators (``torch.ops.kdloss.kd_loss``, ``torch.ops.kdloss.hinton_loss``)
with fake (meta) implementations and autograd formulas, so they work in eager mode and under
``torch.compile(fullgraph=True)``. The forward pass runs kdloss's fused kernel once, on the
tensors' memory (no copies, any strides), and computes the loss together with the gradients
that will be needed: the student's when it requires grad, the teacher's too when the teacher
requires grad (mutual learning). The backward pass scales those saved gradients, or hands them
over as they are after ``loss.backward()``. Gradients are first order only (no
``create_graph=True``). Weights, labels and the temperature are constants: no gradient flows
to them.

Supported: CPU tensors of float32, float64, float16 or bfloat16 (student and teacher of the
same dtype), any shape ``(..., classes)``; the kernel reads 2-byte logits in place (bfloat16
with ml_dtypes installed), computes in float32, and the results are rounded back. Under
``torch.autocast("cpu")`` 2-byte logits are cast to float32 first, as for PyTorch's own losses.
Other devices and dtypes raise TypeError.

``torch.func`` transforms work on the functions and modules: ``grad``, ``vjp``, ``jacrev``,
``vmap`` and their combinations (``vmap(grad(...))`` for per-sample gradients); first
derivatives only, reverse mode only.

Threads: each call uses ``torch.get_num_threads()`` OpenMP threads, so ``torch.set_num_threads``
sets kdloss's threads too (results are the same for every thread count).

Needs PyTorch (>= 2.4): ``pip install "kdloss[torch]"``, or a CPU build (``pip install torch
--index-url https://download.pytorch.org/whl/cpu``). ``import kdloss`` alone never imports torch.
"""

try:
    import torch  # noqa: F401  (absolute: the top-level PyTorch, not this package)
except ModuleNotFoundError as error:
    if error.name != "torch":
        raise  # PyTorch is there but broken: show why
    raise ImportError(
        "kdloss.torch needs PyTorch: pip install 'kdloss[torch]', or for the CPU build "
        "pip install torch --index-url https://download.pytorch.org/whl/cpu"
    ) from error

from ._modules import HintonLoss, KDLoss
from ._ops import hinton_loss, kd_loss
from ._sparse import sparse_kd_loss
from ._trl import generalized_jsd_loss

__all__ = ["HintonLoss", "KDLoss", "generalized_jsd_loss", "hinton_loss", "kd_loss", "sparse_kd_loss"]
