"""Stored logits, opened by name and read a block of rows at a time.

``open_logits(spec, name)`` returns a :class:`RowSource`: the array's shape and dtype, read from
its header only, and ``read_rows(start, stop)``, which returns rows ``start:stop`` of the array
seen as ``(rows, classes)`` (rows in C order over the leading axes).

- ``FILE.npy``: every read maps the file afresh (``np.memmap``) and the caller drops the view
  when it is done with it, so the pages a block touched leave this process's resident set with
  it; the file is never read whole.
- ``FILE.npz:NAME``: a member that is *stored* (``np.savez``) is memory-mapped in place, at the
  offset of its data inside the zip file, exactly like a ``.npy``. A *compressed* member
  (``np.savez_compressed``) cannot be mapped: that member alone is decompressed into memory
  once per process (memory then grows with that member, not with the rest of the archive).
- A Zarr array (a directory store; needs the ``[dask]`` extra): each read decompresses the
  Zarr chunks that hold the rows asked for.

A ``RowSource`` pickles as its path, so Dask workers reopen the file themselves (they need to
see it at the same path). Every problem is a :class:`InputError` naming the file.
"""

import os
import zipfile
from math import prod

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


class InputError(ValueError):
    """A bad input for ``kdloss score``: the message names the file and the problem."""


def _split_spec(spec):
    """``(path, member)``: ``member`` is the NAME of ``FILE.npz:NAME``, else None."""
    head, sep, tail = spec.rpartition(":")
    if sep and head.lower().endswith(".npz") and tail:
        return head, tail
    return spec, None


def _read_npy_header(f, where):
    """(shape, fortran_order, dtype, data offset) of the ``.npy`` stream at ``f``'s position."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, OSError, EOFError) as error:
        raise InputError(f"{where} is not a NumPy array file (.npy): {error}") from None
    return shape, fortran, dtype, f.tell()


def _check_array(where, shape, dtype):
    if dtype not in FLOAT_DTYPES:
        raise InputError(f"{where} has dtype {dtype}; kdloss score reads float16, float32 or float64 logits")
    if len(shape) == 0:
        raise InputError(f"{where} is a scalar; logits need a last axis of classes")
    if shape[-1] == 0:
        raise InputError(f"{where} has zero classes (shape {tuple(shape)}); the last axis holds classes")


class RowSource:
    """Rows of stored logits: ``shape``, ``dtype``, ``rows``, ``classes``, ``read_rows``."""

    def __init__(self, spec, kind, path, member, shape, dtype, fortran=False, offset=0):
        self.spec = spec  # as the user wrote it, for messages
        self.kind = kind  # "npy" (also stored .npz members), "npz-compressed" or "zarr"
        self.path = path  # absolute, so that a Dask worker finds it from any directory
        self.member = member
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.fortran = fortran
        self.offset = offset
        self.rows = prod(self.shape[:-1])
        self.classes = self.shape[-1] if self.shape else 0
        self._cache = None  # a loaded compressed member or an open Zarr array

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = None  # pickles as its path: a worker reopens the file itself
        return state

    def _array(self):
        """The whole array as a lazy object (a fresh memory map for files)."""
        if self.kind == "npy":
            order = "F" if self.fortran else "C"
            if self.rows == 0:
                return np.empty(self.shape, self.dtype, order=order)
            return np.memmap(self.path, self.dtype, "r", offset=self.offset, shape=self.shape, order=order)
        if self._cache is None:
            if self.kind == "zarr":
                import zarr

                self._cache = zarr.open_array(self.path, mode="r")
            else:
                with np.load(self.path) as archive:
                    self._cache = archive[self.member]
        return self._cache

    def read_rows(self, start, stop):
        """Rows ``start:stop`` as a ``(stop - start, classes)`` array (a view of the map if it can be)."""
        array = self._array()
        blocks = [
            np.asarray(array[index]).reshape(-1, self.classes)
            for index in flat_blocks(self.shape[:-1], start, stop)
        ]
        if len(blocks) == 1:
            return blocks[0]  # reshape copies only where the leading axes cannot merge (Fortran order)
        return np.concatenate(blocks) if blocks else np.empty((0, self.classes), self.dtype)


def flat_blocks(lead_shape, start, stop):
    """Basic-slicing index tuples whose blocks, in order, are flat rows ``start:stop`` of ``lead_shape``.

    A flat range of rows over several leading axes is at most ``2 * len(lead_shape) - 1``
    rectangular blocks (a ragged start, whole slabs, a ragged end), each read without fancy
    indexing.
    """
    if stop <= start:
        return
    if len(lead_shape) == 0:
        yield ()
        return
    if len(lead_shape) == 1:
        yield (slice(start, stop),)
        return
    inner = prod(lead_shape[1:])
    first, first_rest = divmod(start, inner)
    last, last_rest = divmod(stop, inner)
    if first == last:
        for sub in flat_blocks(lead_shape[1:], first_rest, last_rest):
            yield (first, *sub)
        return
    if first_rest:
        for sub in flat_blocks(lead_shape[1:], first_rest, inner):
            yield (first, *sub)
        first += 1
    if last > first:
        yield (slice(first, last),)
    if last_rest:
        for sub in flat_blocks(lead_shape[1:], 0, last_rest):
            yield (last, *sub)


def _open_npy(spec, path, raw):
    with open(path, "rb") as f:
        magic = f.read(4)
        f.seek(0)
        if magic == b"PK\x03\x04":
            raise InputError(f"{spec} is a .npz archive: name the array inside it as {raw}:NAME")
        shape, fortran, dtype, offset = _read_npy_header(f, spec)
    return RowSource(spec, "npy", path, None, shape, dtype, fortran, offset)


def _open_npz_member(spec, path, member):
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise InputError(f"{spec} is not a .npz archive (not a zip file)") from None
    with archive:
        names = [name.removesuffix(".npy") for name in archive.namelist()]
        if member not in names:
            known = ", ".join(names) if names else "no arrays"
            raise InputError(f"{spec}: the archive has no array named {member!r} (it holds: {known})")
        info = archive.getinfo(member + ".npy")
        with archive.open(info) as f:
            shape, fortran, dtype, header_length = _read_npy_header(f, spec)
        if info.compress_type != zipfile.ZIP_STORED:
            return RowSource(spec, "npz-compressed", path, member, shape, dtype, fortran)
    # A stored member is a .npy byte for byte after its local file header: map it in place.
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        name_length = int.from_bytes(local[26:28], "little")
        extra_length = int.from_bytes(local[28:30], "little")
    offset = info.header_offset + 30 + name_length + extra_length + header_length
    return RowSource(spec, "npy", path, member, shape, dtype, fortran, offset)


def _open_zarr(spec, path):
    try:
        import zarr
    except ImportError:
        raise InputError(
            f"{spec} is a directory; reading Zarr arrays needs the [dask] extra: pip install 'kdloss[dask]'"
        ) from None
    try:
        array = zarr.open_array(path, mode="r")
    except (ValueError, OSError, KeyError, TypeError) as error:
        raise InputError(f"{spec} is a directory but not a Zarr array ({error})") from None
    source = RowSource(spec, "zarr", path, None, array.shape, np.dtype(array.dtype))
    source._cache = array
    return source


def open_logits(spec, name):
    """Open ``spec`` (``FILE.npy``, ``FILE.npz:NAME`` or a Zarr directory) as a checked RowSource.

    ``name`` ("student", "teacher") starts every message.
    """
    path, member = _split_spec(spec)
    where = f"{name} {spec}"
    if not os.path.exists(path):
        raise InputError(f"{where}: no such file or directory")
    path = os.path.abspath(path)
    try:
        if os.path.isdir(path):
            if member is not None:
                raise InputError(f"{where}: {path} is a directory, not a .npz file")
            source = _open_zarr(where, path)
        elif member is not None:
            source = _open_npz_member(where, path, member)
        else:
            source = _open_npy(where, path, spec)
    except OSError as error:
        raise InputError(f"{where} cannot be read: {error.strerror or error}") from None
    _check_array(where, source.shape, source.dtype)
    if source.kind == "npy":
        needed = source.offset + source.rows * source.classes * source.dtype.itemsize
        if os.path.getsize(path) < needed:
            raise InputError(f"{where} is truncated: shape {source.shape} needs {needed} bytes")
    return source
