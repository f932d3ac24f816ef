"""The dtype table: one row per floating-point input dtype kdloss reads.

Each row says what the kernel is handed, what comes back (``"none"`` losses, gradients,
``softmax``) and the type's unit roundoff ``u`` (half a machine epsilon: a correctly rounded
result is within ``u`` relative of the exact value). Validation (``kdloss._validation``) maps
every input dtype onto a row; integers and bools are computed as float64, other float widths
as the nearest row that holds them.

bfloat16 is ``ml_dtypes.bfloat16`` (the NumPy bfloat16 of JAX), an optional dependency: it is
recognised by its dtype name, and ``ml_dtypes`` is imported only when its NumPy dtype is asked
for (``DTYPES["bfloat16"].numpy_dtype``), never by ``import kdloss``.

Adding a dtype: one row here, and a row of the kernel's dtype table (``_simd/target_impl.h``: its
loads and its gradient's type), which the engine (``kdloss._engine``) hands it to.
"""

import dataclasses
import functools
import importlib
import importlib.util

import numpy as np


@dataclasses.dataclass(frozen=True)
class DType:
    """One input dtype.

    name: the NumPy dtype name (``np.dtype(...).name``).
    kernel_dtype: the dtype the kernel computes the row as (float32 or float64): the row loop
        reads 2-byte types natively (as their bits) and computes them as float32; ``softmax``,
        scalar code, is handed them converted to this dtype.
    result_dtype: the dtype of ``"none"`` losses, gradients and ``softmax`` output: float32 for
        2-byte inputs, the input's own otherwise (sums and means are Python floats, float64).
    eps: the unit roundoff of the input type, ``2**-(mantissa bits + 1)``.
    module: the package that defines the NumPy dtype, when NumPy does not (None for NumPy's).
    """

    name: str
    kernel_dtype: np.dtype
    result_dtype: np.dtype
    eps: float
    module: str | None = None

    @functools.cached_property
    def numpy_dtype(self):
        """The NumPy dtype (imports ``module`` the first time, for bfloat16)."""
        if self.module is None:
            return np.dtype(self.name)
        return np.dtype(getattr(importlib.import_module(self.module), self.name))

    def available(self):
        """True when the dtype's package is installed (always for NumPy's own)."""
        return self.module is None or importlib.util.find_spec(self.module) is not None


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)

DTYPES = {
    "float64": DType("float64", kernel_dtype=_F64, result_dtype=_F64, eps=2.0**-53),
    "float32": DType("float32", kernel_dtype=_F32, result_dtype=_F32, eps=2.0**-24),
    "float16": DType("float16", kernel_dtype=_F32, result_dtype=_F32, eps=2.0**-11),
    "bfloat16": DType("bfloat16", kernel_dtype=_F32, result_dtype=_F32, eps=2.0**-8, module="ml_dtypes"),
}


def available_dtypes():
    """Names of the table's dtypes whose package is installed, widest first."""
    return [name for name, row in DTYPES.items() if row.available()]


def row_of(dtype):
    """The table row for an input dtype, or None when kdloss does not read that dtype as is.

    float64, float32, float16 and bfloat16 are rows; every other real dtype (integers, bools,
    longdouble) has no row of its own: ``compute_row`` says what it is computed as.
    """
    return DTYPES.get(dtype.name) if dtype.kind in "fV" else None


def compute_row(dtype):
    """The row an input of ``dtype`` is computed as, or None when it does not hold real numbers:
    a row's own dtype as it is; integers, bools and wider floats (longdouble) as float64."""
    row = row_of(dtype)
    if row is not None:
        return row
    if dtype.kind in "biuf":
        return DTYPES["float64"]
    return None


def promote(first, second):
    """The row two inputs of rows ``first`` and ``second`` are computed in together: the same
    row when equal; float64 when either is; float32 otherwise (float16 with float32 or with
    bfloat16: float32 holds every value of both)."""
    if first is second:
        return first
    if "float64" in (first.name, second.name):
        return DTYPES["float64"]
    return DTYPES["float32"]
