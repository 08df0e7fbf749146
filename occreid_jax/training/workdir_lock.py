"""One command per workdir: training, evaluation, export and extraction take a lock on it.

The lock is an exclusive `flock` on `<workdir>/.occreid.lock`, which also records who holds it
(pid, host, command, start time) for the message a second command gets. The operating system
drops a `flock` when its process ends, however it ends, so a lock whose process is gone is
simply taken again; the record it left (a process killed before it could clear it) is named
in a one-line warning. In a multi-process run only process 0 takes it (the others write
nothing to the workdir). `flock` is per host on most network filesystems: two machines
sharing one workdir over NFS are not kept apart.

    with workdir_lock.held(run.workdir, "train"):
        ...
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys

from occreid_jax import distributed
from occreid_jax.errors import UserError

LOCK_NAME = ".occreid.lock"

# realpath of a workdir -> [file descriptor, depth]: this process's locks, re-entrant.
_HELD: dict[str, list[int]] = {}


def _describe(record: dict) -> str:
    since = record.get("since", "?")
    return (
        f"pid {record.get('pid', '?')} on {record.get('host', '?')} "
        f"({record.get('command', '?')}, since {since})"
    )


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode("utf-8", "replace").strip()
    if not text:
        return {}
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return {"pid": "?", "host": "?", "command": "unreadable lock record"}
    return record if isinstance(record, dict) else {}


def _noun(flag: str) -> str:
    return "the workdir" if flag == "--workdir" else f"the {flag} folder"


def acquire(workdir: str, command: str, reads_only: bool = False, flag: str = "--workdir") -> None:
    """Takes the workdir's lock for this process (creating the workdir), or raises UserError
    naming the process that holds it. Re-entrant within one process.

    `reads_only` (eval, extract to another folder): a workdir that cannot be written (a
    read-only copy of a run) is read without its lock, with one line saying so."""
    if not distributed.is_main_process():
        return
    path = os.path.realpath(workdir)
    if path in _HELD:
        _HELD[path][1] += 1
        return
    try:
        os.makedirs(path, exist_ok=True)
        fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        if reads_only and os.path.isdir(path):
            print(
                f"note: the workdir {workdir} is not writable ({error.strerror}): read "
                "without its lock",
                file=sys.stderr,
                flush=True,
            )
            _HELD[path] = [None, 1]
            return
        raise UserError(
            f"cannot write to {_noun(flag)} {workdir} ({error.strerror}); pass a writable {flag}"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read(fd)
        os.close(fd)
        raise UserError(
            f"{_noun(flag)} {workdir} is in use by {_describe(holder)}; wait for it to end, "
            f"or pass another {flag}"
        ) from None
    previous = _read(fd)
    if previous:
        print(
            f"warning: took over the lock of {workdir} left by {_describe(previous)}, "
            "which is no longer running",
            file=sys.stderr,
            flush=True,
        )
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "since": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(record).encode())
    _HELD[path] = [fd, 1]


def release(workdir: str) -> None:
    """Gives the lock back (after the last re-entrant `acquire`), clearing its record."""
    path = os.path.realpath(workdir)
    if path not in _HELD:
        return
    _HELD[path][1] -= 1
    if _HELD[path][1]:
        return
    fd, _ = _HELD.pop(path)
    if fd is None:  # read without the lock (`reads_only`)
        return
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def held(workdir: str, command: str, reads_only: bool = False, flag: str = "--workdir"):
    """`acquire` for the duration of a `with` block (`flag`: the option that named it)."""
    acquire(workdir, command, reads_only, flag)
    try:
        yield
    finally:
        release(workdir)
