"""Errors every layer may raise for the command line to print as one line."""

from __future__ import annotations


class UsageError(Exception):
    """A user mistake a command reports as one line, exit code 2, without a traceback."""
