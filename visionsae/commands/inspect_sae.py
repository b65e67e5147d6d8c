"""``visionsae inspect``: an SAE's statistics and, given a store, each feature's top inputs."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sae", help="SAE directory (cfg.json + sae.safetensors) or a Hugging Face repo id")
    p.add_argument("--store", help="activation store: measure the SAE on it and find each feature's top inputs")
    p.add_argument("--out", help="write stats.json, features.json (and features.png for images) here")
    p.add_argument("--top", type=int, default=8, help="top inputs per feature (default 8)")
    p.add_argument("--features", help="comma-separated feature ids to show (default: the most frequent)")
    p.add_argument("--num-features", type=int, default=16, help="how many features to show (default 16)")
    p.add_argument("--kinds", help="only rows of these token kinds, e.g. patch or text,end (default all)")
    p.add_argument("--max-rows", type=int, help="read at most this many rows of the store")
    p.add_argument("--batch-size", type=int, default=4096, help="rows per SAE forward (default 4096)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _atomic_json(path, obj) -> None:
    from visionsae.sae.io import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from visionsae.inspection import (crop_fraction, describe_features, format_text, image_grid, inspect_store,
                                      pick_features, sae_summary)
    from visionsae.sae import SparseAutoencoder
    from visionsae.store import ActivationStore

    from visionsae.errors import UsageError, check_writable_dir

    for flag, value in (("--top", args.top), ("--num-features", args.num_features), ("--max-rows", args.max_rows),
                        ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be a positive integer, got {value}")
    try:
        features = [int(f) for f in args.features.split(",") if f.strip()] if args.features else None
    except ValueError:
        raise UsageError(f"--features {args.features!r}: expected comma-separated integers") from None
    if args.out:
        check_writable_dir(args.out, "--out")  # before the store is read through
    sae = SparseAutoencoder.from_pretrained(args.sae, device=args.device).eval()
    if features and not all(0 <= f < sae.cfg.n_latents for f in features):
        raise UsageError(f"--features must be in [0, {sae.cfg.n_latents}), got {features}")
    stats = {"sae": str(args.sae), **sae_summary(sae)}
    described = []
    png = None
    if args.store:
        store = ActivationStore.open(args.store)
        result = inspect_store(sae, store, n_top=args.top, kinds=args.kinds, max_rows=args.max_rows,
                               batch_size=args.batch_size, device=args.device, progress=args.progress)
        stats["store"] = {"path": str(args.store), "hook": store.hook, **result.summary()}
        described = describe_features(store, result, pick_features(result, args.num_features, features))
        if args.out and any(item.get("image") for d in described for item in d["top"]):
            png = image_grid(described, Path(args.out) / "features.png", crop_fraction=crop_fraction(store))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        _atomic_json(out / "stats.json", stats)
        if described:
            _atomic_json(out / "features.json", described)
    brief = {k: v for k, v in stats.items() if k != "config"}
    if "store" in brief:
        brief["store"] = {k: v for k, v in brief["store"].items() if k != "frequency_log10_histogram"}
    print(json.dumps(brief))
    if described:
        print(format_text(described))
    if png:
        print(f"image grid: {png}")
    return 0
