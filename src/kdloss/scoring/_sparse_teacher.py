"""A sparse (top-k) teacher for ``kdloss score``: a ``.npz`` archive or a Zarr group whose
members ``indices`` (integers, ``(..., k)``) and ``values`` (floats, the same shape) hold each
row's token ids and the teacher's values there. Each member is a :class:`RowSource`, read a
chunk of rows at a time like dense logits."""

import os

import numpy as np

from ._errors import InputError
from ._inputs import RowSource, _check_array, _open_npz_member, _split_spec, _zarr_array, resolved_input
from ._paths import file_id

MEMBERS = ("indices", "values")


def is_sparse_spec(spec):
    """True for a ``.npz`` archive named without ``:NAME``, or a folder holding ``indices`` and
    ``values`` (a Zarr group): a sparse teacher rather than dense logits."""
    path, member = _split_spec(spec)
    if member is not None:
        return False
    if path.lower().endswith(".npz"):
        return True
    return all(os.path.isdir(os.path.join(path, name)) for name in MEMBERS)


def _check_indices(where, shape, dtype):
    if dtype.kind not in "iu":
        raise InputError(f"{where} has dtype {dtype}; the indices of a sparse teacher are integers")
    if len(shape) == 0 or shape[-1] == 0:
        raise InputError(f"{where} has shape {tuple(shape)}; indices need a last axis of k >= 1 slots")


class SparseTeacherSource:
    """``indices`` and ``values`` (RowSources of one shape ``(..., k)``), ``spec`` and ``shape``."""

    def __init__(self, spec, indices, values):
        self.spec = spec
        self.indices = indices
        self.values = values
        self.shape = indices.shape
        self.k = indices.shape[-1]
        if indices.shape != values.shape:
            raise InputError(f"teacher {spec}: indices and values must have the same shape, got "
                             f"{indices.shape} and {values.shape}")

    @property
    def sources(self):
        return (self.indices, self.values)


def open_sparse_teacher(spec):
    """Open ``spec`` (``FILE.npz`` or a Zarr group folder) as a :class:`SparseTeacherSource`."""
    where = f"teacher {spec}"
    path, status = resolved_input(where, spec)
    members = []
    for name, check in zip(MEMBERS, (_check_indices, _check_array)):
        member_where = f"{where} ({name})"
        try:
            if os.path.isdir(path):
                member_path = os.path.join(path, name)
                if not os.path.isdir(member_path):
                    raise InputError(f"{where}: a sparse teacher's Zarr group needs arrays 'indices' and 'values'")
                array = _zarr_array(member_where, member_path)
                dtype = np.dtype(array.dtype)
                check(member_where, array.shape, dtype)
                source = RowSource(member_where, "zarr", member_path, None, array.shape, dtype)
                source._cache = array
            else:
                source = _open_npz_member(f"{where}:{name}", path, name, check)
        except OSError as error:
            raise InputError(f"{where} cannot be read: {error.strerror or error}") from None
        source.file_id = file_id(status)
        members.append(source)
    return SparseTeacherSource(spec, *members)
