"""JAX's CPU thread pool: sized once per process, before JAX first runs.

XLA's CPU client sizes its intra-op pool when it is created, from the environment variable
``PJRT_NPROC`` when set, otherwise from the CPUs in the process's affinity mask. The often
quoted ``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=N"`` does
not limit it in jaxlib 0.10 (measured: still ~2 CPUs busy with N = 1). So a process can time
JAX at one thread count only; ``kdloss bench --jax-threads`` picks it.
"""

import os
import sys

from .._threads import available_cpus

ENV = "PJRT_NPROC"


def jax_backend_started():
    """True when JAX has already created its CPU client in this process (its pool is fixed)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
    except ImportError:  # a JAX without this private module: assume the worst
        return True
    return bool(getattr(xla_bridge, "_backends", True))


def set_jax_threads(threads):
    """Ask for a JAX pool of ``threads``; returns the pool size JAX will really use."""
    if not jax_backend_started():
        os.environ[ENV] = str(int(threads))
    return jax_threads()


def jax_threads():
    """The JAX CPU pool size in this process (as set, or as JAX will choose it)."""
    value = os.environ.get(ENV, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else available_cpus()
