"""A Zarr v3 data type for ``ml_dtypes.bfloat16``, which zarr-python (3.1) does not define.

Zarr v3 names the type ``"bfloat16"`` (a registered extension data type, as other Zarr
implementations write it); Zarr v2 cannot record it. ``register()`` adds it to zarr-python's
registry, so that such arrays can be opened (``kdloss score`` calls it when an array's metadata
names bfloat16) and written (call it before ``zarr.open_array(..., dtype=ml_dtypes.bfloat16)``).
It imports zarr and ml_dtypes, and only when called.
"""

import json
import os

_registered = False


def names_bfloat16(path):
    """True when the Zarr v3 array at ``path`` records the bfloat16 data type."""
    try:
        with open(os.path.join(path, "zarr.json"), encoding="utf-8") as f:
            return json.load(f).get("data_type") == "bfloat16"
    except (OSError, ValueError, AttributeError):
        return False


def register():
    """Register the ``bfloat16`` data type with zarr-python (once; ImportError without ml_dtypes)."""
    global _registered
    if _registered:
        return
    from dataclasses import dataclass
    from typing import ClassVar

    import ml_dtypes
    import numpy as np
    from zarr.core.dtype import data_type_registry
    from zarr.core.dtype.npy.float import BaseFloat

    native = np.dtype(ml_dtypes.bfloat16)

    @dataclass(frozen=True, kw_only=True)
    class BFloat16(BaseFloat):
        """bfloat16: 1 sign, 8 exponent, 7 mantissa bits (the upper half of a float32)."""

        dtype_cls = type(native)
        _zarr_v3_name = "bfloat16"
        _zarr_v2_names: ClassVar[tuple] = ()  # Zarr v2 has no name for it

        @property
        def item_size(self):
            return 2

        def to_native_dtype(self):
            return native.newbyteorder("<" if self.endianness == "little" else ">")

    data_type_registry.register(BFloat16._zarr_v3_name, BFloat16)
    _registered = True
