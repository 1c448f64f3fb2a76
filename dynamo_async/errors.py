"""Errors by kind: a user's mistake is a ``UsageError``; anything else is a bug or a failure.

``UsageError`` is raised for what a user can fix: a config value, a command-line argument, a
data file, a model name. Its message says what was given and what was expected ("got X,
expected Y") and, where there is one, what to do. The CLI prints it as one line and exits with
status 2; every other exception keeps its traceback, so a bug hours into a run is not hidden
behind a one-line message. It is a ``ValueError``, so library callers can catch either.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A user's mistake, reported as one line by the CLI (see the module docstring)."""
