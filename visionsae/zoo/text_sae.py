"""The zoo's text SAE and its class concepts: the ground of ItD erasure on the zoo.

A TopK SAE on the fashion pipeline's MiniLM text encoder at :data:`HOOK`, trained on the tokens
of the ``select`` prompt family (``visionsae.zoo.prompt_families``: the zoo's training captions
of all ten classes, their basic forms, misspellings, descriptions, scenes and near misses) and
generic ImageNet-class prompts of that family; and a concept set with one concept per
Fashion-MNIST class, each a sparse linear read-out of SAE features fitted on ``select`` and
calibrated on ``calibrate`` (:func:`visionsae.concepts.build.build_linear_concept_set`).
Nothing of the ``evaluate`` family, which ``visionsae eval erasure`` measures on, chose
anything here.

    python -m visionsae.zoo.text_sae --out assets/zoo/fashion-text-sae
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

# The last of MiniLM's six layers, which the UNet reads. Against layer 3 (two thirds deep, as ItD
# hooks CLIP layer 8 of 12) the classifier's held-out recall on the calibrate family at the same
# false-positive cap was higher, and an edit there cannot be rebuilt by later layers (at layer 3
# zeroing the features left 67% of sneaker prompts drawn as sneakers). See the README.
HOOK = "encoder.layer.5"
SAE_DIR = "fashion-text-sae"
# How ItD deactivates a flagged class on the zoo, chosen on the calibrate family: with
# `visionsae eval erasure --family calibrate --per-kind 4 --value V`, -1 left 3.2% of the flagged
# sneaker / bag / trouser prompts drawn as the erased class, -2 and -3 none; -2 is the weakest
# that erased them all (see the README).
ERASE_MODE = "scale"
ERASE_VALUE = -2.0
MAX_FPR = 0.01  # each calibrate group (other classes, near misses, generic) flags at most this share
L1 = 3e-4


def add_erase_arguments(parser: argparse.ArgumentParser) -> None:
    """--mode / --value of an ItD edit on the zoo, with the zoo's measured defaults."""
    parser.add_argument("--mode", choices=["zero", "scale"], default=ERASE_MODE,
                        help=f"deactivate by zeroing the features or scaling them by --value (default: {ERASE_MODE})")
    parser.add_argument("--value", type=float, default=ERASE_VALUE,
                        help=f"factor of --mode scale (default: {ERASE_VALUE:g}, chosen on the calibrate prompt family)")


def family_prompts(family: str, label: int) -> list[str]:
    """Every positive prompt of class ``label`` in ``family`` (all kinds)."""
    from .prompt_families import concept_prompts

    return [p for ps in concept_prompts(label, family).values() for p in ps]


def corpus(seed: int = 0, n_generic: int = 3000) -> list[str]:
    """The SAE's training prompts: the ``select`` family of every class, its near misses, and
    ``n_generic`` generic prompts of that family."""
    from .captions import NUM_CLASSES
    from .prompt_families import generic_prompts, near_miss_prompts

    prompts = [p for c in range(NUM_CLASSES) for p in family_prompts("select", c)]
    prompts += [p for c in range(NUM_CLASSES) for p in near_miss_prompts(c, "select")]
    prompts += generic_prompts("select", n_generic, seed=seed)
    return list(dict.fromkeys(prompts))


def text_source(pipe=None, hook: str = HOOK):
    """A TextEncoderSource on the zoo pipeline's MiniLM at ``hook`` (tokenised as the pipeline)."""
    from ..sources.text import TextEncoderSource
    from .t2i import load_minilm_text_encoder, load_minilm_tokenizer

    if pipe is not None:
        return TextEncoderSource(pipe.text_encoder, pipe.tokenizer, hook)
    return TextEncoderSource(load_minilm_text_encoder(), load_minilm_tokenizer(), hook)


def build_concepts(sae, src, max_fpr: float = MAX_FPR, l1: float = L1, progress: bool = True, hardening=None):
    """The ten class concepts: fitted on ``select`` (with ``hardening``, a
    :mod:`visionsae.zoo.harden` file, its attack-style select-family prompts the stock pipeline
    draws as each class too), calibrated on ``calibrate``."""
    from .harden import positives
    from ..concepts.build import build_linear_concept_set
    from .captions import CLASS_NAMES, NUM_CLASSES
    from .prompt_families import generic_prompts, near_miss_prompts

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
    from ..sae import SAEConfig
    from ..train import TrainConfig, original_defaults, train_sae

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="output folder (default: assets/zoo/fashion-text-sae)")
    parser.add_argument("--hook", default=HOOK, help=f"MiniLM module to hook (default: {HOOK})")
    parser.add_argument("--n-latents", type=int, default=2048)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--samples", type=int, default=400_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concepts-only", action="store_true", help="keep the SAE in --out, rebuild its concept set")
    parser.add_argument("--hardening", default=None,
                        help="a `python -m visionsae.zoo.harden` file whose positives join the fit (default: --out's "
                             "hardening.json when it exists; 'none': without)")
    args = parser.parse_args(argv)

    from ..sae import SparseAutoencoder
    from . import zoo_dir

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
    (out / "training.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
