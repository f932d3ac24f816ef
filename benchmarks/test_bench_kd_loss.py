"""kdloss beside its peers, grouped by shape x dtype x threads (pytest-benchmark).

    pytest benchmarks                          # time everything (a few minutes)
    pytest benchmarks --benchmark-disable      # CI's quick mode: every body runs once
    KDLOSS_BENCH_SHAPES=issue pytest benchmarks --benchmark-group-by=group

Benchmarks are not tests: nothing asserts a time. A peer whose library is absent is skipped;
one that disagrees with kdloss fails rather than reporting a time for a different result.
"""

import functools

import pytest

from kdloss.bench import peers
from kdloss.bench.cases import DTYPES, TEMPERATURE, make_logits
from kdloss.bench.compare import DEFAULT_PEERS, peers_for

from .conftest import dtypes, machine, shapes, thread_counts


def _cases():
    """(shape, dtype, threads, peer), in an order that draws each input once."""
    for shape in shapes():
        for dtype in dtypes():
            one_call = shape[0] == 1
            # A single call runs on one thread whatever is asked: one thread count is enough.
            for threads in thread_counts()[-1:] if one_call else thread_counts():
                group = pytest.mark.benchmark(group=f"{shape[0]}x{shape[1]} {dtype} {threads} thread(s)")
                for peer in peers_for(DEFAULT_PEERS, one_call):
                    yield pytest.param(shape, dtype, threads, peer, marks=group,
                                       id=f"{shape[0]}x{shape[1]}-{dtype}-{threads}t-{peer}")


@functools.lru_cache(maxsize=1)  # one input pair alive at a time: the largest are 260 MB each
def _logits(shape, dtype):
    return make_logits(shape, DTYPES[dtype])


@functools.cache
def _kdloss_value(shape, dtype):
    student, teacher = _logits(shape, dtype)
    return peers.prepare("kdloss", student, teacher, TEMPERATURE, 1)()


@pytest.mark.parametrize(("shape", "dtype", "threads", "peer"), list(_cases()))
def test_kd_loss(benchmark, shape, dtype, threads, peer):
    spec = peers.PEERS[peer]
    if spec.requires:
        pytest.importorskip(spec.requires)
    student, teacher = _logits(shape, dtype)
    try:
        call = peers.prepare(peer, student, teacher, TEMPERATURE, threads)
    except peers.PeerSkipped as why:
        pytest.skip(str(why))

    value = call()  # checked once, untimed: a peer that computes something else is not reported
    if not spec.baseline and not peers.agrees(value, _kdloss_value(shape, dtype), student.dtype, peer):
        pytest.fail(f"{peer} gives {value!r}, kdloss {_kdloss_value(shape, dtype)!r}")

    info = machine()
    benchmark.extra_info.update({
        "cpu": info["cpu"], "cpu_flags": info["cpu_flags"], "threads": threads,
        "thread_settings": info["threads"], "versions": info["versions"],
        "kdloss_config": info["kdloss_config"], "elements": shape[0] * shape[1],
    })
    benchmark(call)
