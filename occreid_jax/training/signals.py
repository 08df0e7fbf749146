"""Interrupts while training saves: a second Ctrl-C or SIGTERM must not break the save the
first one started (orbax saves asynchronously; `checkpointer.close()` waits for it)."""

from __future__ import annotations

import signal
import sys
import threading


class SignalShield:
    """Ignores SIGINT and SIGTERM, with one line saying so, until `restore` (main thread only;
    elsewhere it does nothing, as Python only handles signals there)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._previous = {}
        self._told = False
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._notice)

    def _notice(self, signum, frame) -> None:
        del signum, frame
        if not self._told:
            print(
                "saving the checkpoint of the interrupted step; interrupts are ignored until "
                "it is written",
                file=sys.stderr,
                flush=True,
            )
            self._told = True

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
