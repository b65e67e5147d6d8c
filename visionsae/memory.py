"""Keep freed memory in the process instead of handing it back to the kernel (glibc malloc)."""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_ENV = "VISIONSAE_KEEP_FREED_MEMORY"
_done = False


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve blocks up to 32 MB from its heap and to keep what is freed.

    By default glibc hands large freed blocks back to the kernel, and a model's forward pass
    then takes a page fault and a zero-fill for every 4 KB of its intermediate tensors, batch
    after batch: MiniLM's forward inside extraction took ~25,000 faults a batch and ran 5-15%
    slower than the same forward alone (``benchmarks.extract_throughput``). SAE training's
    fresh gradient and temporary tensors (8 MB each at 512 x 4096) took the same faults: with
    this the default planted setting's step was 0.6-2.6 ms (2-7%) faster in seven of eight
    alternating runs. With it the process keeps up to its peak heap instead. Called by
    ``extract()`` and the trainer. It is process-wide, and set once; returns
    whether it is in effect (False off Linux/glibc, or with ``VISIONSAE_KEEP_FREED_MEMORY=0``).
    """
    global _done
    if _done:
        return True
    if os.environ.get(_ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    return _done
