"""Outputs that are whole after any crash: a file or a folder is written beside its final
name and swapped in by one rename, so a reader finds the old output or the new one, never a
part of either.

A folder that replaces an existing folder needs two renames on most systems (the old one out
of the way, the new one in), with a moment in between when neither is there. On Linux the two
are exchanged in one system call (`renameat2` with `RENAME_EXCHANGE`, Linux 3.15, glibc 2.28);
elsewhere the two renames are used and that moment remains.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import tempfile

import numpy as np

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# Names of what a write leaves beside its output while it runs: `.<name>.<random>`.
_STAGING_PREFIX = "."


def _renameat2():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    try:
        function = libc.renameat2
    except AttributeError:
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    return function


def exchange(first: str, second: str) -> bool:
    """Swaps two existing paths in one step; False where the system cannot (nothing moved)."""
    function = _renameat2()
    if function is None:
        return False
    result = function(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this filesystem or kernel cannot
        return False
    raise OSError(errno, os.strerror(errno), first)


def staging_folder(path: str) -> str:
    """A new, empty folder beside `path` for its next version (permissions as the umask says,
    not mkdtemp's private ones), after removing the ones a killed write left behind."""
    parent, name = os.path.split(os.path.abspath(path))
    remove_leftovers(parent, name)
    staging = tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{name}.", dir=parent)
    os.chmod(staging, 0o777 & ~_umask())
    return staging


def remove_leftovers(parent: str, name: str) -> list[str]:
    """Removes `.<name>.*` entries in `parent` (staging left by a killed write); returns them."""
    prefix = f"{_STAGING_PREFIX}{name}."
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(parent):
            if entry.startswith(prefix):
                full = os.path.join(parent, entry)
                if os.path.isdir(full) and not os.path.islink(full):
                    shutil.rmtree(full, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.remove(full)
                removed.append(full)
    return removed


def replace_folder(staging: str, path: str) -> None:
    """Puts the complete folder `staging` at `path`, replacing what is there; `path` holds the
    old folder or the new one at every instant where the system can exchange them."""
    if os.path.isdir(path) and not os.path.islink(path):
        if exchange(staging, path):
            shutil.rmtree(staging, ignore_errors=True)  # now the old version
            return
        parent, name = os.path.split(os.path.abspath(path))
        old = tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{name}.old.", dir=parent)
        os.replace(path, os.path.join(old, "previous"))
        os.replace(staging, path)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.replace(staging, path)


def write_npz(path: str, arrays: dict) -> str:
    """`np.savez(path, **arrays)` (".npz" added to a path without it, as numpy does), written
    to a temporary name beside `path` and renamed: an earlier file at `path` stays whole until
    the new one is complete. Returns the path written."""
    if not path.endswith(".npz"):
        path += ".npz"
    return _write_whole(path, lambda f: np.savez(f, **arrays))


def write_file(path: str, data: bytes | str) -> str:
    """`data` written to a temporary name beside `path`, flushed to disk and renamed: a reader
    (or a crash) finds the earlier file or the new one, never a part. Returns `path`."""
    # surrogateescape: file names that are not valid UTF-8 keep their very bytes
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return _write_whole(path, lambda f: f.write(raw))


def _write_whole(path: str, write) -> str:
    """`write(file)` into a temporary file beside `path` (after removing those a killed write
    left), flushed to disk, then renamed to `path`; the temporary goes on any error."""
    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    remove_leftovers(parent, name)
    handle, temporary = tempfile.mkstemp(prefix=f"{_STAGING_PREFIX}{name}.", dir=parent)
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    return path


def write_image(path: str, rgb: np.ndarray) -> str:
    """An RGB uint8 image [H, W, 3] written whole (`write_file`) in the format of its name."""
    import cv2

    ok, encoded = cv2.imencode(os.path.splitext(path)[1] or ".png", rgb[..., ::-1])
    if not ok:
        raise ValueError(f"cannot encode an image of shape {rgb.shape} for {path}")
    return write_file(path, encoded.tobytes())


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask
