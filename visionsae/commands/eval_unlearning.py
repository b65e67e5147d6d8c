"""``visionsae eval unlearning``: SAUCE unlearning on the zoo VQA (see :mod:`visionsae.eval.unlearning`)."""

from __future__ import annotations

import argparse
import json
from ..errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..control.sauce import TOKEN_SCOPES
    from ..zoo.settings import UNLEARN_MODE, UNLEARN_TOKENS, UNLEARN_VALUE

    parser.add_argument("--unlearn", action="append", default=None,
                        help="comma-separated classes to unlearn together; repeat for several runs "
                             "(default: sneaker, then sneaker,bag,trouser)")
    parser.add_argument("--per-class", type=int, default=100, help="test images per class (default: 100)")
    parser.add_argument("--out", default="runs/eval-unlearning", help="folder for unlearning.json")
    parser.add_argument("--mode", choices=["calibrated", "zero", "scale", "clamp"], default=UNLEARN_MODE or "calibrated",
                        help="how the concept features are suppressed; calibrated: each class's own feature count and "
                             f"scale, from its concept set (default: {UNLEARN_MODE or 'calibrated'})")
    parser.add_argument("--value", type=float, default=UNLEARN_VALUE,
                        help=f"factor of --mode scale, value of --mode clamp (default: {UNLEARN_VALUE:g})")
    parser.add_argument("--tokens", choices=list(TOKEN_SCOPES), default=UNLEARN_TOKENS,
                        help=f"edit the image tokens only or every token where a feature fires (default: {UNLEARN_TOKENS})")
    parser.add_argument("--batch", type=int, default=64, help="images per generate call (default: 64)")


def run(args: argparse.Namespace) -> int:
    import torch
    from ..eval.unlearning import DEFAULT_SETS, evaluate

    from ..zoo import CLASS_NAMES

    torch.set_num_threads(1)
    sets = [s.split(",") for s in (args.unlearn or DEFAULT_SETS)]
    unknown = sorted({n for s in sets for n in s} - set(CLASS_NAMES))
    if unknown:
        raise UsageError(f"unknown classes {unknown}; the zoo's classes are {list(CLASS_NAMES)}")
    if args.per_class < 1:
        raise UsageError(f"--per-class must be >= 1, got {args.per_class}")
    mode = None if args.mode == "calibrated" else args.mode
    report = evaluate(sets, args.per_class, args.out, mode, args.value, args.tokens, args.batch)
    print(json.dumps(report, indent=2))
    return 0
