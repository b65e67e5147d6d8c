"""Errors meant for the user.

A :class:`UsageError` is a mistake the user can fix: bad input, a missing file, a refused
overwrite. It names the input and what was expected. The command line prints it as one
line ``visionsae: error: ...`` and exits with status 2; the Python API raises it as is. It
is a ``ValueError``, so code that already catches ``ValueError`` keeps working.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A mistake the user can fix; its message names the input and what was expected."""
