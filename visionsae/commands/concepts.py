"""``visionsae concepts build`` and ``visionsae concepts calibrate``.

    visionsae concepts build --model zoo --sae assets/zoo/fashion-text-sae \
        --concept sneaker=sneaker.txt --keep keep.txt --out concepts.json
    visionsae concepts calibrate --model zoo --sae assets/zoo/fashion-text-sae \
        --concepts concepts.json --heldout sneaker=sneaker_heldout.txt --keep-heldout keep_heldout.txt

Prompt files hold one prompt per line. ``build`` splits every prompt file *by template*
(prompts that share a file's frame words stay together, :mod:`visionsae.concepts.split`): 60%
fits the features, 20% calibrates the threshold and 20% is a test split that chose nothing,
on which it reports recall and false-positive rates, as the eraser decides them (both gates).
With ``--heldout`` for a concept (``--keep-heldout`` for the keep prompts), the given file
fits and the held-out file is split in calibration and test halves. ``calibrate`` re-sets the
thresholds of a set (``itd`` / ``mean_diff`` scores) on held-out files.
"""

from __future__ import annotations

import argparse


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="zoo", help="'zoo', or a diffusers pipeline folder / text encoder folder (default: zoo)")
    p.add_argument("--encoder", default="text_encoder", help="which text encoder of a pipeline: text_encoder (default), text_encoder_2, text_encoder_3")
    p.add_argument("--sae", required=True, help="the SAE folder (its cfg.json names the hook)")
    p.add_argument("--hook", default=None, help="hook point (default: the SAE's)")
    p.add_argument("--target-recall", type=float, default=0.95,
                   help="recall the threshold is set to reach (itd / mean_diff methods and calibrate; default: 0.95)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split (default: 0)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="select each concept's features and calibrate its threshold")
    _source_args(b)
    b.add_argument("--concept", action="append", required=True, metavar="NAME=FILE", help="a concept and its prompt file (repeat)")
    b.add_argument("--keep", required=True, metavar="FILE", help="prompts whose features must not be erased")
    b.add_argument("--heldout", action="append", default=[], metavar="NAME=FILE", help="held-out prompts of a concept (repeat)")
    b.add_argument("--keep-heldout", default=None, metavar="FILE", help="held-out keep prompts")
    b.add_argument("--near-miss", action="append", default=[], metavar="NAME=FILE",
                   help="prompts of things like a concept but not of it (linear method; repeat); split as the others")
    b.add_argument("--method", choices=["linear", "itd", "mean_diff"], default="linear",
                   help="linear (default): a sparse logistic read-out of pooled SAE codes, its threshold set so that each "
                        "negative group flags at most --max-fpr (the eraser adds its normal-form and name "
                        "gates); itd / mean_diff: "
                        "feature selection and a score threshold at --target-recall")
    b.add_argument("--max-fpr", type=float, default=0.01, help="linear method: false-positive cap per group (default: 0.01)")
    b.add_argument("--top-n", type=int, default=8, help="top latents per prompt (itd method, default: 8)")
    b.add_argument("--out", required=True, help="concept set JSON to write")
    c = sub.add_parser("calibrate", help="re-set the thresholds of a concept set on held-out prompts")
    _source_args(c)
    c.add_argument("--concepts", required=True, help="the concept set JSON (rewritten in place unless --out)")
    c.add_argument("--heldout", action="append", required=True, metavar="NAME=FILE", help="held-out prompts of a concept (repeat)")
    c.add_argument("--keep-heldout", required=True, metavar="FILE", help="held-out keep prompts")
    c.add_argument("--out", default=None, help="where to write the calibrated set (default: over --concepts)")


def _pairs(items: list[str], flag: str) -> dict[str, list[str]]:
    from ..errors import UsageError
    from ..sources.loading import read_prompts

    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"{flag} expects NAME=FILE, got {item!r}")
        out[name] = read_prompts(path)
    return out


def _split(prompts: list[str], fractions, seed: int, name: str, others) -> tuple[list[list[str]], str]:
    """``prompts`` split by template; the template words are those the ``others`` files share."""
    from ..errors import UsageError
    from ..concepts.split import split_by_skeleton, words_of

    try:
        return split_by_skeleton(prompts, fractions, seed, name, frame=words_of([p for ps in others for p in ps]))
    except ValueError as e:  # too few prompts for a fit / calibration / test split
        raise UsageError(f"{e}; give more prompts or a --heldout file") from None


def _source(args):
    from ..errors import UsageError
    from ..sae import SparseAutoencoder
    from ..sources.text import TextEncoderSource

    sae = SparseAutoencoder.from_pretrained(args.sae)
    hook = args.hook or sae.cfg.hook
    if not hook:
        raise UsageError(f"the SAE at {args.sae} records no hook; pass --hook")
    if args.model == "zoo":
        from ..zoo.t2i import load_minilm_text_encoder, load_minilm_tokenizer

        return sae, TextEncoderSource(load_minilm_text_encoder(), load_minilm_tokenizer(), hook)
    from ..sources.loading import load_model

    loaded = load_model(args.model, encoder=args.encoder)
    return sae, TextEncoderSource(loaded.model, loaded.tokenizer, hook, **loaded.text_defaults)  # a T5: the pipeline's length


def _print(cs) -> None:
    print(f"{'concept':24s} {'features':>8s} {'threshold':>9s} {'cal recall':>10s} {'cal fpr':>7s} "
          f"{'test recall':>11s} {'test fpr':>8s}")
    for name, c in cs.concepts.items():
        k, t = c.calibration, c.calibration.get("test", {})
        fpr = max((v for key, v in k.items() if key.startswith("fpr") and isinstance(v, float)), default=float("nan"))
        test_fpr = max((v for key, v in t.items() if key.startswith("fpr") and isinstance(v, float)), default=float("nan"))
        print(f"{name:24s} {len(c.features):8d} {c.threshold:9.4f} {k['recall']:10.3f} {fpr:7.3f} "
              f"{t.get('recall', float('nan')):11.3f} {test_fpr:8.3f}")
    hows = sorted({c.calibration.get("test", {}).get("split", "") for c in cs.concepts.values()} - {""})
    if hows:
        print("test split: " + "; ".join(hows) + " (fpr: the highest of the groups' false-positive rates)")


def test_report(sae, src, cs, test: dict[str, list[str]], keep_test: list[str], near_test: dict[str, list[str]],
                how: dict[str, str]) -> None:
    """Decide the test prompts as the eraser does and record, per concept, ``calibration["test"]``:
    recall on its own test prompts, false-positive rates on the keep, near-miss and other
    concepts' test prompts."""
    from ..control.itd import ItDEraser

    eraser = ItDEraser(src.model, sae, cs, tokenizer=src.tokenizer)
    decided = {n: eraser.flag(ps) for n, ps in test.items()}
    keep = eraser.flag(keep_test)
    for name in cs.concepts:
        def rate(decisions):
            return float(sum(d[name]["flagged"] for d in decisions) / len(decisions)) if decisions else None

        others = [d for o, ds in decided.items() if o != name for d in ds]
        cs[name].calibration["test"] = {
            "split": how[name], "keep_split": how["--keep"], "recall": rate(decided[name]), "n_positive": len(test[name]),
            "fpr_keep": rate(keep), "n_keep": len(keep_test),
            "fpr_other_concepts": rate(others), "n_other_concepts": len(others),
            "fpr_near_misses": rate(eraser.flag(near_test[name])) if near_test.get(name) else None,
        }


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError, check_writable_file
    from ..sources.loading import read_prompts
    from ..concepts.build import build_concept_set, build_linear_concept_set, score_prompts
    from ..concepts.classifier import calibrate
    from ..concepts.conceptset import ConceptSet

    check_writable_file(args.out or args.concepts, "--out")  # before the prompts are encoded
    sae, src = _source(args)
    if args.action == "build":
        concepts = _pairs(args.concept, "--concept")
        heldout = _pairs(args.heldout, "--heldout")
        near = _pairs(args.near_miss, "--near-miss")
        unknown = sorted((set(heldout) | set(near)) - set(concepts))
        if unknown:
            raise UsageError(f"--heldout / --near-miss name concepts {unknown} that no --concept gives")
        if not 0 <= args.max_fpr < 1:
            raise UsageError(f"--max-fpr must be in [0, 1), got {args.max_fpr}")
        keep = read_prompts(args.keep)
        keep_heldout = read_prompts(args.keep_heldout) if args.keep_heldout else None

        def others(*skip):  # the other files, whose words are the template words of this one
            files = {**{("c", n): ps for n, ps in concepts.items()}, **{("n", n): ps for n, ps in near.items()},
                     ("keep",): keep}
            return [ps for k, ps in files.items() if k not in skip]

        fit, cal, test, how = {}, {}, {}, {}
        for name in concepts:
            if name in heldout:
                fit[name] = concepts[name]
                (cal[name], test[name]), how[name] = _split(heldout[name], (1, 1), args.seed, f"--heldout {name}",
                                                            others(("c", name)))
            else:
                (fit[name], cal[name], test[name]), how[name] = _split(concepts[name], (3, 1, 1), args.seed, name,
                                                                       others(("c", name)))
        if keep_heldout is not None:
            (keep_cal, keep_test), how["--keep"] = _split(keep_heldout, (1, 1), args.seed, "--keep-heldout", others(("keep",)))
        else:
            (keep, keep_cal, keep_test), how["--keep"] = _split(keep, (3, 1, 1), args.seed, "--keep", others(("keep",)))
        near_fit, near_cal, near_test = {}, {}, {}
        for name, prompts in near.items():
            (near_fit[name], near_cal[name], near_test[name]), _ = _split(prompts, (3, 1, 1), args.seed,
                                                                          f"--near-miss {name}", others(("n", name)))
        if args.method == "linear":
            cs = build_linear_concept_set(sae, src, fit, keep, cal, keep_cal, near_misses=near_fit,
                                          near_misses_heldout=near_cal, max_fpr=args.max_fpr)
        else:
            cs = build_concept_set(sae, src, fit, keep, cal, keep_cal, args.target_recall,
                                   method=args.method, top_n=args.top_n)
        test_report(sae, src, cs, test, keep_test, near_test, how)
        cs.save(args.out)
    else:
        import torch

        cs = ConceptSet.load(args.concepts)
        cs.check_sae(sae)
        if cs.score == "linear":
            raise UsageError(f"{args.concepts} is a linear concept set, calibrated when it was built (--max-fpr); "
                             "rebuild it with `visionsae concepts build` and --heldout files instead")
        heldout = _pairs(args.heldout, "--heldout")
        unknown = sorted(set(heldout) - set(cs.concepts))
        if unknown:
            raise UsageError(f"--heldout: concepts {unknown} are not in {args.concepts}; it has {sorted(cs.concepts)}")
        keep_heldout = read_prompts(args.keep_heldout)
        for name, prompts in heldout.items():
            group = [torch.tensor(cs[name].features)]
            pos = score_prompts(sae, src, prompts, group, cs.score, skip_first=cs.skip_first)[:, 0]
            neg = score_prompts(sae, src, keep_heldout, group, cs.score, skip_first=cs.skip_first)[:, 0]
            cal = calibrate(pos, neg, args.target_recall)
            cs[name].threshold = cal["threshold"]
            cs[name].calibration = {**cal, "heldout_prompts": len(prompts)}
        cs.save(args.out or args.concepts)
    _print(cs)
    print(f"wrote {args.out or args.concepts}")
    return 0
