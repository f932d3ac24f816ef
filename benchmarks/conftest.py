"""Settings of the pytest-benchmark suite, read from the environment.

    KDLOSS_BENCH_SHAPES   ROWSxCLASSES list, or "issue" for the issue's shapes
                          (default: smaller shapes of the same kinds, quick enough for CI)
    KDLOSS_BENCH_DTYPES   default float32,float64
    KDLOSS_BENCH_THREADS  default 1 and kdloss's default thread count
    KDLOSS_BENCH_JAX_THREADS  JAX's pool, fixed per process (default: kdloss's default thread count)

JAX's pool is sized when JAX first runs, so it is set here, before any benchmark imports JAX.
"""

import functools
import os

from kdloss._threads import default_num_threads
from kdloss.bench.cases import ISSUE_SHAPES, parse_shape
from kdloss.bench.jax_threads import set_jax_threads
from kdloss.bench.machine import describe

# The issue's kinds of shape at about a tenth of the size: batch, LLM vocabulary, short rows, one call.
QUICK_SHAPES = ((1024, 1000), (128, 32000), (100_000, 10), (1, 3))


def _list(name, default):
    value = os.environ.get(name, "").strip()
    return [part.strip() for part in value.split(",") if part.strip()] if value else default


def shapes():
    value = os.environ.get("KDLOSS_BENCH_SHAPES", "").strip()
    if value == "issue":
        return ISSUE_SHAPES
    return tuple(parse_shape(part) for part in value.split(",")) if value else QUICK_SHAPES


def dtypes():
    return tuple(_list("KDLOSS_BENCH_DTYPES", ["float32", "float64"]))


def thread_counts():
    default = [str(n) for n in dict.fromkeys((1, default_num_threads()))]
    return tuple(int(n) for n in _list("KDLOSS_BENCH_THREADS", default))


JAX_THREADS = set_jax_threads(int(os.environ.get("KDLOSS_BENCH_JAX_THREADS", default_num_threads())))


@functools.cache
def machine():
    """CPU, versions and thread settings, recorded in every benchmark's extra_info."""
    return describe()
