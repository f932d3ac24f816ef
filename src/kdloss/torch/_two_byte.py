"""float16 and bfloat16 logits: how the NumPy layer reads them, and how results come back in them.

The kernel reads float16 and bfloat16 natively and computes in float32: float16 logits are
handed over as a NumPy view, bfloat16 ones as an ``ml_dtypes.bfloat16`` view when ml_dtypes is
installed (else widened to float32, exact but a copy). The loss (a float64 value) is rounded
once to the logits' dtype; the kernel's float32 per-row losses and gradients are converted by
:func:`from_kernel`.
"""

import functools

import numpy as np
import torch

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


def _float32_rounded_to_odd(values):
    """float64 ``values`` rounded to float32 toward zero, with the last bit set when inexact.

    float32 has more than twice bfloat16's and float16's precision plus two bits, so rounding
    this to either gives the float64 value rounded once (round-to-odd).
    """
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore"):
        nearest = values.astype(np.float32)
    widened = nearest.astype(np.float64)
    inexact = (widened != values) & ~np.isnan(values)
    away_from_zero = inexact & (np.abs(widened) > np.abs(values))
    truncated = np.where(away_from_zero, np.nextafter(nearest, np.float32(0)), nearest)
    return np.asarray(truncated.view(np.uint32) | inexact.astype(np.uint32)).view(np.float32)


def loss_scalar(value, dtype):
    """A float64 loss as a 0-d tensor of ``dtype``, rounded once."""
    if dtype in NARROW_DTYPES:
        # torch converts float64 to 2-byte floats through float32: two roundings; round-to-odd
        # float32 makes the second one exact.
        return torch.from_numpy(_float32_rounded_to_odd(value)).to(dtype)
    return torch.scalar_tensor(value, dtype=dtype)


def from_kernel(array, dtype):
    """The kernel's per-row losses or gradients (a NumPy array) as a tensor of ``dtype``; no
    copy when the dtypes agree."""
    # For float16/bfloat16 the kernel computed in float32: this is a double rounding
    # (exact -> float32 -> 2-byte), off by one unit in the last place when the float32 value
    # lands on a halfway point, until the kernel stores 2-byte results or float32 rounded-to-odd.
    return torch.from_numpy(array).to(dtype)
