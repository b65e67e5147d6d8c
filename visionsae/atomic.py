"""Atomic file writes: a temporary file in the same folder, fsync, rename over the target.

Readers see the old file or the new one, never half of one. A failed write (disk full, no
permission) leaves no temporary file behind and raises a :class:`~visionsae.errors.UsageError`
naming the target. Used by the SAE files (:mod:`visionsae.sae.io`) and the activation store.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import write_failed


def umask_mode() -> int:
    """The permissions a plain ``open(path, "w")`` gives a new file under this process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_replace(path: str | os.PathLike, *, tmp_name: str | None = None,
                   errors: tuple[type[BaseException], ...] = (OSError,)) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write; when the block ends it is
    renamed over ``path`` (see the module). ``tmp_name`` names it (the block creates the file);
    by default it is a fresh ``.NAME.XXXX.tmp``, given the usual permissions (0644 under umask
    022) once written. An exception of ``errors`` becomes the one-line write error."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if tmp_name is None:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
        else:
            tmp = path.with_name(tmp_name)
        yield Path(tmp)
        if tmp_name is None:  # mkstemp makes 0600 files (and a writer may replace it with its own)
            os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except errors as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise write_failed(path, exc) from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_chunks(path: str | os.PathLike, chunks: Iterable[bytes | memoryview], *, tmp_name: str | None = None) -> None:
    """Write the byte chunks one after another to ``path``, atomically and fsync'ed
    (:func:`atomic_replace`). They are written as they come: an iterator may stream them."""
    with atomic_replace(path, tmp_name=tmp_name) as tmp, open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write_chunks`)."""
    atomic_write_chunks(path, [data])
