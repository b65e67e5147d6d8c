"""``visionsae eval audit``: the blindspot audit on the zoo (see :mod:`visionsae.eval.audit`)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", default=None,
                        help="images, stores, SAE and the JSON (default: runs/eval-audit-rotation; with --single "
                             "runs/eval-audit)")
    parser.add_argument("--per-class", type=int, default=None,
                        help="real images (and captions) per class (default: 20 for the rotation, 50 with --single)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the rotation, comma-separated (default: 0,1,2; "
                                                         "seed 0 chose the ranking and the defaults, the others test them)")
    parser.add_argument("--no-itd", action="store_true", help="rotate omission and exaggeration only (no ItD-erased plants)")
    parser.add_argument("--copy-classes", default="all",
                        help="classes whose first caption is answered by a copy of its real image, comma-separated, "
                             "or 'all' (default: all ten)")
    parser.add_argument("--single", action="store_true",
                        help="the single plant of earlier versions instead of the rotation (sneaker ItD-erased, "
                             "trouser exaggerated, a bag copy) with the SAE's stability and a second generator")
    parser.add_argument("--seed", type=int, default=0, help="seed of --single")
    parser.add_argument("--no-stability", action="store_true", help="--single: skip training a second RA-SAE for the stability figure")
    parser.add_argument("--no-second-generator", action="store_true", help="--single: skip the unplanted second run of the generator")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")


def run(args: argparse.Namespace) -> int:
    import torch
    from ..eval.audit import evaluate, rotation

    from ..errors import UsageError

    torch.set_num_threads(args.threads)
    if args.single:
        res = evaluate(args.out_dir or "runs/eval-audit", args.per_class or 50, seed=args.seed,
                       stability=not args.no_stability, second_generator=not args.no_second_generator)
        print(json.dumps(res, indent=2))
        return 0
    from ..zoo import CLASS_NAMES

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds: expected comma-separated integers such as 0,1,2, got {args.seeds!r}") from None
    # None: every class (the rotation's default)
    copies = None if args.copy_classes.strip() == "all" else [c.strip() for c in args.copy_classes.split(",") if c.strip()]
    bad = [c for c in copies or () if c not in CLASS_NAMES]
    if bad or not seeds:
        raise UsageError(f"--copy-classes: unknown classes {bad}; the zoo's classes are {list(CLASS_NAMES)}" if bad
                         else "--seeds: give at least one seed")
    per_class = args.per_class or 20
    if per_class < 2:
        raise UsageError(f"--per-class: expected at least 2 images per class, got {per_class}")
    res = rotation(args.out_dir or "runs/eval-audit-rotation", per_class, seeds, itd=not args.no_itd, copy_classes=copies)
    print(json.dumps({"pooled": res["pooled"],
                      "seeds": {s: {"summary": v["summary"], "copies": v["copies"], "seconds": v["seconds"]}
                                for s, v in res["seeds"].items()}}, indent=2))
    return 0
