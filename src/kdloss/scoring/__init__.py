"""``kdloss score``: per-row losses of stored logits, read a chunk of rows at a time.

- ``_paths``: where the inputs and the output really are (resolved once, as the OS does);
- ``_inputs``: open ``.npy`` (memory-mapped), ``FILE.npz:NAME`` and Zarr arrays as row sources;
- ``_zarr_bfloat16``: the Zarr v3 ``bfloat16`` data type, which zarr-python lacks;
- ``_score``: the chunked loop, the exact running sum and the summary;
- ``_writers``: atomic ``.npy`` and ``.csv`` writers;
- ``_dask``: the same chunks as Dask tasks (``--dask``);
- ``cli``: the subcommand's arguments, validation and run.

Nothing here imports Dask, Zarr, ml_dtypes or tqdm until a run needs them.
``register_zarr_bfloat16()`` lets zarr-python write (and read) bfloat16 Zarr v3 arrays.
"""

from ._zarr_bfloat16 import register as register_zarr_bfloat16

__all__ = ["register_zarr_bfloat16"]
