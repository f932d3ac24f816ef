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
  when it is opened (so a corrupt one is refused before any work), once per process (memory
  then grows with that member, not with the rest of the archive). A member is found by its
  name in the zip (``NAME``, then ``NAME.npy``, as ``np.load`` looks it up), and its header
  is checked against the member's own size.
- A Zarr array (a directory store; needs the ``[dask]`` extra): each read decompresses the
  Zarr chunks that hold the rows asked for.

Every read returns native-endian rows: big-endian files (``>f4``, ``>f8``) are byte-swapped a
block at a time, and bfloat16 (Zarr only: ``.npy`` does not record it) is widened to float32,
which is exact.

Paths are resolved as the OS resolves them (``_paths.resolve_existing``): ``link/../s.npy``
reads the file the OS opens for it. A ``RowSource`` pickles as that absolute path, so Dask
workers reopen the file themselves (they need to see it at the same path). Every problem is
an :class:`InputError` naming the file.
"""


import os
import zipfile
import zlib
from math import prod

import numpy as np

from ._errors import InputError
from ._paths import file_id, resolve_existing

__all__ = ["InputError", "RowSource", "flat_blocks", "open_logits"]

ACCEPTED = "float16, float32 or float64 (either byte order), or bfloat16 (Zarr)"


def _is_bfloat16(dtype):
    return dtype.kind == "V" and dtype.name == "bfloat16"  # ml_dtypes.bfloat16, without importing it


def read_dtype(stored):
    """The dtype rows of a ``stored`` dtype are read as: native byte order; bfloat16 widened to float32.

    bfloat16 becomes float32 here (exact) until ``kdloss.kd_loss`` takes ``ml_dtypes.bfloat16``
    itself; float16 is passed on as it is (``kd_loss`` computes it as float32).
    """
    if _is_bfloat16(stored):
        return np.dtype(np.float32)
    return stored.newbyteorder("=")


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
    if not ((dtype.kind == "f" and dtype.itemsize in (2, 4, 8)) or _is_bfloat16(dtype)):
        raw2 = dtype.kind == "V" and dtype.itemsize == 2
        hint = " (a raw 2-byte type: bfloat16 is read where the format records it, Zarr v3)" if raw2 else ""
        raise InputError(f"{where} has dtype {dtype}; kdloss score reads {ACCEPTED} logits{hint}")
    if len(shape) == 0:
        raise InputError(f"{where} is a scalar; logits need a last axis of classes")
    if any(n < 0 for n in shape):
        raise InputError(f"{where} has a negative length in its shape {tuple(shape)}")
    if shape[-1] == 0:
        raise InputError(f"{where} has zero classes (shape {tuple(shape)}); the last axis holds classes")


class RowSource:
    """Rows of stored logits: ``shape``, ``stored_dtype``, ``dtype`` (as read), ``rows``, ``classes``, ``read_rows``."""

    def __init__(self, spec, kind, path, member, shape, dtype, fortran=False, offset=0):
        self.spec = spec  # as the user wrote it, for messages
        self.kind = kind  # "npy" (also stored .npz members), "npz-compressed" or "zarr"
        self.path = path  # absolute and resolved, so that a Dask worker finds it from any directory
        self.member = member  # the member's name in the zip, for .npz
        self.shape = tuple(int(n) for n in shape)
        self.stored_dtype = np.dtype(dtype)
        self.dtype = read_dtype(self.stored_dtype)
        self.fortran = fortran
        self.offset = offset
        self.rows = prod(self.shape[:-1])
        self.classes = self.shape[-1] if self.shape else 0
        self.file_id = None  # (device, inode) of the file or folder
        self._cache = None  # a loaded compressed member or an open Zarr array

    @property
    def nbytes(self):
        return self.rows * self.classes * self.stored_dtype.itemsize

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = None  # pickles as its path: a worker reopens the file itself
        return state

    def _array(self):
        """The whole array as a lazy object (a fresh memory map for files)."""
        if self.kind == "npy":
            order = "F" if self.fortran else "C"
            if self.rows == 0:
                return np.empty(self.shape, self.stored_dtype, order=order)
            return np.memmap(self.path, self.stored_dtype, "r", offset=self.offset, shape=self.shape, order=order)
        if self._cache is None:
            if self.kind == "zarr":
                self._cache = _zarr_array(self.spec, self.path)
            else:
                self._cache = _load_compressed_member(self.spec, self.path, self.member)
        return self._cache

    def read_rows(self, start, stop):
        """Rows ``start:stop`` as a ``(stop - start, classes)`` array of ``dtype``.

        A view of the map where it can be (native byte order, leading axes that merge), else a
        copy of these rows only.
        """
        array = self._array()
        blocks = [
            np.asarray(array[index]).reshape(-1, self.classes)
            for index in flat_blocks(self.shape[:-1], start, stop)
        ]
        if not blocks:
            return np.empty((0, self.classes), self.dtype)
        rows = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        return rows.astype(self.dtype, copy=False)  # byte-swapped or widened: a copy of this block


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


def _check_size(where, shape, dtype, available):
    """InputError unless ``available`` bytes hold the data a header of ``shape`` and ``dtype`` announces."""
    needed = prod(shape) * dtype.itemsize
    if available < needed:
        raise InputError(
            f"{where} is truncated: shape {tuple(shape)} needs {needed} bytes of data, "
            f"the file holds {max(available, 0)}"
        )


def _open_npy(spec, path, raw):
    with open(path, "rb") as f:
        magic = f.read(4)
        f.seek(0)
        if magic == b"PK\x03\x04":
            raise InputError(f"{spec} is a .npz archive: name the array inside it as {raw}:NAME")
        shape, fortran, dtype, offset = _read_npy_header(f, spec)
    _check_array(spec, shape, dtype)
    _check_size(spec, shape, dtype, os.path.getsize(path) - offset)
    return RowSource(spec, "npy", path, None, shape, dtype, fortran, offset)


def _member_info(archive, member, where):
    """The zip entry of ``member``: named ``member`` exactly, else ``member.npy`` (as ``np.load``)."""
    names = archive.namelist()
    for name in (member, member + ".npy"):
        if name in names:
            return archive.getinfo(name)
    known = ", ".join(name.removesuffix(".npy") for name in names) or "no arrays"
    raise InputError(f"{where}: the archive has no array named {member!r} (it holds: {known})")


def _load_compressed_member(where, path, name, check=None):
    """A compressed member, decompressed whole and checked (CRC included; ``check``: its shape
    and dtype, ``_check_array`` by default); InputError if it is corrupt."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open(name) as f:
            shape, fortran, dtype, header_length = _read_npy_header(f, where)
            (check or _check_array)(where, shape, dtype)
            info = archive.getinfo(name)
            _check_size(where, shape, dtype, info.file_size - header_length)
            flat = np.empty(prod(shape), dtype)
            received = f.readinto(memoryview(flat.view(np.uint8)))
            if received != flat.nbytes:
                raise InputError(f"{where} is truncated: shape {tuple(shape)} needs {flat.nbytes} bytes of data")
            while f.read(1 << 16):  # to the member's end, where zipfile checks its CRC
                pass
    except (zlib.error, zipfile.BadZipFile, EOFError, RuntimeError, NotImplementedError) as error:
        raise InputError(f"{where}: the compressed array is corrupt ({error})") from None
    return flat.reshape(shape, order="F" if fortran else "C")


def _open_npz_member(spec, path, member, check=None):
    check = check or _check_array
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise InputError(f"{spec} is not a .npz archive (not a zip file)") from None
    with archive:
        info = _member_info(archive, member, spec)
        if info.compress_type != zipfile.ZIP_STORED:
            array = _load_compressed_member(spec, path, info.filename, check)
            source = RowSource(spec, "npz-compressed", path, info.filename, array.shape, array.dtype)
            source._cache = array
            return source
        try:
            with archive.open(info) as f:
                shape, fortran, dtype, header_length = _read_npy_header(f, spec)
        except (RuntimeError, NotImplementedError) as error:  # encrypted, or an unknown zip feature
            raise InputError(f"{spec} cannot be read: {error}") from None
    check(spec, shape, dtype)
    # A stored member is a .npy byte for byte after its local file header: map it in place.
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise InputError(f"{spec}: the archive is corrupt (no local header for {info.filename})")
    name_length = int.from_bytes(local[26:28], "little")
    extra_length = int.from_bytes(local[28:30], "little")
    data_start = info.header_offset + 30 + name_length + extra_length
    # The member's own size bounds its data, not the file's (the zip directory follows it).
    member_end = min(data_start + info.file_size, os.path.getsize(path))
    offset = data_start + header_length
    _check_size(spec, shape, dtype, member_end - offset)
    return RowSource(spec, "npy", path, info.filename, shape, dtype, fortran, offset)


def _zarr_array(where, path):
    try:
        import zarr
    except ImportError:
        raise InputError(
            f"{where} is a directory; reading Zarr arrays needs the [dask] extra: pip install 'kdloss[dask]'"
        ) from None
    from . import _zarr_bfloat16

    if _zarr_bfloat16.names_bfloat16(path):
        try:
            _zarr_bfloat16.register()
        except ImportError:
            raise InputError(f"{where} holds bfloat16; reading it needs ml_dtypes: pip install ml_dtypes") from None
    try:
        return zarr.open_array(path, mode="r")
    except (ValueError, OSError, KeyError, TypeError) as error:
        raise InputError(f"{where} is a directory but not a Zarr array ({error})") from None


def _open_zarr(spec, path):
    array = _zarr_array(spec, path)
    dtype = np.dtype(array.dtype)
    _check_array(spec, array.shape, dtype)
    source = RowSource(spec, "zarr", path, None, array.shape, dtype)
    source._cache = array
    return source


def resolved_input(where, path):
    """``resolve_existing(path)``, or an InputError that starts with ``where``."""
    try:
        return resolve_existing(path)
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"{where}: no such file or directory") from None
    except OSError as error:
        raise InputError(f"{where} cannot be read: {error.strerror or error}") from None


def open_logits(spec, name):
    """Open ``spec`` (``FILE.npy``, ``FILE.npz:NAME`` or a Zarr directory) as a checked RowSource.

    ``name`` ("student", "teacher") starts every message.
    """
    path, member = _split_spec(spec)
    where = f"{name} {spec}"
    path, status = resolved_input(where, path)
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
    source.file_id = file_id(status)
    return source
