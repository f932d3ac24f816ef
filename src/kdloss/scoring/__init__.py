"""``kdloss score``: per-row losses of stored logits, read a chunk of rows at a time.

- ``_inputs``: open ``.npy`` (memory-mapped), ``FILE.npz:NAME`` and Zarr arrays as row sources;
- ``_score``: the chunked loop, the exact running sum and the summary;
- ``_writers``: atomic ``.npy`` and ``.csv`` writers;
- ``_dask``: the same chunks as Dask tasks (``--dask``);
- ``cli``: the subcommand's arguments, validation and run.

Nothing here imports Dask, Zarr or tqdm until a run needs them.
"""
