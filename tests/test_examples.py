"""The user's seed function, distillation_loss, on the user's examples."""

import math

import numpy as np
import pytest

import kdloss
from kdloss._demo import SEED_EXAMPLES


@pytest.mark.parametrize(("student", "teacher", "temperature"), SEED_EXAMPLES)
def test_seed_examples_give_zero(student, teacher, temperature):
    loss = kdloss.distillation_loss(student, teacher, temperature=temperature)
    assert type(loss) is float
    assert loss == 0.0 and math.copysign(1.0, loss) == 1.0  # 0.0, never -0.0


@pytest.mark.parametrize("container", [list, tuple, np.array])
def test_accepts_sequences_and_arrays(container):
    student, teacher = [0.1, 2.0, -1.0, 0.5], [1.0, 0.2, -0.3, 0.0]
    expected = round(kdloss.reference.kd_loss(student, teacher, 2.5, reduction="sum"), 4)
    assert kdloss.distillation_loss(container(student), container(teacher), 2.5) == expected
    assert expected > 0.01  # the example is not trivially zero


def test_rounds_to_four_decimals_of_the_full_loss():
    student, teacher = [0.0, 1.0, 2.0], [2.0, 1.0, 0.0]
    full = kdloss.kd_loss(student, teacher, reduction="sum")
    assert kdloss.distillation_loss(student, teacher) == round(full, 4) != full
