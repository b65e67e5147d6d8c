"""The ``visionsae`` console script: a thin entry point to :mod:`visionsae.commands`, where
every command and the parser live."""

from __future__ import annotations

import sys

from .commands import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
