"""The one exception type for user mistakes.

Anything a user can fix (a missing dataset, a bad config value, an incompatible checkpoint)
raises `UserError` with a one-line message naming the problem and the fix. `main.py` prints
that line and exits with status 2 instead of showing a stack trace. The argparse commands
(`data.prepare`, `search`) report bad arguments the same way (`OneLineArgumentParser`).
"""

import argparse
import sys


class UserError(Exception):
    """A problem the user can fix; its message is one line: what is wrong and what to do."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose bad-argument message is one line on stderr, exit status 2."""

    def error(self, message: str):
        print(f"error: {message}; see --help", file=sys.stderr)
        sys.exit(2)
