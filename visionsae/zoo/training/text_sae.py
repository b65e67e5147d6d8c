"""The zoo's text SAE and its class concepts: the ground of ItD erasure on the zoo.

A TopK SAE on the fashion pipeline's MiniLM text encoder at :data:`HOOK`, trained on the tokens
of the ``select`` prompt family (``visionsae.zoo.prompt_families``: the zoo's training captions
of all ten classes, their basic forms, misspellings, descriptions, scenes and near misses) and
generic ImageNet-class prompts of that family; and a concept set with one concept per
Fashion-MNIST class, each a sparse linear read-out of SAE features fitted on ``select`` and
calibrated on ``calibrate`` (:func:`visionsae.concepts.build.build_linear_concept_set`).
Nothing of the ``evaluate`` family, which ``visionsae eval erasure`` measures on, chose
anything here.

    visionsae zoo text-sae --out assets/zoo/fashion-text-sae
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..settings import TEXT_HOOK as HOOK, TEXT_SAE_DIR as SAE_DIR
from ...sae.io import atomic_write_bytes

MAX_FPR = 0.01  # each calibrate group (other classes, near misses, generic) flags at most this share
L1 = 3e-4


def family_prompts(family: str, label: int) -> list[str]:
    """Every positive prompt of class ``label`` in ``family`` (all kinds)."""
    from ..prompt_families import concept_prompts

    return [p for ps in concept_prompts(label, family).values() for p in ps]


def corpus(seed: int = 0, n_generic: int = 3000) -> list[str]:
    """The SAE's training prompts: the ``select`` family of every class, its near misses, and
    ``n_generic`` generic prompts of that family."""
    from ..captions import NUM_CLASSES
    from ..prompt_families import generic_prompts, near_miss_prompts

    prompts = [p for c in range(NUM_CLASSES) for p in family_prompts("select", c)]
    prompts += [p for c in range(NUM_CLASSES) for p in near_miss_prompts(c, "select")]
    prompts += generic_prompts("select", n_generic, seed=seed)
    return list(dict.fromkeys(prompts))


def text_source(pipe=None, hook: str = HOOK):
    """A TextEncoderSource on the zoo pipeline's MiniLM at ``hook`` (tokenised as the pipeline)."""
    from ...sources.text import TextEncoderSource
    from ..t2i import load_minilm_text_encoder, load_minilm_tokenizer

    if pipe is not None:
        return TextEncoderSource(pipe.text_encoder, pipe.tokenizer, hook)
    return TextEncoderSource(load_minilm_text_encoder(), load_minilm_tokenizer(), hook)


def build_concepts(sae, src, max_fpr: float = MAX_FPR, l1: float = L1, progress: bool = True, hardening=None):
    """The ten class concepts: fitted on ``select`` (with ``hardening``, a
    :mod:`visionsae.zoo.harden` file, its attack-style select-family prompts the stock pipeline
    draws as each class too), calibrated on ``calibrate``."""
    from .harden import positives
    from ...concepts.build import build_linear_concept_set
    from ..captions import CLASS_NAMES, NUM_CLASSES
    from ..prompt_families import generic_prompts, near_miss_prompts

    names = [CLASS_NAMES[c] for c in range(NUM_CLASSES)]
    return build_linear_concept_set(
        sae, src,
        {n: family_prompts("select", c) for c, n in enumerate(names)},
        generic_prompts("select", 1500, seed=1),
        {n: family_prompts("calibrate", c) for c, n in enumerate(names)},
        generic_prompts("calibrate", 1500, seed=0),
        near_misses={n: near_miss_prompts(c, "select") for c, n in enumerate(names)},
        near_misses_heldout={n: near_miss_prompts(c, "calibrate") for c, n in enumerate(names)},
        max_fpr=max_fpr, l1=l1, progress=progress, extra_positives=positives(hardening) if hardening else None,
    )


def summary(cs) -> dict:
    keep = ("recall", "fpr_keep", "fpr_near_misses", "fpr_other_concepts")
    return {n: {k: c.calibration.get(k) for k in keep} | {"features": len(c.features), "edit_features": len(c.erased)}
            for n, c in cs.concepts.items()}


def train_text_sae(src, n_latents: int, k: int, samples: int, seed: int, run_dir: Path):
    """A TopK SAE on every token of :func:`corpus` (padding included: the UNet sees it)."""
    from ...sae import SAEConfig
    from ...train import TrainConfig, original_defaults, train_sae

    prompts = corpus(seed)
    start = time.perf_counter()
    acts = torch.cat(list(src.rows(prompts, batch_size=128, seed=seed, shuffle=False)))
    print(f"{len(prompts)} prompts -> {acts.shape[0]} token rows in {time.perf_counter() - start:.0f}s", flush=True)

    def batches():
        g = torch.Generator().manual_seed(seed)
        while True:
            for idx in torch.randperm(acts.shape[0], generator=g).split(1024):
                if idx.numel() == 1024:
                    yield acts[idx]

    cfg = SAEConfig(d_in=acts.shape[1], n_latents=n_latents, k=k, hook=src.hook, model="all-MiniLM-L6-v2 (zoo fashion-t2i)",
                    extra={"corpus": f"the select prompt family: {len(prompts)} prompts"})
    pinned = original_defaults(n_latents, samples)
    return train_sae(cfg, TrainConfig(out_dir=str(run_dir), total_samples=samples, seed=seed, overwrite=True, **pinned),
                     batches())  # run_dir is this script's scratch folder: a rerun replaces it


def build(args) -> int:
    """The run ``visionsae zoo text-sae`` starts, from its parsed flags."""

    from ...sae import SparseAutoencoder
    from .. import zoo_dir

    out = Path(args.out) if args.out else zoo_dir() / SAE_DIR
    torch.manual_seed(args.seed)
    src = text_source(hook=args.hook)
    run_dir = Path("runs/zoo-text-sae")
    if args.concepts_only:
        sae = SparseAutoencoder.from_pretrained(out)
        info = json.loads((out / "training.json").read_text()) if (out / "training.json").exists() else {}
    else:
        sae = train_text_sae(src, args.n_latents, args.k, args.samples, args.seed, run_dir)
        sae.save_pretrained(out)
        sae = SparseAutoencoder.from_pretrained(out)
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        info = {"final_train_fvu": metrics[-1]["fvu"]}
    if args.hardening == "none":
        hardening = None
    elif args.hardening is not None:
        hardening = Path(args.hardening)
    else:
        hardening = out / "hardening.json" if (out / "hardening.json").exists() else None
    cs = build_concepts(sae, src, hardening=hardening)
    cs.save(out / "concepts.json")
    info["concepts"] = summary(cs)
    info["concepts_split"] = "features fitted on the select family, thresholds set on the calibrate family"
    info["hardening"] = str(hardening.name) if hardening else None
    atomic_write_bytes(out / "training.json", json.dumps(info, indent=2).encode())
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":  # the same as `visionsae zoo text-sae`
    import sys

    from ...commands import main

    sys.exit(main(["zoo", "text-sae", *sys.argv[1:]]))
