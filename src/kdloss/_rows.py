"""Views of logits as 2-D (rows, classes) blocks, never copies."""

import numpy as np


def row_blocks(arrays, trailing_axes):
    """Yield tuples of views of ``arrays`` whose leading axes are merged into one axis of rows.

    The arrays share their leading axes; ``trailing_axes[k]`` is how many axes ``arrays[k]`` has
    after them (1 for logits, 0 for per-row losses). Usually this is a single block. Leading axes
    that cannot be merged without a copy (a transposed ``(L, B, V)`` view, say) are walked one
    index of the first axis at a time instead, so that no input is ever copied.
    """
    try:
        views = tuple(
            np.reshape(a, (-1, *a.shape[a.ndim - k:]), copy=False) for a, k in zip(arrays, trailing_axes)
        )
    except ValueError:  # NumPy could not avoid a copy
        for i in range(arrays[0].shape[0]):
            yield from row_blocks(tuple(a[i] for a in arrays), trailing_axes)
    else:
        yield views
