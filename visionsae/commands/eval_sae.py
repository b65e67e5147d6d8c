"""``visionsae eval sae``: an SAE's quality measures (see :mod:`visionsae.eval.sae`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any
from ..errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("saes", nargs="+", metavar="SAE", help="SAE directories; with several, also their stability")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--store", metavar="DIR", help="held-out activations: an activation store")
    data.add_argument("--planted", action="store_true",
                      help="held-out planted data (the set in the SAE's cfg.extra['planted'], else the default of its width), with recovery")
    parser.add_argument("--kinds", default=None, help="only these token kinds from the store, e.g. 'text'")
    parser.add_argument("--rows", type=int, default=32768, help="rows to evaluate on (default: 32768)")
    parser.add_argument("--batch-size", type=int, default=1024, help="rows per batch (default: 1024)")
    parser.add_argument("--dense-threshold", type=float, default=0.1, help="a latent firing on more than this share of rows is dense (default: 0.1)")
    parser.add_argument("--concepts", action="store_true",
                        help="agreement with supervised concept directions on real ImageNet-class prompts through a text model")
    parser.add_argument("--model", default=None, help="the text model for --concepts (default: the SAE's cfg.model)")
    parser.add_argument("--hook", default=None, help="the hook for --concepts (default: the SAE's cfg.hook)")
    parser.add_argument("--prompts-per-concept", type=int, default=150, help="prompts per concept for --concepts (default: 150)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits and prompt samples (default: 0)")
    parser.add_argument("--out", default=None, help="write the JSON here as well as to stdout")


def run(args: argparse.Namespace) -> int:
    from ..sae.io import atomic_write_bytes
    import torch

    from ..eval.sae import (concept_agreement, concept_prompts, dark_matter, min_dark_matter_rows, planted_recovery, pool,
                            pooled_codes, prompt_tokens, random_like, reconstruction_metrics, stability, text_source)
    from ..sae import SparseAutoencoder

    if not (args.store or args.planted or args.concepts):
        raise UsageError("say what to evaluate on: --store DIR, --planted, and/or --concepts")
    if args.rows < 1 or args.batch_size < 1:
        raise UsageError(f"--rows and --batch-size must be positive, got {args.rows} and {args.batch_size}")
    saes = [SparseAutoencoder.from_pretrained(p) for p in args.saes]
    report: dict[str, Any] = {"saes": []}
    for path, sae in zip(args.saes, saes):
        entry: dict[str, Any] = {"path": str(path), "sparsity": sae.cfg.sparsity, "n_latents": sae.n_latents}
        if args.store or args.planted:
            batches, data = _rows_of(args, sae)
            kept: list[torch.Tensor] = []

            def keep(it):
                for b in it:
                    kept.append(b)
                    yield b

            entry["metrics"] = reconstruction_metrics(sae, keep(batches), dense_threshold=args.dense_threshold, max_rows=args.rows)
            x = torch.cat(kept)[: args.rows]
            if x.shape[0] >= min_dark_matter_rows(sae.d_in):
                entry["dark_matter"] = dark_matter(sae, x, seed=args.seed)
            else:
                entry["dark_matter"] = {"skipped": f"{x.shape[0]} rows are too few for a {sae.d_in}-wide linear fit"}
            if data is not None:
                entry["recovery"] = planted_recovery(sae, data.directions, signed=data.cfg.signed)
        if args.concepts:
            model = args.model or sae.cfg.model
            hook = args.hook or sae.cfg.hook
            if not model or not hook:
                raise UsageError("--concepts needs a text model and a hook: pass --model and --hook (the SAE's config names none)")
            source = text_source(model, hook)
            prompts, members = concept_prompts(args.prompts_per_concept, seed=args.seed)
            rows, ids = prompt_tokens(source, prompts)
            if rows.shape[1] != sae.d_in:
                raise UsageError(f"hook {hook!r} of {model} gives {rows.shape[1]}-wide rows but the SAE reads {sae.d_in}")
            acts = pool(rows, ids, len(prompts))
            codes = pooled_codes(sae, rows, ids, len(prompts))
            entry["concepts"] = concept_agreement(sae, acts, codes, members, seed=args.seed)
            base = random_like(sae, seed=args.seed)
            base_codes = pooled_codes(base, rows, ids, len(prompts))
            entry["concepts_random_sae"] = concept_agreement(base, acts, base_codes, members, seed=args.seed)["mean"]
        report["saes"].append(entry)
        print(json.dumps({k: v for k, v in entry.items()}), flush=True)
    if len(saes) > 1:
        report["stability"] = stability(saes)
        print(json.dumps({"stability": report["stability"]}), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out, json.dumps(report, indent=2).encode())
    return 0


def _rows_of(args, sae):
    """The held-out rows for one SAE (a generator of batches) and, for planted data, its set."""
    import math

    if args.store:
        from ..store import ActivationStore

        store = ActivationStore.open(args.store)
        if store.d_in != sae.d_in:
            raise UsageError(f"the store {args.store} holds {store.d_in}-wide rows but the SAE reads {sae.d_in}")
        kinds = args.kinds.split(",") if args.kinds else None
        return store.batches(args.batch_size, seed=args.seed, shuffle=True, loop=False, kinds=kinds), None
    from ..planted import PlantedConfig, PlantedData

    planted = sae.cfg.extra.get("planted")
    data = PlantedData(PlantedConfig(**planted) if planted else PlantedConfig(d_in=sae.d_in))
    if data.cfg.d_in != sae.d_in:
        raise UsageError(f"the planted set is {data.cfg.d_in} wide but the SAE reads {sae.d_in}")
    n_batches = math.ceil(args.rows / args.batch_size)
    # Batch indices from 10_000_000 on are never used for training (as in eval planted).
    return data.batches(args.batch_size, n_batches, start=10_000_000), data
