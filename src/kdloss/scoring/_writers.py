"""Per-row loss writers that never leave a partial file.

A writer streams into a temporary file in the output's own folder (so that the final rename
stays on one file system) and, only once every row is written, flushes it to disk and renames
it over the output with ``os.replace``, which is atomic on POSIX and Windows. Any exception
(``KeyboardInterrupt`` included) removes the temporary file instead, so an existing output is
only ever replaced by a complete one.

- ``.npy``: a NumPy header for the final shape and dtype, then the rows' bytes in C order,
  appended with ``write`` straight from the array (not a memory map, so nothing stays resident).
- ``.csv``: a ``row,loss`` header line, then one line per row: the flat row index (C order
  over the leading axes; ``numpy.unravel_index`` recovers the leading indices) and the loss in
  the shortest text that reads back to the same value of the output dtype (``nan``, ``inf``
  for special values), turned into text ``CSV_SLICE`` rows at a time.
"""

import os
import tempfile

import numpy as np

EXTENSIONS = (".npy", ".csv")
CSV_SLICE = 1 << 14  # rows turned into text at once: about 1 MB of it


def _new_file_mode(path):
    """The permission bits a plain ``open(path, "w")`` would give (or the existing file's)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


class AtomicWriter:
    """Context manager: ``write(losses)`` chunk by chunk; the output appears on a clean exit only."""

    def __init__(self, path, shape, dtype):
        self.path = os.path.abspath(path)
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.kind = os.path.splitext(path)[1].lower()
        self._file = None
        self._temp = None
        self._row = 0

    def __enter__(self):
        folder, name = os.path.split(self.path)
        fd, self._temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        self._file = os.fdopen(fd, "wb")
        if self.kind == ".npy":
            header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
            np.lib.format.write_array_header_1_0(self._file, header)
        else:
            self._file.write(b"row,loss\n")
        return self

    def write(self, losses):
        """Append the next rows' losses (a 1-D array in the output dtype)."""
        losses = np.ascontiguousarray(losses, dtype=self.dtype)
        if self.kind == ".npy":
            self._file.write(memoryview(losses).cast("B"))  # the array's own bytes, no copy
        else:
            for start in range(0, losses.size, CSV_SLICE):  # the text of a slice at a time
                part = losses[start:start + CSV_SLICE]
                first = self._row + start
                text = "".join(map("{},{}\n".format, range(first, first + part.size), part.astype(str).tolist()))
                self._file.write(text.encode("ascii"))
        self._row += losses.size

    def __exit__(self, kind, error, traceback):
        try:
            if kind is None:
                self._file.flush()
                os.fsync(self._file.fileno())
            self._file.close()
            if kind is None:
                os.chmod(self._temp, _new_file_mode(self.path))
                os.replace(self._temp, self.path)
                self._temp = None
        finally:
            if self._temp is not None:
                try:
                    os.unlink(self._temp)
                except OSError:
                    pass
        return False
