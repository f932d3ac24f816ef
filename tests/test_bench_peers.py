"""kdloss bench's peers compute the same loss as kdloss; absent or mismatched ones are reported, not timed."""

import importlib.util

import numpy as np
import pytest
from conftest import DTYPES

import kdloss
from kdloss.bench import compare, peers
from kdloss.bench.cases import make_logits
from kdloss.bench.jax_threads import jax_threads

# Tables and files are checked here, not timings: short samples (conftest.py).
pytestmark = pytest.mark.usefixtures("short_bench_samples")

SHAPES = ((1, 3), (7, 5), (3, 2000))


def _agreement_cases():
    """(peer, dtype, shape); distillation_loss takes one pair of vectors, so single calls only."""
    for peer in peers.LOSS_PEERS:
        for dtype in DTYPES:
            for shape in SHAPES[:1] if peers.PEERS[peer].one_call_only else SHAPES:
                yield pytest.param(peer, dtype, shape, id=f"{peer}-{np.dtype(dtype).name}-{shape[0]}x{shape[1]}")


@pytest.mark.parametrize(("peer", "dtype", "shape"), list(_agreement_cases()))
def test_every_installed_peer_agrees_with_kdloss(peer, dtype, shape):
    spec = peers.PEERS[peer]
    if spec.requires:
        pytest.importorskip(spec.requires)
    student, teacher = make_logits(shape, dtype)
    threads = jax_threads()  # JAX's pool is fixed per process: run every peer at its size
    value = peers.prepare(peer, student, teacher, 4.0, threads)()
    expected = kdloss.kd_loss(student, teacher, 4.0)
    assert isinstance(value, float)
    assert peers.agrees(value, expected, student.dtype, peer), (value, expected)
    # And kdloss is what the oracle says, so agreeing with kdloss means computing the KD loss.
    assert expected == pytest.approx(kdloss.reference.kd_loss(student, teacher, 4.0), rel=1e-6)


@pytest.mark.parametrize("peer", peers.BASELINES)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_baselines_run_on_batches_only(peer, threads):
    student, teacher = make_logits((7, 5), "float32")
    value = peers.prepare(peer, student, teacher, 4.0, threads)()
    if peer == "read":  # the sum of both inputs, whatever the split over threads
        assert value == pytest.approx(float(student.sum(dtype=np.float64) + teacher.sum(dtype=np.float64)), rel=1e-5)
    assert not peers.PEERS[peer].applies_to(make_logits((1, 3), "float32")[0])


@pytest.mark.parametrize(
    ("value", "expected", "dtype", "peer", "agree"),
    [(1.00009, 1.0, np.float32, "torch", True), (1.0002, 1.0, np.float32, "torch", False),
     (1.0 + 1e-11, 1.0, np.float64, "jax", True), (1.0 + 1e-9, 1.0, np.float64, "jax", False),
     (0.1197, 0.11967427, np.float64, "distillation_loss", True),
     (0.1198, 0.11967427, np.float64, "distillation_loss", False)],
)
def test_agreement_tolerances(value, expected, dtype, peer, agree):
    assert peers.agrees(value, expected, dtype, peer) is agree


def test_an_absent_library_is_reported_not_installed(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
    student, teacher = make_logits((4, 5), "float32")
    with pytest.raises(peers.NotInstalled, match="torch is not installed"):
        peers.prepare("torch", student, teacher, 4.0, 1)
    case = compare.run_case(student, teacher, "float32", 1, compare.Settings(repeat=1, peers=("kdloss", "torch")))
    assert case.cells["torch"].status == "not installed" and case.cells["torch"].stats is None
    assert case.cells["kdloss"].stats is not None


def test_a_peer_that_disagrees_is_not_timed(monkeypatch):
    wrong = peers.Peer("numpy", "NumPy oracle", None, lambda s, t, T, k: lambda: 2 * kdloss.reference.kd_loss(s, t, T))
    monkeypatch.setitem(peers.PEERS, "numpy", wrong)
    student, teacher = make_logits((4, 5), "float64")
    case = compare.run_case(student, teacher, "float64", 1, compare.Settings(repeat=1, peers=("kdloss", "numpy")))
    assert case.cells["numpy"].status == "disagrees" and case.cells["numpy"].stats is None
    assert "relative difference 1.0e+00" in case.cells["numpy"].note


def test_jax_is_skipped_at_a_thread_count_other_than_its_pool():
    pytest.importorskip("jax")
    student, teacher = make_logits((4, 5), "float32")
    with pytest.raises(peers.PeerSkipped, match="fixed per process"):
        peers.prepare("jax", student, teacher, 4.0, jax_threads() + 1)


@pytest.mark.parametrize(
    ("one_call", "columns"),
    [(False, ["kdloss", "numpy", "torch", "read", "exp"]), (True, ["kdloss", "distillation_loss", "numpy", "torch"])],
)
def test_columns_put_kdloss_first(one_call, columns):
    assert compare.peers_for(("numpy", "torch", "kdloss"), one_call) == columns
