"""Errors meant for the user.

A :class:`UsageError` is a mistake the user can fix: bad input, a missing file, a refused
overwrite. It names the input and what was expected. The command line prints it as one
line ``visionsae: error: ...`` and exits with status 2; the Python API raises it as is. It
is a ``ValueError``, so code that already catches ``ValueError`` keeps working.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path


class UsageError(ValueError):
    """A mistake the user can fix; its message names the input and what was expected."""


class UnknownNameError(UsageError, KeyError):
    """A name the user gave (a concept, a class) that is not there (a :class:`UsageError` that is
    also a ``KeyError``, for code that catches the latter); its message reads as written."""

    def __str__(self) -> str:
        return ValueError.__str__(self)


class InputNotFoundError(UsageError, FileNotFoundError):
    """A file or directory the user named does not exist (a :class:`UsageError` that is also a
    ``FileNotFoundError``, for code that catches the latter)."""


def check_writable_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """``path`` as a directory this process can write into, or a :class:`UsageError` naming it.

    Call it before the work starts, so a bad ``--out`` fails at once instead of after an hour of
    work. Nothing is created: where ``path`` does not exist yet, its nearest existing ancestor
    must be a writable directory (a probe file is made there and removed at once).
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{what} {p} is a regular file, not a directory")
    _probe(p, f"{what} {p}")
    return p


def check_writable_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """``path`` as a file this process can write (its folder writable, the path not a directory),
    or a :class:`UsageError` naming it; nothing is created (see :func:`check_writable_dir`)."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{what} {p} is a directory; expected a file name")
    _probe(p.parent, f"{what} {p}")
    return p


def _probe(folder: Path, label: str) -> None:
    """Make and remove a file in ``folder``, or in its nearest existing ancestor."""
    probe_dir = folder
    while not probe_dir.exists() and probe_dir.parent != probe_dir:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise UsageError(f"{label} cannot be created: {probe_dir} is a regular file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=probe_dir, prefix=".visionsae-write-check-")
    except OSError as exc:
        raise UsageError(f"cannot write to {label}: {exc.strerror or exc} ({probe_dir})") from None
    os.close(fd)
    os.unlink(probe)


def write_failed(path: str | os.PathLike, exc: BaseException) -> UsageError:
    """The one-line error for a write that failed (disk full, no permission ...), naming the file."""
    code = getattr(exc, "errno", None)
    if code is None:  # safetensors' Rust errors carry the OS error in their text: "... (os error 28)"
        found = re.search(r"(?:os error |code: )(\d+)", str(exc))
        code = int(found.group(1)) if found else None
    reason = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "the disk quota is used up",
        errno.EFBIG: "the file is larger than this process may write (file size limit)",
    }.get(code) or (os.strerror(code) if code else None) or str(exc) or type(exc).__name__
    return UsageError(f"cannot write {path}: {reason}; nothing was kept of the unfinished file")
