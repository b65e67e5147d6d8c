"""``visionsae eval erasure``: ItD erasure on the zoo (see :mod:`visionsae.eval.erasure`)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--erase", action="append", default=None,
                        help="comma-separated classes to erase together; repeat for several runs (default: sneaker, then sneaker,bag,trouser)")
    parser.add_argument("--family", choices=["evaluate", "calibrate"], default="evaluate",
                        help="prompt family to measure on (default: evaluate, which chose nothing; calibrate is where the "
                             "zoo's strength was chosen)")
    parser.add_argument("--per-kind", type=int, default=None,
                        help="at most this many prompts per class and kind (default: all; a seeded sample)")
    parser.add_argument("--out", default="runs/eval-erasure", help="folder for erasure.json and the PNG grids")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory-probe", action="store_true", help="skip the 2^19-latent memory measurement")
    parser.add_argument("--batch", type=int, default=16, help="prompts per pipeline call (default: 16)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1, as the zoo is measured)")
    from ._args import add_erase_arguments

    add_erase_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import torch
    from ..eval.erasure import DEFAULT_SETS, evaluate

    from ..errors import UsageError
    from ..zoo import CLASS_NAMES

    torch.set_num_threads(args.threads)
    sets = [s.split(",") for s in (args.erase or DEFAULT_SETS)]
    unknown = sorted({n for s in sets for n in s} - set(CLASS_NAMES))
    if unknown:
        raise UsageError(f"--erase: unknown classes {unknown}; the zoo's classes are {list(CLASS_NAMES)}")
    if args.per_kind is not None and args.per_kind < 1:
        raise UsageError(f"--per-kind must be at least 1, got {args.per_kind}")
    report = evaluate(sets, args.family, args.per_kind, args.out, args.seed, not args.no_memory_probe, args.mode, args.value,
                      args.batch)
    print(json.dumps({k: v for k, v in report.items() if k != "calibration"}, indent=2))
    return 0
