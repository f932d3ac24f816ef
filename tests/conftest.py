"""Shared test parameters: the project's tables (divergences, input dtypes, kernel targets),
memory layouts and thread counts."""

import zlib

import numpy as np
import pytest
from divergence_cases import CASES

from kdloss import _kernel
from kdloss._divergences import DIVERGENCES
from kdloss._dtypes import DTYPES as DTYPE_TABLE
from kdloss._dtypes import available_dtypes
from kdloss._threads import threads_for

# The dtypes the kernel computes in (tests of kernel paths); DTYPE_ROWS are every input dtype.
DTYPES = (np.float32, np.float64)
LAYOUTS = ("C", "F", "strided", "negative_strides", "readonly_memmap")
# 1 runs without a parallel region; 2 is this machine's cores; 3 and 7 oversubscribe and leave
# uneven static chunks.
THREAD_COUNTS = (1, 2, 3, 7)
# Every kernel target this build and CPU can run: "scalar" (libm), "baseline" (portable vector
# code), and "avx2" / "avx512" where the CPU has them. Modules that use the ``kernel_target``
# fixture run once per target.
KERNEL_TARGETS = tuple(_kernel.available_targets())


# Every input dtype of the dtype table whose package is installed (bfloat16 needs ml_dtypes).
DTYPE_ROWS = tuple(DTYPE_TABLE[name] for name in available_dtypes())


# A huge finite logit of each input dtype (keyed by np.dtype and by its type): 2 H / T stays
# finite in float64 for T >= 1/2, and H is held exactly by the dtype. float32's and float64's
# are those of the accuracy contract (README "Accuracy": 3e38 and 1e307).
HUGE = {np.dtype(row.numpy_dtype): float(np.finfo(row.numpy_dtype).max) / 8 for row in DTYPE_ROWS}
HUGE.update({np.dtype(np.float32): 3e38, np.dtype(np.float64): 1e307})
HUGE = {dtype: float(np.array(h, dtype)) for dtype, h in HUGE.items()}
HUGE.update({dtype.type: h for dtype, h in list(HUGE.items())})


@pytest.fixture(params=tuple(DIVERGENCES))
def divergence(request):
    """Each row of the divergence table (``kdloss._divergences.DIVERGENCES``) in turn."""
    return DIVERGENCES[request.param]


@pytest.fixture(params=tuple(CASES))
def case(request):
    """Each divergence case (divergence_cases.py: every row of the divergence table at its
    default parameters, and some rows at other parameters) in turn."""
    return CASES[request.param]


@pytest.fixture(params=tuple(DIVERGENCES))
def row_case(request):
    """The case of each row of the divergence table at its default parameters, for invariants
    that a parameter's value cannot change (layouts, thread counts: the same code either way)."""
    return CASES[request.param]


@pytest.fixture(params=DTYPE_ROWS, ids=lambda row: row.name)
def dtype_row(request):
    """Each input dtype of the dtype table (``kdloss._dtypes``) in turn."""
    return request.param


def result_row(row):
    """The dtype-table row of what an input of ``row`` returns (its tolerances: ``eps``)."""
    return DTYPE_TABLE[row.result_dtype.name]


def thread_counts_for(shape):
    """THREAD_COUNTS for inputs of ``shape`` that use more than one thread, else the default
    alone: a call too small to share (``threads_for``) runs on one thread whatever is asked."""
    n_classes = shape[-1]
    n_rows = int(np.prod(shape[:-1]))
    return THREAD_COUNTS if threads_for(max(THREAD_COUNTS), n_rows, n_classes) > 1 else (None,)


def share_of(items, kernel_target):
    """The kernel target's share of ``items``: every item runs on some target and every target
    runs ``len(items) / len(KERNEL_TARGETS)`` of them, taken along diagonals (item j goes to
    target ``(j + j // n) % n``) so that a share is not one value of the items' first factor.

    For variants whose full product with the targets repeats the same work on every target:
    reductions, weights and grad_output (what the Python layer hands the kernel), and input
    dtypes where the property is the row engine's (thread partitions).
    """
    n, i = len(KERNEL_TARGETS), KERNEL_TARGETS.index(kernel_target)
    share = [item for j, item in enumerate(items) if (j + j // n) % n == i]
    return share or [items[i % len(items)]]


@pytest.fixture
def short_bench_samples(monkeypatch):
    """kdloss bench with samples of 1 ms, not 20 (``timing.MIN_SAMPLE_SECONDS``): for tests of
    its tables and files, which do not need good timings."""
    from kdloss.bench import timing

    monkeypatch.setattr(timing, "MIN_SAMPLE_SECONDS", 0.001)


def rotated(items, kernel_target, dtype_row):
    """One of ``items`` for each (kernel target, input dtype): the pair's indices summed, modulo
    the count. Every item goes to some pair; every target meets each item when there are at
    least as many dtypes as items, and every dtype when there are as many targets. For parameters
    whose every value each (target, dtype) need not run, such as a special row's temperature,
    where running all would repeat the same kernel path."""
    index = KERNEL_TARGETS.index(kernel_target) + DTYPE_ROWS.index(dtype_row)
    return items[index % len(items)]


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
        # .npy records bfloat16 (ml_dtypes) as raw 2-byte records: view them as the dtype again.
        return np.load(path, mmap_mode="r").view(array.dtype)
    raise ValueError(layout)


@pytest.fixture
def layout_of(tmp_path):
    """``layout_of(array, layout)``: ``array`` in that layout (see ``in_layout``)."""
    return lambda array, layout: in_layout(array, layout, tmp_path)


def rng_for(*key):
    """A generator seeded by the case, so every case has its own fixed inputs."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))
