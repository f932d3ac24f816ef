"""``kdloss score --dask``: the same chunks of per-row losses, computed on a Dask cluster.

The inputs become Dask arrays of shape ``(rows, classes)`` whose tasks read their own rows from
the files (a :class:`RowSource` pickles as its path), so nothing but paths travels to the
workers, and nothing but per-row losses travels back. The client takes the blocks back in row
order and hands them to the same writer and summary as a run without Dask, so the output file
and the summary are the same bits.
"""

import contextlib
import logging
import uuid

import numpy as np

from ._inputs import InputError


class RowArray:
    """A RowSource seen as a 2-D ``(rows, classes)`` array, for ``dask.array.from_array``."""

    def __init__(self, source):
        self.source = source
        self.shape = (source.rows, source.classes)
        self.dtype = source.dtype
        self.ndim = 2

    def __getitem__(self, index):
        rows, classes = index
        start, stop, _ = rows.indices(self.shape[0])
        # A copy: the task's result must not keep the file mapped.
        return np.array(self.source.read_rows(start, max(start, stop))[:, classes])


@contextlib.contextmanager
def client_for(address):
    """A ``distributed.Client`` on a LocalCluster it starts (``"local"``) or on ``address``."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError("--dask needs the [dask] extra: pip install 'kdloss[dask]'") from None
    if address == "local":
        with (
            LocalCluster(
                processes=True, host="127.0.0.1", dashboard_address=":0", silence_logs=logging.ERROR
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
        return
    try:
        client = Client(address, timeout="10s")
    except (OSError, TimeoutError, ValueError) as error:
        raise InputError(f"--dask {address}: cannot connect to a Dask scheduler there ({error})") from None
    with client:
        yield client


def chunk_losses(client, student, teacher, temperature, chunk_rows, num_threads, divergence="kl", beta=None):
    """Yield per-row losses block by block, in row order, computed by ``client``'s workers."""
    import dask.array as da

    from .. import dask as kdloss_dask

    def as_dask(source, role):
        return da.from_array(
            RowArray(source), chunks=(chunk_rows, source.classes), lock=False, asarray=False, fancy=False,
            meta=np.empty((0, 0), source.dtype), name=f"kdloss-score-{role}-{uuid.uuid4().hex}",
        )

    losses = kdloss_dask.kd_loss(
        as_dask(student, "student"), as_dask(teacher, "teacher"), temperature,
        reduction="none", num_threads=num_threads, divergence=divergence, beta=beta,
    )
    futures = client.compute(list(losses.to_delayed().ravel()))
    try:
        for future in futures:
            yield future.result()
            future.release()
    finally:
        client.cancel(futures)
