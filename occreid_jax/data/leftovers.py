"""Folders a killed dataset preparation leaves behind, removed by the next preparation.

tfds writes a dataset version into `incomplete.XXXXXX_<version>/` beside its final folder and
renames it when done; a process killed in between (SIGKILL, a lost machine) leaves that folder,
which nothing reads and nothing removes. Before preparing, the ones nobody has written to for
`IDLE_SECONDS` (a preparation still running writes every few seconds) are removed, with one line
each on stderr.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time

INCOMPLETE_PREFIX = "incomplete."  # tensorflow_datasets.core.constants.INCOMPLETE_PREFIX
IDLE_SECONDS = 600


def _last_write(folder: str) -> float:
    """The latest modification time of the folder or anything inside it."""
    latest = os.path.getmtime(folder)
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                latest = max(latest, os.path.getmtime(os.path.join(root, name)))
    return latest


def remove_incomplete(builder, idle_seconds: float = IDLE_SECONDS) -> list[str]:
    """Removes the idle `incomplete.*` folders beside `builder`'s version folder; returns them."""
    parent = os.path.dirname(os.fspath(builder.data_path).rstrip("/"))
    if not os.path.isdir(parent):
        return []
    removed = []
    now = time.time()
    for entry in sorted(os.listdir(parent)):
        folder = os.path.join(parent, entry)
        if not entry.startswith(INCOMPLETE_PREFIX) or not os.path.isdir(folder):
            continue
        if now - _last_write(folder) < idle_seconds:
            continue  # perhaps another process preparing it now
        shutil.rmtree(folder, ignore_errors=True)
        print(f"removed {folder}, left by an interrupted dataset preparation", file=sys.stderr)
        removed.append(folder)
    return removed
