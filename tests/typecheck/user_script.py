"""A user's script, checked by ``mypy --strict`` in CI (.ci/run): kdloss's public API must
type-check clean, and ``assert_type`` pins what each call returns. It runs too."""

from __future__ import annotations

import io
from typing import assert_type

import dask.array as da
import numpy as np
import torch

import kdloss
import kdloss.dask
import kdloss.reference
import kdloss.torch

rng = np.random.default_rng(0)
teacher = rng.standard_normal((8, 10), dtype=np.float32)
student = teacher + np.float32(0.5)
labels = rng.integers(0, 10, size=8)

# A reduction to one number gives a float; "none" gives an array.
assert_type(kdloss.kd_loss(student, teacher, 2.0), float)
assert_type(kdloss.kd_loss(student, teacher, 2.0, reduction="sum", num_threads=1), float)
assert_type(kdloss.kd_loss(student, teacher, weights=np.ones(8), reduction="batchmean"), float)
per_row = assert_type(kdloss.kd_loss(student, teacher, 2.0, reduction="none"), np.ndarray)
print(per_row.shape, kdloss.kd_loss([1.0, 2.0], [2.0, 1.0]) + 1.0)

assert_type(kdloss.distillation_loss([1.0, 2.0], [1.5, 2.5], 1.0), float)
assert_type(kdloss.softmax(teacher, temperature=2.0), np.ndarray)
assert_type(kdloss.log_softmax([[1.0, 2.0]], 2.0, num_threads=2), np.ndarray)

# teacher_grad decides the tuple's length.
loss, d_student = kdloss.kd_loss_and_grad(student, teacher, 2.0)
assert_type(loss, float)
losses, d_student, d_teacher = kdloss.kd_loss_and_grad(student, teacher, 2.0, reduction="none", teacher_grad=True)
assert_type(losses, np.ndarray)
assert_type(d_teacher, np.ndarray)
assert_type(kdloss.hinton_loss(student, teacher, labels, 2.0, alpha=0.3), float)
assert_type(kdloss.hinton_loss(student, teacher, labels, reduction="none"), np.ndarray)
h_loss, h_grad = kdloss.hinton_loss_and_grad(student, teacher, labels, 2.0)
assert_type(h_loss, float)
print(loss + h_loss, d_student.shape, h_grad.shape)

# A reduction only known at run time: either type.
reduction: kdloss._api.Reduction = "mean" if rng.random() < 2 else "none"
assert_type(kdloss.kd_loss(student, teacher, reduction=reduction), float | np.ndarray)

# The oracle has the same types.
assert_type(kdloss.reference.kd_loss(student, teacher, 2.0), float)
assert_type(kdloss.reference.kd_loss(student, teacher, 2.0, reduction="none"), np.ndarray)
assert_type(kdloss.reference.softmax(teacher, 2.0), np.ndarray)
assert_type(kdloss.reference.hinton_loss(student, teacher, labels, 2.0), float)
r_loss, r_grad = kdloss.reference.kd_loss_and_grad(student, teacher, 2.0)
assert_type(r_loss, float)

# A sparse (top-k) teacher.
top_ids = np.argsort(-teacher, axis=-1)[..., :2]
top_logprobs = np.full(top_ids.shape, -1.5)
assert_type(kdloss.sparse_kd_loss(student, top_ids, top_logprobs, 2.0), float)
assert_type(kdloss.sparse_kd_loss(student, top_ids, top_logprobs, 2.0, tail="zero", reduction="none"), np.ndarray)
sparse_loss, sparse_grad = kdloss.sparse_kd_loss_and_grad(student, top_ids, top_logprobs, 2.0)
assert_type(sparse_loss, float)
assert_type(sparse_grad, np.ndarray)

assert_type(kdloss.openmp_enabled(), bool)
report = io.StringIO()
kdloss.show_config(file=report)
assert_type(kdloss.__version__, str)

# PyTorch and Dask front ends. (nn.Module.__call__ is typed Any by PyTorch, so forward is checked.)
s = torch.tensor(student, requires_grad=True)
t = torch.tensor(teacher)
criterion = kdloss.torch.KDLoss(temperature=2.0)
assert_type(criterion.forward(s, t), torch.Tensor)
assert_type(kdloss.torch.kd_loss(s, t, 2.0, "none"), torch.Tensor)
hinton = kdloss.torch.HintonLoss(temperature=2.0, alpha=0.5)
assert_type(hinton.forward(s, t, torch.as_tensor(labels)), torch.Tensor)
assert_type(kdloss.torch.hinton_loss(s, t, torch.as_tensor(labels), 2.0), torch.Tensor)
jsd = kdloss.torch.KDLoss(temperature=2.0, divergence="jsd", beta=0.5)
assert_type(jsd.forward(s, t), torch.Tensor)
assert_type(kdloss.torch.kd_loss(s, t, 2.0, divergence="tvd"), torch.Tensor)
assert_type(kdloss.torch.hinton_loss(s, t, torch.as_tensor(labels), divergence="skew_kl", beta=0.2), torch.Tensor)
assert_type(kdloss.dask.kd_loss(student, teacher, divergence="reverse_kl"), da.Array)
assert_type(kdloss.torch.generalized_jsd_loss(s, t, None, 0.5, 2.0, "sum"), torch.Tensor)
assert_type(kdloss.torch.sparse_kd_loss(s, torch.as_tensor(top_ids), torch.as_tensor(top_logprobs), 2.0),
            torch.Tensor)
lazy = kdloss.dask.kd_loss(student, teacher, 2.0)  # NumPy inputs become one chunk each
assert_type(lazy, da.Array)
value = lazy.compute()  # type: ignore[no-untyped-call]  # Dask's own compute() is untyped
print(float(value), report.getvalue().splitlines()[0])
