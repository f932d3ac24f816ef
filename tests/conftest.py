"""Shared test parameters: dtypes, memory layouts, thread counts and kernel targets."""

import zlib

import numpy as np
import pytest

from kdloss import _kernel

DTYPES = (np.float32, np.float64)
LAYOUTS = ("C", "F", "strided", "negative_strides", "readonly_memmap")
# 1 runs without a parallel region; 2 is this machine's cores; 3 and 7 oversubscribe and leave
# uneven static chunks.
THREAD_COUNTS = (1, 2, 3, 7)
# Every kernel target this build and CPU can run: "scalar" (libm), "baseline" (portable vector
# code), and "avx2" / "avx512" where the CPU has them. Modules that use the ``kernel_target``
# fixture run once per target.
KERNEL_TARGETS = tuple(_kernel.available_targets())


@pytest.fixture(params=KERNEL_TARGETS, scope="module")
def kernel_target(request):
    """Runs the module's tests with each kernel target in turn, then restores the default."""
    _kernel.select_target(request.param)
    yield request.param
    _kernel.select_target("auto")


def in_layout(array, layout, tmp_path):
    """A view of ``array``'s values in the given memory layout (same shape, same values)."""
    array = np.asarray(array)
    if layout == "C":
        return np.ascontiguousarray(array)
    if layout == "F":
        return np.asfortranarray(array)
    if layout == "strided":
        # Every other element along every axis of a larger buffer.
        big = np.zeros(tuple(2 * n for n in array.shape), dtype=array.dtype)
        view = big[tuple(slice(None, None, 2) for _ in array.shape)]
        view[...] = array
        return view
    if layout == "negative_strides":
        flipped = np.ascontiguousarray(array[tuple(slice(None, None, -1) for _ in array.shape)])
        return flipped[tuple(slice(None, None, -1) for _ in array.shape)]
    if layout == "readonly_memmap":
        path = tmp_path / f"logits_{id(array)}_{array.dtype}.npy"
        np.save(path, array)
        return np.load(path, mmap_mode="r")
    raise ValueError(layout)


@pytest.fixture
def layout_of(tmp_path):
    """``layout_of(array, layout)``: ``array`` in that layout (see ``in_layout``)."""
    return lambda array, layout: in_layout(array, layout, tmp_path)


def rng_for(*key):
    """A generator seeded by the case, so every case has its own fixed inputs."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))
