"""The one base class of errors a user can act on: the CLI prints them as one line, no traceback."""
from __future__ import annotations


class FruitlensError(Exception):
    """Says what went wrong, where, and what to do about it."""

    exit_code = 1
