"""float16 and bfloat16 logits: what the kernel reads, and how its results come back in them.

The kernel does not read 2-byte floats yet, so they are widened to float32 (exact) on the way
in; the loss (a float64 value) is rounded once to the logits' dtype, and the kernel's float32
results are converted by :func:`from_kernel`.
"""

import numpy as np
import torch

NARROW_DTYPES = (torch.float16, torch.bfloat16)


def kernel_input(tensor):
    """``tensor`` as the kernel reads it: 2-byte floats widened to float32 (a copy), others as is."""
    return tensor.float() if tensor.dtype in NARROW_DTYPES else tensor


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
