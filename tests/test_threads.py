"""Threads: resolution of num_threads, bitwise invariance, concurrency, GIL release, fork safety."""

import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import DTYPES

import kdloss
from kdloss import _threads


def random_pair(rows, classes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    teacher = (3 * rng.standard_normal((rows, classes))).astype(dtype)
    student = (teacher + rng.standard_normal((rows, classes))).astype(dtype)
    return student, teacher


# --- resolving num_threads ---------------------------------------------------------------------


@pytest.fixture
def four_cpus(monkeypatch):
    monkeypatch.setattr(_threads, "available_cpus", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


@pytest.mark.parametrize(
    ("requested", "resolved"), [(None, 4), (1, 1), (3, 3), (9, 9), (-1, 4), (-2, 3), (-4, 1), (-100, 1)]
)
def test_num_threads_counts_from_usable_cpus(four_cpus, requested, resolved):
    assert _threads.resolve_num_threads(requested) == resolved


@pytest.mark.parametrize(("env", "resolved"), [("3", 3), ("2,1", 2), ("", 4), ("junk", 4), ("0", 4)])
def test_omp_num_threads_sets_the_default(four_cpus, monkeypatch, env, resolved):
    monkeypatch.setenv("OMP_NUM_THREADS", env)
    assert _threads.resolve_num_threads(None) == resolved


def test_negative_counts_back_from_omp_num_threads(four_cpus, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert _threads.resolve_num_threads(-1) == 3
    assert _threads.resolve_num_threads(-2) == 2


def test_available_cpus_respects_affinity():
    assert 1 <= _threads.available_cpus() <= len(os.sched_getaffinity(0))


# --- one rule for every kernel call: a thread per MIN_ELEMENTS_PER_THREAD logits -------------------


def spy_on_kernel(monkeypatch):
    """The thread count each kernel entry point is handed from Python, by name. Calls one entry
    point makes to another (``kl_rows`` is ``loss_grad_rows`` without gradients) are not
    recorded: they are the kernel's own."""
    from kdloss import _kernel

    seen = []
    depth = [0]
    for name in ("kl_rows", "loss_grad_rows", "softmax_rows"):
        real = getattr(_kernel, name)

        def spy(*args, _real=real, _name=name):
            if depth[0] == 0:
                seen.append((_name, args[-1]))
            depth[0] += 1
            try:
                return _real(*args)
            finally:
                depth[0] -= 1

        monkeypatch.setattr(_kernel, name, spy)
    return seen


@pytest.mark.parametrize("shape, threads", [((2000, 4), 1), ((10, 1 << 14), 10), ((1 << 12, 1 << 4), 4)])
def test_every_kernel_call_uses_the_same_thread_rule(monkeypatch, shape, threads):
    student, teacher = random_pair(*shape, np.float32)
    seen = spy_on_kernel(monkeypatch)
    kdloss.kd_loss(student, teacher, reduction="none", num_threads=10000)
    kdloss.kd_loss_and_grad(student, teacher, num_threads=10000)
    kdloss.softmax(student, num_threads=10000)
    kdloss.log_softmax(student, num_threads=10000)
    assert [name for name, _ in seen] == ["kl_rows", "loss_grad_rows", "softmax_rows", "softmax_rows"]
    assert {count for _, count in seen} == {threads}
    assert _threads.threads_for(10000, *shape) == threads


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="counts threads in /proc")
def test_softmax_with_a_huge_thread_count_starts_no_thread_for_small_work():
    code = textwrap.dedent("""
        import os, numpy as np, kdloss
        x = np.random.default_rng(0).standard_normal((2000, 4))
        kdloss.softmax(x, num_threads=10000)
        kdloss.log_softmax(x, num_threads=10000)
        print(len(os.listdir("/proc/self/task")))
    """)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    threads = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env=environment).stdout
    assert int(threads) < 50  # was 2001: one thread per row


# --- results do not depend on the thread count ---------------------------------------------------
# For every divergence, input dtype, layout and kernel target: test_tables.py.


# --- concurrency and the GIL ----------------------------------------------------------------------


def test_concurrent_calls_from_python_threads():
    pairs = [random_pair(400, 100, DTYPES[i % 2], seed=i) for i in range(8)]
    expected = [kdloss.kd_loss(s, t, 3.0, reduction="none", num_threads=1) for s, t in pairs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            got = list(pool.map(lambda p: kdloss.kd_loss(*p, 3.0, reduction="none", num_threads=2), pairs))
            for g, e in zip(got, expected):
                np.testing.assert_array_equal(g, e)


def test_kernel_releases_the_gil():
    student, teacher = random_pair(4000, 1000, np.float64)
    progress = 0
    stop = threading.Event()

    def count():
        nonlocal progress
        while not stop.is_set():
            progress += 1

    counter = threading.Thread(target=count)
    counter.start()
    try:
        before = progress
        kdloss.kd_loss(student, teacher, num_threads=1)  # tens of ms of kernel work
        during = progress - before
    finally:
        stop.set()
        counter.join()
    # A kernel that held the GIL would leave the counter thread (almost) no chance to run.
    assert during > 1000


# --- fork safety ------------------------------------------------------------------------------------

FORK_CHILD_SCRIPT = textwrap.dedent(
    """
    import multiprocessing
    import numpy as np
    import kdloss

    rng = np.random.default_rng(0)
    teacher = rng.standard_normal((4000, 64))
    student = teacher + rng.standard_normal((4000, 64))
    expected = kdloss.kd_loss(student, teacher, 2.0, reduction="none", num_threads=2)  # parent runs OpenMP

    def child(num_threads):
        return kdloss.kd_loss(student, teacher, 2.0, reduction="none", num_threads=num_threads)

    if __name__ == "__main__":
        with multiprocessing.get_context("fork").Pool(2) as pool:
            results = pool.map(child, [None, 2, -1, 1])
        assert all(np.array_equal(r, expected) for r in results)
        # The parent keeps its threads after forking.
        assert np.array_equal(child(2), expected)
        print("fork ok")
    """
)


def run_script(script, timeout=120):
    """Run ``script`` in a fresh interpreter; a hang fails the test instead of blocking the run."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the child process hung for {timeout} s (fork after OpenMP deadlock?)")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_forked_child_after_parallel_use_is_correct_and_does_not_hang():
    assert "fork ok" in run_script(FORK_CHILD_SCRIPT)


TORCH_DATALOADER_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import torch
    import kdloss

    rng = np.random.default_rng(0)
    teacher = rng.standard_normal((8, 500, 64)).astype(np.float32)
    student = teacher + rng.standard_normal((8, 500, 64)).astype(np.float32)
    expected = kdloss.kd_loss(student, teacher, 2.0, reduction="none", num_threads=2)  # parent runs OpenMP

    class Blocks(torch.utils.data.Dataset):
        def __len__(self):
            return len(teacher)
        def __getitem__(self, i):
            # Many rows per item, so a worker would enter a parallel region.
            return torch.from_numpy(kdloss.kd_loss(student[i], teacher[i], 2.0, reduction="none", num_threads=2))

    loader = torch.utils.data.DataLoader(Blocks(), batch_size=2, num_workers=2, multiprocessing_context="fork")
    got = torch.cat(list(loader)).numpy()
    assert np.array_equal(got, expected)
    print("dataloader ok")
    """
)


def test_pytorch_dataloader_fork_workers():
    pytest.importorskip("torch")
    assert "dataloader ok" in run_script(TORCH_DATALOADER_SCRIPT)
