"""Planted-feature evaluation: train SAEs on data with known features and score them.

``visionsae eval planted`` trains one SAE per sparsity rule or variant on a planted set
(by default d_in 256, 1024 true directions, 8 active per sample on average) and reports, as
JSON (and with ``--markdown`` as the README's table), FVU and L0 on held-out batches, the
dead fraction, training throughput and the share of true directions recovered (best
decoder cosine > 0.9).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..planted import PlantedConfig, PlantedData, recovery
from ..sae import SAEConfig, SparseAutoencoder
from ..train import TrainConfig, train_sae

# Settings per rule on a planted set. The TopK family gets k = 2x the set's mean count of
# active features (added by `variant_settings`); JumpReLU's thresholds start near the
# smallest feature magnitudes of inputs scaled to norm sqrt(d_in).
RULE_SETTINGS: dict[str, dict[str, Any]] = {
    "topk": {},
    "batchtopk": {},
    "abstopk": {},
    "jumprelu": {"jumprelu_threshold": 2.0, "jumprelu_bandwidth": 0.5, "l0_coefficient": 2e-3},
    "relu": {"l1_coefficient": 2e-3},
    # k is only top-AFA's cap; the AFA loss keeps the encoder's values at the input's
    # scale (without it, shrunk values make every input take the cap).
    "topafa": {"afa_coefficient": 1.0},
    "featurechoice": {},
    "mutualchoice": {},
    # Targets span the planted features' frequencies (added by `variant_settings`); the
    # biases chase encoder rows that grow under Adam, so a smaller step keeps them together.
    "gba": {"gba_groups": 8, "lr": 2e-3},
    "variational": {},
}

# Variants that are not a rule of their own: a rule plus loss terms.
VARIANTS: dict[str, dict[str, Any]] = {
    "matryoshka": {"sparsity": "batchtopk"},  # + prefix widths n/16, n/4 (Bussmann et al. use BatchTopK)
}


def variant_settings(name: str, planted: PlantedConfig, n_latents: int) -> dict[str, Any]:
    """SAEConfig fields (and ``lr``, a training setting) of a rule or variant on ``planted``."""
    from ..sae import RULES

    if name in VARIANTS:
        settings = dict(VARIANTS[name])
    elif name in RULES:
        settings = {"sparsity": name, **RULE_SETTINGS.get(name, {})}
    else:
        raise ValueError(f"unknown variant {name!r}; expected one of {sorted(set(RULES) | set(VARIANTS))}")
    if RULES[settings["sparsity"]].uses_k:
        settings.setdefault("k", max(1, round(2 * planted.mean_active)))
    if name == "matryoshka":
        settings.setdefault("matryoshka_widths", f"{n_latents // 16},{n_latents // 4}")
    if name == "gba":
        probs = PlantedData(planted).probs
        settings.setdefault("gba_max_frequency", float(probs.max()))
        settings.setdefault("gba_min_frequency", float(probs.min()))
    return settings


@torch.no_grad()
def score(sae: SparseAutoencoder, data: PlantedData, n_batches: int = 4, batch_size: int = 1024) -> dict[str, float]:
    """FVU, L0 and dead fraction on held-out batches, and recovery of the true directions."""
    sae.eval()
    fvu_num = fvu_den = 0.0
    l0 = 0.0
    fired = torch.zeros(sae.n_latents, dtype=torch.bool)
    for i in range(n_batches):
        x = data.batch(10_000_000 + i, batch_size)  # indices never used for training
        code = sae.encode(x)
        x_hat = sae.decode(code)
        fvu_num += float((x - x_hat).pow(2).sum())
        fvu_den += float((x - x.mean(0)).pow(2).sum())
        l0 += float(code.l0().float().mean())
        fired[code.indices[code.values != 0]] = True
    rec = recovery(sae.W_dec, data.directions)
    signed = data.cfg.signed
    return {
        "fvu": fvu_num / fvu_den,
        "l0": l0 / n_batches,
        "dead_fraction": float((~fired).float().mean()),
        "recovered": rec["recovered_abs"] if signed else rec["recovered"],
        "mean_best_cosine": rec["mean_best_cosine"],
    }


def evaluate_rule(
    rule: str,
    total_samples: int = 300_000,
    n_latents: int = 2048,
    planted: PlantedConfig | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = False,
    batch_size: int = 1024,
    **overrides: Any,
) -> dict[str, Any]:
    """Train one SAE of ``rule`` (a sparsity rule or a variant such as ``matryoshka``) on
    planted data and score it."""
    planted = planted or PlantedConfig(signed=(rule == "abstopk"), seed=seed)
    data = PlantedData(planted)
    settings = {**variant_settings(rule, planted, n_latents), **overrides}
    sae_settings = {k: v for k, v in settings.items() if k != "lr"}
    sae_cfg = SAEConfig(d_in=planted.d_in, n_latents=n_latents, **sae_settings)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(out_dir=str(out_dir or tmp), total_samples=total_samples, seed=seed, progress=progress,
                          checkpoint_every=0, lr=settings.get("lr"), overwrite=True)  # out_dir: this evaluation's own
        start = time.perf_counter()
        sae = train_sae(sae_cfg, cfg, data.batches(batch_size))
        seconds = time.perf_counter() - start
    return {
        "rule": rule,
        "settings": {k: v for k, v in settings.items() if k != "sparsity" or v != rule},
        "n_latents": n_latents,
        "train_samples": total_samples,
        "train_seconds": seconds,
        "samples_per_s": total_samples / seconds,
        **score(sae, data),
    }


def markdown_table(results: list[dict[str, Any]]) -> str:
    """The results as a Markdown table (one row per variant)."""
    lines = [
        "| variant | settings | FVU | L0 | recovered | dead | samples/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        settings = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["settings"].items())
        lines.append(
            f"| {r['rule']} | {settings} | {r['fvu']:.3f} | {r['l0']:.1f} | {r['recovered']:.3f} | "
            f"{r['dead_fraction']:.3f} | {r['samples_per_s']:,.0f} |"
        )
    return "\n".join(lines)


ALL = "topk,batchtopk,abstopk,jumprelu,relu,topafa,featurechoice,mutualchoice,matryoshka,gba,variational"


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    from ..sae import RULES

    rules = [r.strip() for r in (ALL if args.rules == "all" else args.rules).split(",") if r.strip()]
    unknown = [r for r in rules if r not in RULES and r not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown sparsity rules or variants {unknown}; expected some of {sorted(set(RULES) | set(VARIANTS))}")
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
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0
