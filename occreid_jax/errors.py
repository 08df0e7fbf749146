"""The one exception type for user mistakes.

Anything a user can fix (a missing dataset, a bad config value, an incompatible checkpoint)
raises `UserError` with a one-line message naming the problem and the fix. `main.py` prints
that line and exits with status 2 instead of showing a stack trace. The argparse commands
(`data.prepare`, `search`) report bad arguments the same way (`OneLineArgumentParser`).
"""

import argparse
import math
import os
import sys
import tempfile


class UserError(Exception):
    """A problem the user can fix; its message is one line: what is wrong and what to do."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose bad-argument message is one line on stderr, exit status 2."""

    def error(self, message: str):
        print(f"error: {message}; see --help", file=sys.stderr)
        sys.exit(2)


def int_at_least(minimum: int, maximum: int | None = None):
    """An argparse `type`: a whole number in [minimum, maximum], else a one-line error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    """An argparse `type`: a finite number > 0 (memory budgets, noise), else a one-line error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def check_writable(folder: str, flag: str) -> None:
    """One line before any work unless files can be made in `folder` (or, when it does not
    exist yet, in its nearest existing parent, where the command would create it).

    A real file is made and removed: permissions, read-only mounts and full quotas all show.
    """
    target = os.path.abspath(folder or ".")
    while not os.path.exists(target):
        target = os.path.dirname(target)
    if not os.path.isdir(target):
        raise UserError(f"{flag}={folder}: {target} is a file, not a folder; pass a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".occreid-write-check.", dir=target)
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise UserError(
            f"{flag}={folder} is not writable ({error.strerror}); pass a folder you can write to"
        ) from None
