"""The peers kdloss is timed against, each computing T^2 * mean over rows of KL(P || Q).

A peer is a named factory: ``peer.prepare(student, teacher, temperature, threads)`` does
everything that must stay outside the timed region (importing the library, converting arrays
to tensors or device arrays, setting thread counts, compiling) and returns a call with no
arguments that computes the mean loss as a Python float. Every library is imported only when
its peer is prepared, so an absent one is reported as "not installed" and nothing else breaks.

Two *baselines* are prepared the same way but compute no loss: one read of both inputs, and
NumPy's ``exp`` of both inputs (the issue's yardsticks for what a fused kernel should cost).
"""

import functools
import importlib.util
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

import kdloss

from .cases import rows_of
from .jax_threads import jax_threads


class PeerSkipped(Exception):
    """This peer cannot run this case (e.g. not at this thread count); the message says why."""

    status = "skipped"


class NotInstalled(PeerSkipped):
    """The peer's library is absent."""

    status = "not installed"


@dataclass(frozen=True)
class Peer:
    name: str  # the key used on the command line and in JSON
    label: str  # the column header
    requires: str | None  # the module that must be importable, None for NumPy and kdloss
    prepare: Callable  # (student, teacher, temperature, threads) -> call returning the mean loss
    baseline: bool = False  # a yardstick (not a loss): not checked against kdloss
    one_call_only: bool = False  # only for a single 1-D call
    two_byte: bool = True  # runs float16 / bfloat16 inputs as they are

    def installed(self):
        return self.requires is None or importlib.util.find_spec(self.requires) is not None

    def applies_to(self, student):
        """Whether this peer belongs in a case with these inputs (one 1-D call or a batch)."""
        one_call = student.ndim == 1
        if self.one_call_only:
            return one_call
        return not (self.baseline and one_call)


def _kdloss(student, teacher, temperature, threads):
    return lambda: kdloss.kd_loss(student, teacher, temperature, num_threads=threads)


def _distillation_loss(student, teacher, temperature, threads):
    # The seed's function on Python lists, as its users call it (lists made outside timing).
    student_list, teacher_list = student.tolist(), teacher.tolist()
    return lambda: kdloss.distillation_loss(student_list, teacher_list, temperature)


def _numpy_oracle(student, teacher, temperature, threads):
    return lambda: kdloss.reference.kd_loss(student, teacher, temperature)


def _scipy(student, teacher, temperature, threads):
    from scipy.special import rel_entr, softmax

    rows = rows_of(student)

    def loss():
        p = softmax(teacher / temperature, axis=-1)
        q = softmax(student / temperature, axis=-1)
        return float(np.sum(rel_entr(p, q))) / rows * (temperature * temperature)

    return loss


def _torch(student, teacher, temperature, threads):
    import torch
    from torch.nn.functional import kl_div, log_softmax

    torch.set_num_threads(threads)
    s, t = as_tensor(student), as_tensor(teacher)
    rows = rows_of(student)

    def loss():
        total = kl_div(log_softmax(s / temperature, -1), log_softmax(t / temperature, -1),
                       log_target=True, reduction="sum")
        return total.item() / rows * (temperature * temperature)

    return loss


def as_tensor(array):
    """A torch tensor on the same memory as ``array``; ml_dtypes bfloat16 through its bits."""
    import torch

    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _jax(student, teacher, temperature, threads):
    pool = jax_threads()
    if threads != pool and student.ndim > 1:  # a single call is too small to use a pool at all
        raise PeerSkipped(f"JAX's thread pool is fixed per process at {pool} "
                          "(kdloss bench --jax-threads; KDLOSS_BENCH_JAX_THREADS for pytest)")
    import jax

    if student.dtype == np.float64:
        # Without it JAX silently computes float64 inputs in float32. Process-wide; float32
        # inputs stay float32 (the temperature is a weakly typed Python float).
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    rows = rows_of(student)

    @jax.jit
    def mean_loss(s, t):
        log_p = jax.nn.log_softmax(t / temperature, axis=-1)
        log_q = jax.nn.log_softmax(s / temperature, axis=-1)
        return jnp.sum(jnp.exp(log_p) * (log_p - log_q)) / rows * (temperature * temperature)

    s, t = jax.device_put(student), jax.device_put(teacher)
    mean_loss(s, t).block_until_ready()  # compiles; the first call is never timed
    return lambda: float(mean_loss(s, t).block_until_ready())


_READERS = {}


def _read_both(student, teacher, temperature, threads):
    # One read of both inputs: np.sum over row blocks, split over `threads` Python threads
    # (NumPy releases the GIL in its reduction loops), so the figure is the memory bandwidth
    # this many threads can draw, the floor for any kernel that reads its inputs once.
    pool = _READERS.setdefault(threads, ThreadPoolExecutor(threads)) if threads > 1 else None
    # 2-byte floats summed as their bits, in uint16 (wrapping; the value is not used): the same
    # bytes read in NumPy's vector loops, without a cast to a wider accumulator.
    total = functools.partial(np.sum, dtype=np.uint16) if student.dtype.itemsize == 2 else np.sum
    student, teacher = (x.view(np.uint16) if x.dtype.itemsize == 2 else x for x in (student, teacher))
    blocks = [b for x in (student, teacher) for b in np.array_split(x, threads, axis=0) if b.size]

    if pool is None:
        return lambda: float(sum(total(b).item() for b in blocks))
    return lambda: float(sum(part.item() for part in pool.map(total, blocks)))


def _exp_both(student, teacher, temperature, threads):
    # np.exp of both inputs into buffers allocated here, so only the exp is timed. NumPy's exp
    # runs on one thread whatever `threads` says: this is the yardstick as stated.
    out_s, out_t = np.empty_like(student), np.empty_like(teacher)

    def exp_both():
        np.exp(student, out=out_s)
        np.exp(teacher, out=out_t)
        return 0.0

    return exp_both


PEERS = {
    peer.name: peer
    for peer in (
        Peer("kdloss", "kdloss", None, _kdloss),
        Peer("distillation_loss", "distillation_loss (lists)", None, _distillation_loss, one_call_only=True,
             two_byte=False),
        Peer("numpy", "NumPy oracle", None, _numpy_oracle, two_byte=False),
        Peer("scipy", "SciPy", "scipy", _scipy, two_byte=False),
        Peer("torch", "PyTorch", "torch", _torch),
        Peer("jax", "JAX jit", "jax", _jax),
        Peer("read", "read both inputs", None, _read_both, baseline=True),
        Peer("exp", "np.exp both inputs", None, _exp_both, baseline=True, two_byte=False),
    )
}
LOSS_PEERS = tuple(name for name, peer in PEERS.items() if not peer.baseline)
BASELINES = tuple(name for name, peer in PEERS.items() if peer.baseline)


def prepare(name, student, teacher, temperature, threads):
    """The call to time for peer ``name``; raises PeerSkipped when it cannot run here."""
    peer = PEERS[name]
    if not peer.installed():
        raise NotInstalled(f"{peer.requires} is not installed")
    if student.dtype.itemsize == 2 and not peer.two_byte:
        # NumPy's float16 and ml_dtypes' bfloat16 loops are scalar emulation: not what anyone runs.
        raise PeerSkipped("not run on 2-byte inputs: NumPy has no native float16 or bfloat16 "
                          "arithmetic (emulated loops)")
    return peer.prepare(student, teacher, temperature, threads)


def tolerance(dtype, peer_name):
    """(rtol, atol) within which a peer must agree with kdloss before it is timed."""
    rtol = 1e-4 if np.dtype(dtype) == np.float32 else 1e-10
    # distillation_loss rounds to 4 decimal places.
    atol = 5e-5 if peer_name == "distillation_loss" else 0.0
    return rtol, atol


# A peer that computes log_softmax and then the KL terms in the inputs' dtype is off by a few
# ulps of L (the largest |log-probability|) per row: about ROUNDING_ULPS * eps(dtype) * L * T^2 in
# the loss (benchmarks/eps_sweep.py measured PyTorch and JAX at most 0.3% of it).
ROUNDING_ULPS = 4.0


def rounding_bound(student, teacher, temperature):
    """The absolute error a peer's loss may have from rounding in the inputs' dtype (see above)."""
    from .._dtypes import DTYPES

    values = [float(np.max(x.astype(np.float32))) for x in (student, teacher)]
    lows = [float(np.min(x.astype(np.float32))) for x in (student, teacher)]
    log_bound = (max(values) - min(lows)) / temperature + float(np.log(student.shape[-1]))
    machine_eps = 2 * DTYPES[student.dtype.name].eps  # the table holds the unit roundoff
    return ROUNDING_ULPS * machine_eps * log_bound * temperature * temperature


def agrees(value, expected, dtype, peer_name, rounding=None):
    """Whether ``value`` matches kdloss's ``expected`` closely enough to report the peer.

    ``rounding``: None for inputs far from the teacher in float32 or float64 (eps = 1), where the
    relative ``tolerance`` holds. Otherwise (a student close to the teacher, or 2-byte inputs) the
    loss can be as small as the peer's rounding error, and the peer must be within
    ``rounding`` (:func:`rounding_bound`) of kdloss: that still catches a different function."""
    rtol, atol = tolerance(dtype, peer_name)
    if rounding is not None:
        return bool(abs(value - expected) <= rounding + atol)
    return bool(np.isclose(value, expected, rtol=rtol, atol=atol))
