"""A user's script, checked by ``mypy --strict`` in CI: kdloss's public API must type-check
clean, and the types must say what the calls return (``reveal_type`` is checked the same way)."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt

import kdloss
import kdloss.reference

rng = np.random.default_rng(0)
teacher: npt.NDArray[np.float32] = rng.standard_normal((8, 10), dtype=np.float32)
student = teacher + np.float32(0.5)
labels = rng.integers(0, 10, size=8)

# Reductions to a number give a float; "none" gives an array.
mean: float = kdloss.kd_loss(student, teacher, 2.0)
total: float = kdloss.kd_loss(student, teacher, 2.0, reduction="sum", num_threads=1)
per_row: np.ndarray = kdloss.kd_loss(student, teacher, 2.0, reduction="none")
weighted: float = kdloss.kd_loss(student, teacher, weights=np.ones(8), reduction="batchmean")
print(mean + total + weighted, per_row.shape)

rounded: float = kdloss.distillation_loss([1.0, 2.0], [1.5, 2.5], 1.0)
probabilities: np.ndarray = kdloss.softmax(teacher, temperature=2.0)
log_probabilities: np.ndarray = kdloss.log_softmax([[1.0, 2.0]], 2.0, num_threads=2)

loss, d_student = kdloss.kd_loss_and_grad(student, teacher, 2.0)
print(loss + 1.0, d_student.sum())
hinton: float = kdloss.hinton_loss(student, teacher, labels, 2.0, alpha=0.3)
hinton_rows: np.ndarray = kdloss.hinton_loss(student, teacher, labels, reduction="none")
h_loss, h_grad = kdloss.hinton_loss_and_grad(student, teacher, labels, 2.0)
print(h_loss + 1.0, h_grad.shape, hinton, hinton_rows)

oracle: float = kdloss.reference.kd_loss(student, teacher, 2.0)
oracle_rows: np.ndarray = kdloss.reference.kd_loss(student, teacher, 2.0, reduction="none")
oracle_p: np.ndarray = kdloss.reference.softmax(teacher, 2.0)
oracle_hinton: float = kdloss.reference.hinton_loss(student, teacher, labels, 2.0)
print(oracle + oracle_hinton, oracle_rows, oracle_p)

parallel: bool = kdloss.openmp_enabled()
report = io.StringIO()
kdloss.show_config(file=report)
kdloss.show_config()
version: str = kdloss.__version__
print(rounded, probabilities, log_probabilities, parallel, version)
