"""What the build promises: IEEE arithmetic left intact, and an honest report of OpenMP."""

import sys

import numpy as np
import pytest

import kdloss

SMALLEST_SUBNORMAL = 5e-324


def test_import_leaves_subnormals_alone():
    # An extension built with -ffast-math sets flush-to-zero / denormals-are-zero for the whole
    # process when it is loaded; then these would be 0.
    assert SMALLEST_SUBNORMAL * 1.0 > 0.0
    assert np.float64(SMALLEST_SUBNORMAL) * np.float64(3.0) == 3 * SMALLEST_SUBNORMAL


def test_kernel_keeps_subnormal_probabilities():
    # exp(-740) is subnormal: a flushing kernel would return 0 for this class.
    p = kdloss.softmax(np.array([0.0, -740.0]))
    assert 0.0 < p[1] < np.finfo(np.float64).tiny


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/maps")
def test_openmp_report_matches_the_loaded_runtime():
    kdloss.kd_loss(np.zeros((4, 3)), np.ones((4, 3)), num_threads=2)
    with open("/proc/self/maps") as maps:
        text = maps.read()
    # Another package (PyTorch) may bring an OpenMP runtime too, so only one direction is certain.
    if kdloss.openmp_enabled():
        assert any(name in text for name in ("libgomp", "libomp", "libiomp")), "OpenMP build without a runtime"


def test_instruction_set_is_reported():
    from kdloss import _kernel

    assert _kernel.instruction_set().split()[0] in ("x86-64", "arm64", "portable")
