"""``visionsae concepts build`` and ``visionsae concepts calibrate``.

    visionsae concepts build --model zoo --sae assets/zoo/fashion-text-sae \
        --concept sneaker=sneaker.txt --keep keep.txt --out concepts.json
    visionsae concepts calibrate --model zoo --sae assets/zoo/fashion-text-sae \
        --concepts concepts.json --heldout sneaker=sneaker_heldout.txt --keep-heldout keep_heldout.txt

Prompt files hold one prompt per line. Without ``--heldout`` for a concept, ``build``
holds out a seeded 25% of its prompts (and of the keep prompts) for calibration. Both print
precision, recall, false-positive rate and AUROC on the held-out prompts.
"""

from __future__ import annotations

import argparse
import random


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="zoo", help="'zoo', or a diffusers pipeline folder / text encoder folder (default: zoo)")
    p.add_argument("--encoder", default="text_encoder", help="which text encoder of a pipeline: text_encoder (default), text_encoder_2, text_encoder_3")
    p.add_argument("--sae", required=True, help="the SAE folder (its cfg.json names the hook)")
    p.add_argument("--hook", default=None, help="hook point (default: the SAE's)")
    p.add_argument("--target-recall", type=float, default=0.95, help="recall the threshold is set to reach (default: 0.95)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split (default: 0)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="select each concept's features and calibrate its threshold")
    _source_args(b)
    b.add_argument("--concept", action="append", required=True, metavar="NAME=FILE", help="a concept and its prompt file (repeat)")
    b.add_argument("--keep", required=True, metavar="FILE", help="prompts whose features must not be erased")
    b.add_argument("--heldout", action="append", default=[], metavar="NAME=FILE", help="held-out prompts of a concept (repeat)")
    b.add_argument("--keep-heldout", default=None, metavar="FILE", help="held-out keep prompts")
    b.add_argument("--method", choices=["itd", "mean_diff"], default="itd", help="feature selection method (default: itd)")
    b.add_argument("--top-n", type=int, default=8, help="top latents per prompt (itd method, default: 8)")
    b.add_argument("--out", required=True, help="concept set JSON to write")
    c = sub.add_parser("calibrate", help="re-set the thresholds of a concept set on held-out prompts")
    _source_args(c)
    c.add_argument("--concepts", required=True, help="the concept set JSON (rewritten in place unless --out)")
    c.add_argument("--heldout", action="append", required=True, metavar="NAME=FILE", help="held-out prompts of a concept (repeat)")
    c.add_argument("--keep-heldout", required=True, metavar="FILE", help="held-out keep prompts")
    c.add_argument("--out", default=None, help="where to write the calibrated set (default: over --concepts)")


def read_prompts(path: str) -> list[str]:
    from pathlib import Path

    from ..errors import InputNotFoundError
    from ..sources.loading import read_text_lines

    p = Path(path)
    if not p.is_file():
        raise InputNotFoundError(f"prompt file {p} does not exist")
    prompts = [line.strip() for line in read_text_lines(p) if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {p} holds no prompts")
    return prompts


def _pairs(items: list[str], flag: str) -> dict[str, list[str]]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{flag} expects NAME=FILE, got {item!r}")
        out[name] = read_prompts(path)
    return out


def _split(prompts: list[str], seed: int, frac: float = 0.25) -> tuple[list[str], list[str]]:
    if len(prompts) < 4:
        raise ValueError(f"need at least 4 prompts to hold some out, got {len(prompts)}; pass --heldout")
    order = random.Random(seed).sample(prompts, len(prompts))
    n = max(1, int(len(order) * frac))
    return order[n:], order[:n]


def _source(args):
    from ..sae import SparseAutoencoder
    from ..sources.text import TextEncoderSource

    sae = SparseAutoencoder.from_pretrained(args.sae)
    hook = args.hook or sae.cfg.hook
    if not hook:
        raise ValueError(f"the SAE at {args.sae} records no hook; pass --hook")
    if args.model == "zoo":
        from ..zoo.t2i import load_minilm_text_encoder, load_minilm_tokenizer

        return sae, TextEncoderSource(load_minilm_text_encoder(), load_minilm_tokenizer(), hook)
    from ..sources.loading import load_model

    loaded = load_model(args.model, encoder=args.encoder)
    return sae, TextEncoderSource(loaded.model, loaded.tokenizer, hook, **loaded.text_defaults)  # a T5: the pipeline's length


def _print(cs) -> None:
    print(f"{'concept':24s} {'features':>8s} {'threshold':>9s} {'recall':>7s} {'precision':>9s} {'fpr':>6s} {'auroc':>6s}")
    for name, c in cs.concepts.items():
        k = c.calibration
        print(f"{name:24s} {len(c.features):8d} {c.threshold:9.4f} {k['recall']:7.3f} {k['precision']:9.3f} {k['fpr']:6.3f} {k['auroc']:6.3f}")


def run(args: argparse.Namespace) -> int:
    from ..errors import check_writable_file
    from .build import build_concept_set, score_prompts
    from .classifier import calibrate
    from .conceptset import ConceptSet

    check_writable_file(args.out or args.concepts, "--out")  # before the prompts are encoded
    sae, src = _source(args)
    if args.action == "build":
        concepts = _pairs(args.concept, "--concept")
        heldout = _pairs(args.heldout, "--heldout")
        keep = read_prompts(args.keep)
        keep_heldout = read_prompts(args.keep_heldout) if args.keep_heldout else None
        if keep_heldout is None:
            keep, keep_heldout = _split(keep, args.seed)
        for name in list(concepts):
            if name not in heldout:
                concepts[name], heldout[name] = _split(concepts[name], args.seed)
        cs = build_concept_set(sae, src, concepts, keep, heldout, keep_heldout, args.target_recall,
                               method=args.method, top_n=args.top_n)
        cs.save(args.out)
    else:
        import torch

        cs = ConceptSet.load(args.concepts)
        cs.check_sae(sae)
        heldout = _pairs(args.heldout, "--heldout")
        unknown = sorted(set(heldout) - set(cs.concepts))
        if unknown:
            raise KeyError(f"concepts {unknown} are not in {args.concepts}; it has {sorted(cs.concepts)}")
        keep_heldout = read_prompts(args.keep_heldout)
        for name, prompts in heldout.items():
            group = [torch.tensor(cs[name].features)]
            pos = score_prompts(sae, src, prompts, group, cs.score)[:, 0]
            neg = score_prompts(sae, src, keep_heldout, group, cs.score)[:, 0]
            cal = calibrate(pos, neg, args.target_recall)
            cs[name].threshold = cal["threshold"]
            cs[name].calibration = {**cal, "heldout_prompts": len(prompts)}
        cs.save(args.out or args.concepts)
    _print(cs)
    print(f"wrote {args.out or args.concepts}")
    return 0
