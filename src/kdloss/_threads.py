"""How many threads a call uses, and fork safety.

``num_threads=None`` means ``OMP_NUM_THREADS`` when it is set, otherwise the CPUs this
process may use (affinity mask and cgroup CPU quota), as scikit-learn's
``_openmp_effective_n_threads`` does. Negative values count back from that default.

A process forked after an OpenMP parallel region has run cannot use libgomp's thread pool
again: the child's first parallel region deadlocks (GCC bug 58378). ``os.register_at_fork``
marks the child, and kdloss then runs it single-threaded: the kernel's parallel region is
disabled by its ``if`` clause, so libgomp runs it on the calling thread without its pool.
Every forked child is marked, not only those of parents that ran kdloss in parallel: another
extension linked to the same libgomp may have started its thread pool.

Waiting: by default an OpenMP runtime's idle threads spin (libgomp: about 300,000 rounds) before
they sleep. On a machine whose cores other processes want, spinning threads take CPU time from
the thread that has the work, and a call on two threads can take ten times its one-thread time.
The runtime reads ``OMP_WAIT_POLICY`` once, when it is loaded, so :func:`import_kernel` loads it
with ``OMP_WAIT_POLICY=passive`` (threads sleep at once) and takes the variable out of the
environment again, so that child processes do not inherit it. It leaves the policy alone when the
user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``, and it cannot change it when an OpenMP
runtime was loaded before kdloss (PyTorch imported first, say).
"""

import functools
import importlib
import math
import os

from ._validation import check_num_threads

# Fewer elements than this per thread and a call runs on fewer threads: waking a thread costs
# microseconds, and far more when another process holds its core. Results are the same.
MIN_ELEMENTS_PER_THREAD = 1 << 14

_in_forked_child = False


def _mark_forked_child():
    global _in_forked_child
    _in_forked_child = True


os.register_at_fork(after_in_child=_mark_forked_child)


def _cgroup_cpu_limit():
    """The CPU quota of this process's cgroup (v2 or v1), or None when there is none."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        if quota > 0 and period > 0:
            return max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        pass
    return None


@functools.cache
def available_cpus():
    """CPUs this process may use: its affinity mask, capped by the cgroup CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return min(cpus, limit) if limit else cpus


def default_num_threads():
    """``OMP_NUM_THREADS`` (its first value) when set and valid, otherwise ``available_cpus()``."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return available_cpus()


def resolve_num_threads(num_threads):
    """The thread count for a call: None = default, negative counts back (-1 = all), 0 raises.

    This is what the caller allows; :func:`threads_for` is what one kernel call of a given size
    then uses."""
    num_threads = check_num_threads(num_threads)
    if _in_forked_child:
        return 1
    default = default_num_threads()
    if num_threads is None:
        return default
    if num_threads < 0:
        return max(1, default + 1 + num_threads)
    return num_threads


def threads_for(n_threads, n_rows, n_classes):
    """The threads one kernel call on ``n_rows x n_classes`` logits uses: at most ``n_threads``
    (resolved), and one per ``MIN_ELEMENTS_PER_THREAD`` logits. Every kernel call (losses,
    gradients, softmax) goes by it; results do not depend on it."""
    return max(1, min(n_threads, n_rows * n_classes // MIN_ELEMENTS_PER_THREAD))


# Variables that set how an OpenMP runtime's idle threads wait: the user's choice when set.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# Shared libraries of OpenMP runtimes (GCC, LLVM, Intel).
_RUNTIME_NAMES = ("libgomp", "libomp", "libiomp")

# How the OpenMP runtime's threads wait, as import_kernel found or set it (for show_config).
wait_policy = "not known yet"


def _openmp_runtime_loaded():
    """True when an OpenMP runtime is mapped into this process, None when that cannot be told
    (no /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as maps:
            return any(os.path.basename(line.split()[-1]).startswith(_RUNTIME_NAMES)
                       for line in maps if "/" in line)
    except OSError:
        return None


def import_kernel():
    """``kdloss._kernel``, imported so that an OpenMP runtime it loads waits passively (see the
    module's notes); records what was done in ``wait_policy``."""
    global wait_policy
    name = __package__ + "._kernel"
    chosen = [f"{v}={os.environ[v]}" for v in WAIT_VARIABLES if v in os.environ]
    if chosen:
        wait_policy = f"{', '.join(chosen)} (from the environment)"
        return importlib.import_module(name)
    if _openmp_runtime_loaded() is not False:
        wait_policy = "the runtime's default (an OpenMP runtime was loaded before kdloss)"
        return importlib.import_module(name)
    os.environ["OMP_WAIT_POLICY"] = "passive"
    try:
        kernel = importlib.import_module(name)
    finally:
        del os.environ["OMP_WAIT_POLICY"]
    wait_policy = "passive (set by kdloss when it loaded the OpenMP runtime)"
    return kernel
