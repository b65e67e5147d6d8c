"""Planted-feature evaluation: train SAEs on data with known features and score them.

``visionsae eval planted`` trains one SAE per sparsity rule or variant on a planted set
(by default d_in 256, 1024 true directions, 8 active per sample on average) and reports, as
JSON (and with ``--markdown`` as the README's table), FVU and L0 on held-out batches, the
dead fraction, training throughput and the share of true directions recovered (best
decoder cosine > 0.9).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..planted import PlantedConfig, PlantedData, recovery
from ..sae import SAEConfig, SparseAutoencoder
from ..sae.metrics import FVU
from ..train import TrainConfig, train_sae
from ..errors import UsageError

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
        raise UsageError(f"unknown variant {name!r}; expected one of {sorted(set(RULES) | set(VARIANTS))}")
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
    fvu = FVU()
    l0 = 0.0
    fired = torch.zeros(sae.n_latents, dtype=torch.bool)
    for i in range(n_batches):
        x = data.batch(10_000_000 + i, batch_size)  # indices never used for training
        code = sae.encode(x)
        x_hat = sae.decode(code)
        fvu.update(x, x_hat)
        l0 += float(code.l0().float().mean())
        fired[code.indices[code.values != 0]] = True
    rec = recovery(sae.W_dec, data.directions)
    signed = data.cfg.signed
    return {
        "fvu": fvu.value,
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
