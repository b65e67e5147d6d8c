"""``visionsae zoo harden``: attack-style select-family prompts drawn as their class (hardening.json; optional, not shipped). See :mod:`visionsae.zoo.training.harden`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..zoo.training import harden

    parser.description = harden.__doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--out", default=None, help=f"output JSON (default: the zoo's fashion-text-sae/{harden.FILE})")
    parser.add_argument("--seeds", type=int, default=40, help="select-family seed prompts per class (default: 40)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)


def run(args: argparse.Namespace) -> int:
    from ..zoo.training.harden import harden

    return harden(args)
