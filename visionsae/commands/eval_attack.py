"""``visionsae attack``: red-team ItD on the zoo (see :mod:`visionsae.eval.attack`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..eval.attack import FAMILIES

    parser.add_argument("--family", choices=[*FAMILIES, "none", "all"], default="all",
                        help="attack family: text (nlpaug perturbations + beam search), whitebox (token swaps through the "
                             "erased pipeline's diffusion-loss gradient), concept_vector (Ring-A-Bell style), none (the seed "
                             "prompts unchanged), or all (default: none, then the three attacks)")
    parser.add_argument("--erase", default="sneaker", help="comma-separated classes erased together (default: sneaker)")
    parser.add_argument("--budget", type=int, default=None,
                        help="per seed prompt: queries (text, default 60), optimisation steps (whitebox, default 10) or "
                             "genetic generations (concept_vector, default 25); default: each family's own")
    parser.add_argument("--prompts", type=int, default=12,
                        help="seed prompts per erased class, from the evaluate prompt family (default: 12)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompts' sample, the searches and the images")
    parser.add_argument("--images-per-prompt", type=int, default=1,
                        help="images judged per prompt, at as many seeds, the majority deciding whether a pipeline draws "
                             "the concept (default 1: one image). The zoo draws a garment for every prompt, so one image "
                             "counts chance draws as successes; the report's 'chance' gives that level")
    parser.add_argument("--out", default="runs/attack", help="folder for attack.json (default: runs/attack)")
    parser.add_argument("--sae", default=None, help="SAE folder of the eraser (default: the zoo's fashion-text-sae)")
    parser.add_argument("--concepts", default=None, help="concept set JSON of that SAE (default: the zoo's)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    from ._args import add_erase_arguments

    add_erase_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import torch
    from ..eval.attack import FAMILIES, attack

    from ..errors import UsageError, check_writable_dir

    names = [n.strip() for n in args.erase.split(",") if n.strip()]
    if not names:
        raise UsageError(f"--erase: expected comma-separated concept names, got {args.erase!r}")
    if args.budget is not None and args.budget < 1:
        raise UsageError(f"--budget must be at least 1, got {args.budget}")
    if args.prompts < 1:
        raise UsageError(f"--prompts must be at least 1, got {args.prompts}")
    if args.images_per_prompt < 1:
        raise UsageError(f"--images-per-prompt must be at least 1, got {args.images_per_prompt}")
    if (args.sae is None) != (args.concepts is None):
        raise UsageError("--sae and --concepts go together (a concept set indexes one SAE's features)")
    for flag, path in (("--sae", args.sae), ("--concepts", args.concepts)):
        if path is not None and not Path(path).exists():
            raise UsageError(f"{flag}: {path} does not exist")
    check_writable_dir(args.out, "--out")
    torch.set_num_threads(args.threads)
    families = ("none", *FAMILIES) if args.family == "all" else (args.family,)
    report = attack(families, names, args.budget, args.seed, args.prompts, args.out, args.sae, args.concepts,
                    args.mode, args.value, images_per_prompt=args.images_per_prompt)
    print(json.dumps({"erased": report["erased"], "asr": report["asr"], "chance": report["chance"]["per_concept"],
                      "counted": {f: r["counted"] for f, r in report["families"].items()},
                      "out": str(Path(args.out) / "attack.json")}, indent=2))
    return 0
