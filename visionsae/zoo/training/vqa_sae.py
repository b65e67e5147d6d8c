"""The zoo VQA's language-model SAE and its class concepts: the ground of SAUCE on the zoo.

A TopK SAE on the residual stream of the fashion VQA's Llama layer :data:`LAYER` (the middle
of four, as SAUCE hooks a middle layer of LLaVA-1.5's language model), trained on the
activations of image + question conversations exactly as the model sees them (the chat
template, 16 image tokens, the question, the generation prompt), and a concept set with one
concept per Fashion-MNIST class, selected from images of the class against the other
classes' images asked the same questions (:func:`visionsae.control.sauce.select_concepts`).

Two ways to feed the trainer, both from one activation store of the training conversations
(every token: the image tokens, the text, the [CLS] and the closing [SEP]), compared on
held-out conversations (test images, held-out phrasings) overall and per kind of token:

* ``fast`` (FAST, "Finetuning-aligned Sequential Training"): the store's reader in
  sequential mode (``ActivationStore.batches(sequential=True)``, ``visionsae train
  --sequential``): whole conversations in their order;
* ``shuffled``: the same rows, shuffled by the store's usual reader.

On equal terms the two do about as well (the shuffled one slightly better on every kind of
token in one seed; README). The zoo ships the FAST-trained SAE, on which its concepts and
unlearning figures were calibrated and measured; ``--ship best`` picks by held-out FVU.

    visionsae zoo vqa-sae --out assets/zoo/fashion-vqa-sae      # both, ships the FAST one
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..settings import UNLEARN_TOKENS, VQA_LAYER as LAYER, VQA_SAE_DIR as SAE_DIR
from ...errors import UsageError
from ...sae.io import atomic_write_bytes

SELECT_TOKENS = "image"
"""Concept features are selected on the image tokens (what the image shows): text-token
features selected the same way also carry answers to other questions (suppressing the
sneaker's flips "does this go on your feet?" from yes to no on sandals and boots)."""
FEATURE_COUNTS = (4, 8, 12, 16, 24)
"""Feature counts the calibration tries (each class's best features first)."""
VALUES = (-0.5, -1.0, -2.0)
"""Negative scales the calibration tries."""
VARIANTS = ("fast", "shuffled")


@dataclass
class SequenceRows:
    """Activation rows of whole conversations, in order."""

    acts: torch.Tensor  # [N, d] float32, one row per real (unpadded) token
    seq: torch.Tensor  # [N] int64: which conversation
    kind: torch.Tensor  # [N] uint8 TokenKind; the closing token of each prompt is END
    labels: torch.Tensor  # [S] class of each conversation's image

    @property
    def special(self) -> torch.Tensor:
        from ...store import TokenKind

        return (self.kind == TokenKind.START) | (self.kind == TokenKind.END)


def conversations(split: str, n: int, seed: int = 0) -> tuple[list[dict], torch.Tensor]:
    """``n`` records ``{"image": PIL, "question": str}`` on Fashion-MNIST ``split`` images (in a
    seeded random order), with the training phrasings (``train``) or the held-out ones
    (``test``) of every kind of question the model answers; and the images' labels ``[n]``."""
    from .. import captions
    from ..data import load_fashion_mnist
    from .train_vqa import QUESTION_MIX, training_questions
    from ..vqa import fashion_images_to_pil

    images, labels = load_fashion_mnist(split)
    if n > len(images):
        raise UsageError(f"asked for {n} conversations but the {split} split has {len(images)} images")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(images), generator=g)[:n]
    if split == "train":
        bank = {kind: [q for q, _ in qs] for kind, qs in training_questions().items()}
    else:
        bank = {"category": list(captions.HELDOUT_CATEGORY_QUESTIONS),
                "is_class": [t.format(c) for t in captions.HELDOUT_IS_CLASS_QUESTIONS for c in captions.CLASS_NAMES]}
        bank |= {kind: list(held) for kind, (_, _, held) in captions.YES_NO_ATTRIBUTES.items()}
    rng = random.Random(seed)
    kinds = rng.choices(list(QUESTION_MIX), weights=list(QUESTION_MIX.values()), k=n)
    pil = fashion_images_to_pil(images[idx])
    records = [{"image": im, "question": rng.choice(bank[k])} for im, k in zip(pil, kinds)]
    return records, labels[idx].long()


def extract_store(model, processor, records: Sequence[dict], out: str | Path, layer: int = LAYER,
                  batch_size: int = 128, progress: bool = True):
    """The residual-stream rows of ``records`` at ``layer`` (every real token, padding dropped)
    written to an activation store at ``out`` (replacing what is there) through
    :class:`VLMSource` and :func:`visionsae.sources.extract`; returns the opened store."""
    from ...sources import VLMSource, extract
    from ...store import ActivationStore

    src = VLMSource(model, processor, layer=layer, keep_kinds=["start", "text", "image"])
    extract(src, list(records), out, batch_size=batch_size, overwrite=True, progress=progress)
    return ActivationStore.open(out)


def sequence_rows(store, labels: torch.Tensor) -> SequenceRows:
    """All rows of a store of conversations, in store order, with the closing token of each
    conversation marked END (the source marks it TEXT)."""
    from ...store import TokenKind

    shards = [store.read_shard(i) for i in range(store.num_shards)]
    rows = SequenceRows(torch.cat([b.acts.float() for b in shards]), torch.cat([b.input_id for b in shards]),
                        torch.cat([b.kind for b in shards]).clone(), labels)
    last = torch.ones_like(rows.seq, dtype=torch.bool)
    last[:-1] = rows.seq[1:] != rows.seq[:-1]
    rows.kind[last] = int(TokenKind.END)  # the prompt's closing [SEP]
    return rows


def collect(model, processor, records: Sequence[dict], labels: torch.Tensor, layer: int = LAYER, batch_size: int = 128,
            progress: bool = True) -> SequenceRows:
    """:func:`sequence_rows` of ``records`` extracted into a temporary store."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return sequence_rows(extract_store(model, processor, records, Path(tmp) / "store", layer, batch_size, progress), labels)


def fvu_by_kind(sae, rows: SequenceRows) -> dict[str, float]:
    """Held-out FVU over all rows and per kind of token (image, text, special)."""
    from ...eval.sae import reconstruction_metrics
    from ...store import TokenKind

    groups = {"all": torch.ones_like(rows.special), "image": rows.kind == TokenKind.IMAGE,
              "text": rows.kind == TokenKind.TEXT, "special": rows.special}
    with torch.no_grad():
        return {name: reconstruction_metrics(sae, rows.acts[m].split(4096))["fvu"] for name, m in groups.items()}


def variant_batches(variant: str, store, seed: int, batch_rows: int = 1024) -> Iterator[torch.Tensor]:
    """The training batches of a variant, both from the store's own reader over every row:
    ``fast`` in sequence order (sequential mode), ``shuffled`` shuffled."""
    if variant not in VARIANTS:
        raise UsageError(f"unknown training variant {variant!r}; expected one of {VARIANTS}")
    if variant == "fast":
        return store.batches(batch_rows, sequential=True, loop=True)
    return store.batches(batch_rows, seed=seed, shuffle=True, loop=True)


def train_variant(variant: str, store, hook: str, n_latents: int, k: int, samples: int, seed: int,
                  run_dir: Path, model_name: str, conversations: int):
    from ...sae import SAEConfig
    from ...train import TrainConfig, original_defaults, train_sae

    batches = variant_batches(variant, store, seed)
    tokens = "every token, special ones included, whole sequences in order" if variant == "fast" else \
        "every token, special ones included, shuffled"
    cfg = SAEConfig(d_in=store.d_in, n_latents=n_latents, k=k, hook=hook, model=model_name,
                    extra={"training": variant, "tokens": tokens,
                           "conversations": f"{conversations} Fashion-MNIST train images with training phrasings"})
    torch.manual_seed(seed)
    pinned = original_defaults(cfg.n_latents, samples)  # the settings the shipped SAE was trained with
    return train_sae(cfg, TrainConfig(out_dir=str(run_dir / variant), total_samples=samples, seed=seed, checkpoint_every=0,
                                      overwrite=True, **pinned), batches)  # run_dir: this script's scratch folder


def build_concepts(sae, vqa, out: Path | None = None, per_class: int = 200, calibration_per_class: int = 40,
                   seed: int = 0, progress: bool = True):
    """The ten class concepts: each class's training images against the other classes'
    images, all asked the same training category questions; then each class's unlearning
    setting calibrated on other training images (category questions on the class's images;
    category and footwear questions on the other classes')."""
    from ...control.sauce import calibrate_unlearning, select_concepts
    from .. import captions
    from ..data import load_fashion_mnist
    from ..vqa import fashion_images_to_pil

    images, labels = load_fashion_mnist("train")
    g = torch.Generator().manual_seed(seed + 1)
    order = torch.randperm(len(images), generator=g)
    examples, held = {}, {}
    for c, name in enumerate(captions.CLASS_NAMES):
        idx = order[labels[order] == c]
        examples[name] = fashion_images_to_pil(images[idx[:per_class]])
        held[name] = fashion_images_to_pil(images[idx[per_class : per_class + calibration_per_class]])
    cat_q = list(captions.TRAIN_CATEGORY_QUESTIONS)
    cs = select_concepts(vqa.model, vqa.processor, sae, examples, cat_q, top_n=max(FEATURE_COUNTS), tokens=SELECT_TOKENS,
                         seed=seed, progress=progress)
    foot_q = captions.YES_NO_ATTRIBUTES["footwear"][1][0]
    n_other = max(1, calibration_per_class // 4)
    for name in captions.CLASS_NAMES:
        mine = held[name]
        others = [im for other in captions.CLASS_NAMES if other != name for im in held[other][:n_other]]
        other_q = [cat_q[i % len(cat_q)] for i in range(len(others))] + [foot_q] * len(others)
        calibrate_unlearning(vqa.model, sae, cs, name, vqa.ask, mine, [cat_q[i % len(cat_q)] for i in range(len(mine))],
                             others + others, other_q, feature_counts=FEATURE_COUNTS, values=VALUES, tokens=UNLEARN_TOKENS,
                             progress=progress)
    if out is not None:
        cs.save(out / "concepts.json")
    return cs


def build(args) -> int:
    """The run ``visionsae zoo vqa-sae`` starts, from its parsed flags."""
    torch.set_num_threads(1)

    from ...sae import SparseAutoencoder
    from ...sources.vlm import decoder_layers_path
    from .. import VQA_DIR, load_fashion_vqa, zoo_dir

    out = Path(args.out) if args.out else zoo_dir() / SAE_DIR
    vqa = load_fashion_vqa()
    if args.concepts_only:
        sae = SparseAutoencoder.from_pretrained(out)
        cs = build_concepts(sae, vqa, out, seed=args.seed)
        print(json.dumps({n: {k: c.calibration[k] for k in ("features", "value", "met", "named", "others_changed")}
                          for n, c in cs.concepts.items()}))
        return 0
    variants = args.variants.split(",")
    hook = f"{decoder_layers_path(vqa.model)}.{args.layer}"
    start = time.perf_counter()
    run_dir = Path("runs/zoo-vqa-sae")
    train_records, _ = conversations("train", args.conversations, args.seed)
    train_store = extract_store(vqa.model, vqa.processor, train_records, run_dir / "train-store", layer=args.layer)
    held_records, held_labels = conversations("test", args.heldout, args.seed + 1)
    held_rows = sequence_rows(extract_store(vqa.model, vqa.processor, held_records, run_dir / "heldout-store",
                                            layer=args.layer), held_labels)
    print(f"{len(train_store)} training rows, {held_rows.acts.shape[0]} held-out rows "
          f"in {time.perf_counter() - start:.0f}s", flush=True)
    summary: dict = {"layer": args.layer, "hook": hook, "n_latents": args.n_latents, "k": args.k,
                     "train_conversations": args.conversations, "heldout_conversations": args.heldout,
                     "samples": args.samples, "heldout_fvu": {}}
    saes = {}
    for v in variants:
        saes[v] = train_variant(v, train_store, hook, args.n_latents, args.k, args.samples, args.seed, run_dir,
                                f"zoo {VQA_DIR}", args.conversations).eval()
        summary["heldout_fvu"][v] = fvu_by_kind(saes[v], held_rows)
        print(v, json.dumps(summary["heldout_fvu"][v]), flush=True)
    ship = min(saes, key=lambda v: summary["heldout_fvu"][v]["all"]) if args.ship == "best" else args.ship
    summary["shipped"] = ship
    saes[ship].save_pretrained(out)
    sae = SparseAutoencoder.from_pretrained(out)
    build_concepts(sae, vqa, out, seed=args.seed)
    atomic_write_bytes(out / "training.json", json.dumps(summary, indent=2).encode())
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":  # the same as `visionsae zoo vqa-sae`
    import sys

    from ...commands import main

    sys.exit(main(["zoo", "vqa-sae", *sys.argv[1:]]))
