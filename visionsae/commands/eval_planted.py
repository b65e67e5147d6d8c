"""``visionsae eval planted``: SAEs on planted-feature data (see :mod:`visionsae.eval.planted`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from ..errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..eval.planted import ALL
    from ..planted import PlantedConfig

    parser.add_argument("--rules", default="topk,batchtopk,abstopk,jumprelu,relu",
                        help=f"comma-separated sparsity rules or variants, or 'all' ({ALL}) (default: the core rules)")
    parser.add_argument("--samples", type=int, default=300_000, help="training samples per SAE (default: 300000)")
    parser.add_argument("--n-latents", type=int, default=2048, help="dictionary size (default: 2048)")
    parser.add_argument("--d-in", type=int, default=PlantedConfig.d_in, help=f"width of the planted data (default: {PlantedConfig.d_in})")
    parser.add_argument("--n-true", type=int, default=PlantedConfig.n_true, help=f"true directions (default: {PlantedConfig.n_true})")
    parser.add_argument("--mean-active", type=float, default=PlantedConfig.mean_active,
                        help=f"mean active true features per sample (default: {PlantedConfig.mean_active})")
    parser.add_argument("--batch-size", type=int, default=1024, help="rows per training step (default: 1024)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the SAEs (default: 0)")
    parser.add_argument("--markdown", action="store_true", help="also print the results as a Markdown table (the README's)")
    parser.add_argument("--out", default=None, help="write the JSON here as well as to stdout")


def run(args: argparse.Namespace) -> int:
    from ..sae.io import atomic_write_bytes
    from ..eval.planted import ALL, VARIANTS, evaluate_rule, markdown_table
    from ..planted import PlantedConfig

    from ..sae import RULES

    rules = [r.strip() for r in (ALL if args.rules == "all" else args.rules).split(",") if r.strip()]
    unknown = [r for r in rules if r not in RULES and r not in VARIANTS]
    if unknown:
        raise UsageError(f"unknown sparsity rules or variants {unknown}; expected some of {sorted(set(RULES) | set(VARIANTS))}")
    results = []
    for rule in rules:
        planted = PlantedConfig(d_in=args.d_in, n_true=args.n_true, mean_active=args.mean_active,
                                signed=(rule == "abstopk"), seed=args.seed)
        res = evaluate_rule(rule, total_samples=args.samples, n_latents=args.n_latents, planted=planted, seed=args.seed,
                            progress=True, batch_size=args.batch_size)
        print(json.dumps(res), flush=True)
        results.append(res)
    planted = PlantedConfig(d_in=args.d_in, n_true=args.n_true, mean_active=args.mean_active, seed=args.seed)
    report = {"planted": planted.to_dict(), "results": results}
    if args.markdown:
        print(markdown_table(results))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out, json.dumps(report, indent=2).encode())
    return 0
