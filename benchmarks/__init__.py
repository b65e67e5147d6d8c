"""Benchmarks of the README's figures; ``python -m benchmarks.run_all`` (``make bench``) runs them."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(out: str | None, report: dict) -> None:
    """Write a benchmark's JSON report to ``out`` (creating its folder); nothing when ``out`` is None."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2))


def current_rss_mb() -> float:
    """This process's resident memory now, in MB (Linux; 0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return 0.0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
