"""kdloss beside its neighbours: SciPy's definitions, PyTorch CPU tensors as input, README's tour."""

import re
from pathlib import Path

import numpy as np
import pytest

import kdloss

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_matches_scipy_entropy(temperature):
    special = pytest.importorskip("scipy.special")
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    teacher, student = rng.standard_normal((2, 50, 11)) * 2
    teacher[:, 3] = -np.inf  # masked class: SciPy's rel_entr(0, q) = 0 as well
    expected = temperature**2 * stats.entropy(
        special.softmax(teacher / temperature, axis=-1), special.softmax(student / temperature, axis=-1), axis=-1
    )
    got = kdloss.kd_loss(student, teacher, temperature, reduction="none")
    np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_accepts_pytorch_cpu_tensors(dtype):
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(6, 40, 33, generator=gen, dtype=getattr(torch, dtype))
    student = teacher + torch.randn(6, 40, 33, generator=gen, dtype=getattr(torch, dtype))
    student_t = student.transpose(0, 1)  # non-contiguous tensor
    teacher_t = teacher.transpose(0, 1)
    got = kdloss.kd_loss(student_t, teacher_t, 2.0, reduction="none")
    np.testing.assert_array_equal(got, kdloss.kd_loss(student_t.numpy(), teacher_t.numpy(), 2.0, reduction="none"))
    assert got.dtype == np.dtype(dtype) and got.shape == (40, 6)
    # PyTorch's own formulation, for the same quantity (looser: PyTorch cancels near zero KL).
    expected = torch.nn.functional.kl_div(
        torch.log_softmax(student_t / 2.0, -1), torch.log_softmax(teacher_t / 2.0, -1),
        log_target=True, reduction="none",
    ).sum(-1) * 4.0
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4 if dtype == "float32" else 1e-10)


def test_readme_tour_runs():
    tour = re.search(r"## A short tour\n\n```python\n(.*?)```", README.read_text(), re.DOTALL).group(1)
    namespace = {}
    exec(compile(tour, str(README), "exec"), namespace)  # noqa: S102 - the README's own example
    # The tour's commented results are what the code returns.
    for call, value in re.findall(r"^(kdloss\.distillation_loss\(.*\))\s+# ([-\d.]+)", tour, re.MULTILINE):
        assert eval(call, namespace) == float(value), call
