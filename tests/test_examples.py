"""The user's seed function, distillation_loss, on the user's examples."""

import math

import numpy as np
import pytest

import kdloss
from kdloss._demo import NONZERO_EXAMPLE, SEED_EXAMPLES

# The task document's three examples, (student, teacher, T), as it writes them; each gives 0.0000.
TASK_EXAMPLES = [
    ([1.0, 2.0], [1.5, 2.5], 1.0),
    ([0.5, 1.5, 2.5], [1.0, 2.0, 3.0], 2.0),
    ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], 1.0),
]


def test_the_demo_shows_the_task_documents_examples():
    assert list(SEED_EXAMPLES) == TASK_EXAMPLES


@pytest.mark.parametrize(("student", "teacher", "temperature"), TASK_EXAMPLES)
def test_task_examples_give_zero(student, teacher, temperature):
    loss = kdloss.distillation_loss(student, teacher, temperature=temperature)
    assert type(loss) is float
    assert loss == 0.0 and math.copysign(1.0, loss) == 1.0  # 0.0, never -0.0
    assert f"{loss:.4f}" == "0.0000"  # as the document writes it


def test_the_demos_nonzero_example_is_not_zero():
    student, teacher, temperature = NONZERO_EXAMPLE
    expected = kdloss.reference.kd_loss(student, teacher, temperature, reduction="sum")
    assert kdloss.distillation_loss(student, teacher, temperature) == round(expected, 4) > 0.1


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
