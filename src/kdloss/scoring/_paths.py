"""Where the inputs and the output of ``kdloss score`` really are, as the OS resolves them.

A path is resolved once, here, and the resolved path is the one that is then read or written:
``link/../s.npy`` is the ``s.npy`` beside the folder ``link`` points to (the OS's reading),
not the ``s.npy`` of the current folder (a textual ``os.path.abspath`` would drop ``link/..``).
A file is identified by its device and inode, so an output that is an input under another
spelling, a symlink to one or a hard link of one is recognised whatever the path says.
"""

import os
import stat

from ._errors import InputError


def file_id(status):
    """``(device, inode)``: what identifies a file, whatever path or link reaches it."""
    return (status.st_dev, status.st_ino)


def resolve_existing(path):
    """``(real path, os.stat result)`` of an existing path, resolved as the OS resolves it.

    ``os.stat`` is the OS's own resolution (it raises for a missing folder on the way, even
    one that a later ``..`` leaves); ``os.path.realpath`` spells the same file without links
    or ``..``, and the two must name the same file.
    """
    status = os.stat(path)
    real = os.path.realpath(path)
    if file_id(os.stat(real)) != file_id(status):
        raise InputError(f"{path}: cannot tell which file this path names (it resolves to {real})")
    return real, status


def resolve_output(out, inputs, option="--out"):
    """The absolute path ``--out`` writes, decided once; InputError if it cannot or must not be written.

    ``inputs``: ``(name, file id)`` of each input (``name`` as messages call it). The output's folder is resolved by the
    OS (links and ``..`` included) and the file name is then taken in that folder, which is
    exactly where the output is written. An output that is an input (the same file under any
    spelling, through a symlink, or as a hard link) is refused. ``option`` names the path in messages.
    """
    folder, name = os.path.split(out)
    if name in ("", ".", ".."):
        raise InputError(f"{option} {out} names a folder, not a file")
    try:
        real_folder, folder_status = resolve_existing(folder or os.curdir)
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"{option} {out}: the folder {folder} does not exist") from None
    except OSError as error:
        raise InputError(f"{option} {out}: the folder {folder} cannot be reached: {error.strerror or error}") from None
    if not stat.S_ISDIR(folder_status.st_mode):
        raise InputError(f"{option} {out}: {folder} is not a folder")
    if not os.access(real_folder, os.W_OK | os.X_OK):
        raise InputError(f"{option} {out}: the folder {real_folder} is not writable")
    target = os.path.join(real_folder, name)
    try:
        status = os.stat(target)  # follows a symlink to the file it names
    except FileNotFoundError:
        return target  # nothing there yet (or a dangling symlink, which the output replaces)
    except OSError as error:
        raise InputError(f"{option} {out} cannot be checked: {error.strerror or error}") from None
    if stat.S_ISDIR(status.st_mode):
        raise InputError(f"{option} {out} is a directory")
    for name, input_id in inputs:
        if file_id(status) == input_id:
            raise InputError(f"{option} {out} is one of the inputs (the {name}); choose another file")
    return target
