"""The loss and its gradient beside pure PyTorch, forward + backward (pytest-benchmark).

    pytest benchmarks/test_bench_training.py --benchmark-group-by=group
    pytest benchmarks --benchmark-disable      # CI's quick mode: every body runs once

The same bodies as ``python benchmarks/training.py``, which prints the ratios in one table.
Each kdloss body is checked against its pure-PyTorch twin before it is timed.
"""

import functools

import numpy as np
import pytest

from . import training
from .conftest import dtypes

torch = pytest.importorskip("torch")

SHAPES = ((1024, 1000), (128, 32000))


@functools.lru_cache(maxsize=1)
def _bodies(shape, dtype):
    student, teacher, labels = training.make_inputs(shape, np.dtype(dtype).type)
    bodies = {**training.numpy_bodies(student, teacher, torch.get_num_threads()),
              **training.torch_bodies(student, teacher, labels)}
    training.check_agreement({k: v for k, v in bodies.items() if "fwd+bwd" in k}, np.dtype(dtype).type)
    return bodies


BODY_NAMES = tuple(training.numpy_bodies(None, None, 1)) + (
    "kdloss.torch.kd_loss fwd+bwd", "PyTorch kl_div fwd+bwd",
    "kdloss.torch.hinton_loss fwd+bwd", "PyTorch kl_div + cross_entropy fwd+bwd",
)


@pytest.mark.parametrize("body", BODY_NAMES)
@pytest.mark.parametrize("dtype", dtypes())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: f"{shape[0]}x{shape[1]}")
def test_training_step(benchmark, shape, dtype, body):
    benchmark.group = f"training {shape[0]}x{shape[1]} {dtype}"
    benchmark(_bodies(shape, dtype)[body])
