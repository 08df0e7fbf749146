"""The one exception type for user mistakes.

Anything a user can fix (a missing dataset, a bad config value, an incompatible checkpoint)
raises `UserError` with a one-line message naming the problem and the fix. `main.py` prints
that line and exits with status 2 instead of showing a stack trace.
"""


class UserError(Exception):
    """A problem the user can fix; its message is one line: what is wrong and what to do."""
