"""float16 and bfloat16 logits: how the NumPy layer reads them, and how results come back in them.

The kernel reads float16 and bfloat16 natively and computes in float32: float16 logits are
handed over as a NumPy view, bfloat16 ones as an ``ml_dtypes.bfloat16`` view when ml_dtypes is
installed (else widened to float32, exact but a copy). The loss (a float64 value) is rounded
once to the logits' dtype; the kernel's per-row losses and gradients, float32 rounded to odd
(``round_to_odd``), are converted by :func:`from_kernel`: rounded once in all.
"""

import functools

import torch

from .._reduction import float32_rounded_to_odd

NARROW_DTYPES = (torch.float16, torch.bfloat16)


@functools.cache
def _numpy_bfloat16():
    """``ml_dtypes.bfloat16``, or None without ml_dtypes (an optional dependency)."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    return ml_dtypes.bfloat16


def logits_as_numpy(tensor):
    """Logits as the NumPy layer reads them: a view (any strides) where NumPy has their dtype
    (bfloat16: with ml_dtypes), else widened to float32 (exact)."""
    # force=True resolves a lazy negation bit (a copy then); any other CPU tensor is viewed as is.
    if tensor.dtype == torch.bfloat16:
        bfloat16 = _numpy_bfloat16()
        if bfloat16 is None:
            return tensor.float().numpy(force=True)
        return tensor.resolve_neg().view(torch.int16).numpy().view(bfloat16)
    return tensor.numpy(force=True)


def as_numpy(tensor):
    """Weights and labels as NumPy arrays: views, bfloat16 widened to float32 (the NumPy layer
    takes ml_dtypes.bfloat16 logits only)."""
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy(force=True)


def autocast_inputs(*tensors):
    """Under CPU autocast, float16 and bfloat16 tensors as float32, like PyTorch's own losses
    (``kl_div``, ``cross_entropy``) there; anything else as given."""
    if not torch.is_autocast_enabled("cpu"):
        return tensors
    return tuple(
        tensor.float() if isinstance(tensor, torch.Tensor) and tensor.dtype in NARROW_DTYPES else tensor
        for tensor in tensors
    )


def loss_scalar(value, dtype):
    """A float64 loss as a 0-d tensor of ``dtype``, rounded once."""
    if dtype in NARROW_DTYPES:
        # torch converts float64 to 2-byte floats through float32: two roundings; round-to-odd
        # float32 makes the second one exact.
        return torch.from_numpy(float32_rounded_to_odd(value)).to(dtype)
    return torch.scalar_tensor(value, dtype=dtype)


def from_kernel(array, dtype):
    """The kernel's per-row losses or gradients (a NumPy array) as a tensor of ``dtype``; no
    copy when the dtypes agree."""
    # For float16/bfloat16 the NumPy layer was asked for float32 rounded to odd (per-row losses
    # and gradients alike), so this second rounding gives the exact value rounded once.
    return torch.from_numpy(array).to(dtype)
