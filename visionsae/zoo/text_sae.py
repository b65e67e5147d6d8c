"""The zoo's text SAE and its class concepts: the ground of ItD erasure on the zoo.

A TopK SAE on the fashion pipeline's MiniLM text encoder (``encoder.layer.3``, two thirds
deep, as ItD hooks CLIP layer 8 of 12), trained on the tokens of a broad prompt corpus (the
zoo's training captions of all ten classes plus ImageNet-class prompts), and a concept set
with one concept per Fashion-MNIST class: features selected from the class's training
captions against the other classes' and the ImageNet prompts, thresholds calibrated on
held-out captions (templates and descriptions no model has seen).

    python -m visionsae.zoo.text_sae --out assets/zoo/fashion-text-sae
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HOOK = "encoder.layer.3"
SAE_DIR = "fashion-text-sae"
# How ItD deactivates a flagged class on the zoo: scale its features by -2. Zeroing them
# leaves 67% of flagged held-out sneaker prompts drawn as sneakers (MiniLM's two later layers
# rebuild the class from the other tokens); a factor of -1, -2 or -4 leaves none of 48
# (`visionsae eval erasure --value ...`).
ERASE_MODE = "scale"
ERASE_VALUE = -2.0


def add_erase_arguments(parser: argparse.ArgumentParser) -> None:
    """--mode / --value of an ItD edit on the zoo, with the zoo's measured defaults."""
    parser.add_argument("--mode", choices=["zero", "scale"], default=ERASE_MODE,
                        help=f"deactivate by zeroing the features or scaling them by --value (default: {ERASE_MODE})")
    parser.add_argument("--value", type=float, default=ERASE_VALUE,
                        help=f"factor of --mode scale (default: {ERASE_VALUE:g}; on the zoo, zeroing alone leaves most "
                             "sneakers drawn)")


def corpus(seed: int = 0, n_imagenet: int = 3000) -> tuple[list[str], list[str]]:
    """(zoo training captions of all classes, ImageNet-class prompts)."""
    from ..sources.corpus import sample_prompts
    from .captions import NUM_CLASSES, class_prompts

    zoo = [p for c in range(NUM_CLASSES) for p in class_prompts(c, "train")]
    imagenet = [p.text for p in sample_prompts(n_imagenet, seed=seed)]
    return zoo, imagenet


def text_source(pipe=None):
    """A TextEncoderSource on the zoo pipeline's MiniLM at :data:`HOOK` (tokenised as the pipeline)."""
    from ..sources.text import TextEncoderSource
    from .t2i import load_minilm_text_encoder, load_minilm_tokenizer

    if pipe is not None:
        return TextEncoderSource(pipe.text_encoder, pipe.tokenizer, HOOK)
    return TextEncoderSource(load_minilm_text_encoder(), load_minilm_tokenizer(), HOOK)


def class_concept_prompts():
    """(selection prompts per class, keep prompts, held-out prompts per class, held-out keep prompts)."""
    from .captions import CLASS_NAMES, NUM_CLASSES, class_prompts

    train = {CLASS_NAMES[c]: class_prompts(c, "train") for c in range(NUM_CLASSES)}
    heldout = {CLASS_NAMES[c]: class_prompts(c, "heldout") for c in range(NUM_CLASSES)}
    _, imagenet = corpus()
    keep = imagenet[:1500]
    keep_heldout = imagenet[1500:2500]
    return train, keep, heldout, keep_heldout


def build_concepts(sae, src, out: Path) -> dict:
    """Build, save (out/concepts.json) and summarise the ten class concepts."""
    from ..concepts.build import build_concept_set

    train, keep, heldout, keep_heldout = class_concept_prompts()
    # The classifier's features are specific to the class (chosen against the other classes'
    # captions too); an erasure also deactivates the features chosen against the generic keep
    # prompts alone, as ItD selects them: a sneaker's "footwear" features carry it too. Without
    # them, 14% of held-out sneaker prompts were still drawn as sneakers (the nearest shoe).
    cs = build_concept_set(sae, src, train, keep, heldout, keep_heldout, target_recall=0.95, broad_edit=True)
    cs.save(out / "concepts.json")
    keys = ("recall", "fpr", "fpr_keep", "fpr_other_concepts", "auroc")
    return {n: {k: c.calibration[k] for k in keys} | {"features": len(c.features)} for n, c in cs.concepts.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="output folder (default: assets/zoo/fashion-text-sae)")
    parser.add_argument("--n-latents", type=int, default=2048)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--samples", type=int, default=400_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concepts-only", action="store_true", help="keep the SAE in --out, rebuild its concept set")
    args = parser.parse_args(argv)

    from ..sae import SAEConfig, SparseAutoencoder
    from ..train import TrainConfig, original_defaults, train_sae
    from . import zoo_dir

    out = Path(args.out) if args.out else zoo_dir() / SAE_DIR
    torch.manual_seed(args.seed)
    src = text_source()
    if args.concepts_only:
        sae = SparseAutoencoder.from_pretrained(out)
        summary = json.loads((out / "training.json").read_text())
        summary["concepts"] = build_concepts(sae, src, out)
        (out / "training.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary, indent=2))
        return 0
    zoo, imagenet = corpus(args.seed)
    prompts = zoo + imagenet
    start = time.perf_counter()
    rows = src.rows(prompts, batch_size=128, seed=args.seed, shuffle=False)
    acts = torch.cat(list(rows))  # every token of every prompt (padding included: the UNet sees it)
    print(f"{len(prompts)} prompts -> {acts.shape[0]} token rows in {time.perf_counter() - start:.0f}s", flush=True)

    def batches():
        g = torch.Generator().manual_seed(args.seed)
        while True:
            for idx in torch.randperm(acts.shape[0], generator=g).split(1024):
                if idx.numel() == 1024:
                    yield acts[idx]

    cfg = SAEConfig(d_in=acts.shape[1], n_latents=args.n_latents, k=args.k, hook=HOOK, model="all-MiniLM-L6-v2 (zoo fashion-t2i)",
                    extra={"corpus": f"{len(zoo)} zoo training captions + {len(imagenet)} ImageNet-class prompts"})
    run_dir = Path("runs/zoo-text-sae")
    # the settings the shipped SAE was trained with, so this command reproduces it
    pinned = original_defaults(args.n_latents, args.samples)
    sae = train_sae(cfg, TrainConfig(out_dir=str(run_dir), total_samples=args.samples, seed=args.seed, overwrite=True, **pinned),
                    batches())  # run_dir is this script's scratch folder: a rerun replaces it
    sae.save_pretrained(out)
    sae = SparseAutoencoder.from_pretrained(out)
    metrics = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = {"final_train_fvu": metrics[-1]["fvu"], "concepts": build_concepts(sae, src, out)}
    (out / "training.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
