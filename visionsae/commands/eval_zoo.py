"""``visionsae eval zoo``: the zoo's models against their quality bars (see :mod:`visionsae.eval.zoo`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from ..errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="judge,t2i,vqa", help="comma-separated subset of judge,t2i,vqa")
    parser.add_argument("--out", default=None, help="write the JSON report here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the zoo was trained and measured on 1)")
    parser.add_argument("--t2i-per-class", type=int, default=50, help="images generated per class")
    parser.add_argument("--t2i-batch", type=int, default=50, help="prompts per pipeline call (also the speed batch)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="default: the pipeline's zoo.json")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps; default: the pipeline's zoo.json (20)")
    parser.add_argument("--vqa-images", type=int, default=1000, help="first N test images for the VQA")
    parser.add_argument("--judge-images", type=int, default=10000, help="first N test images for the judge")


def run(args: argparse.Namespace) -> int:
    from ..sae.io import atomic_write_bytes
    from ..eval.zoo import BARS, evaluate_judge, evaluate_t2i, evaluate_vqa

    import torch

    from visionsae.zoo import load_fashion_judge, load_fashion_pipeline, load_fashion_vqa
    from visionsae.zoo.data import load_fashion_mnist

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(models) - {"judge", "t2i", "vqa"}
    if unknown:
        raise UsageError(f"--models takes a comma-separated subset of judge,t2i,vqa; got {sorted(unknown)}")
    torch.set_num_threads(args.threads)
    images, labels = load_fashion_mnist("test")
    report: dict = {"command": "visionsae eval zoo " + " ".join(sys.argv[3:]) if sys.argv[1:3] == ["eval", "zoo"] else None,
                    "threads": args.threads, "bars": BARS}
    passed: dict[str, bool] = {}
    judge = load_fashion_judge() if {"judge", "t2i"} & set(models) else None
    if "judge" in models:
        report["judge"] = evaluate_judge(judge, images[: args.judge_images], labels[: args.judge_images])
        passed["judge_test_accuracy"] = report["judge"]["test_accuracy"] >= BARS["judge_test_accuracy"]
    if "t2i" in models:
        pipe = load_fashion_pipeline()
        t2i = evaluate_t2i(pipe, judge, args.t2i_per_class, args.t2i_batch, args.seed, args.guidance_scale, args.steps)
        report["t2i"] = t2i
        passed["t2i_heldout_agreement_mean"] = t2i["heldout_agreement_mean"] >= BARS["t2i_heldout_agreement_mean"]
        passed["t2i_heldout_agreement_min_class"] = t2i["heldout_agreement_min_class"] >= BARS["t2i_heldout_agreement_min_class"]
        passed["t2i_images_per_second"] = t2i["images_per_second"] >= BARS["t2i_images_per_second"]
        passed["t2i_same_seed_same_image"] = t2i["same_seed_same_image"]
    if "vqa" in models:
        vqa = load_fashion_vqa()
        report["vqa"] = evaluate_vqa(vqa, images[: args.vqa_images], labels[: args.vqa_images])
        passed["vqa_category_accuracy_heldout"] = report["vqa"]["category_accuracy_heldout"] >= BARS["vqa_category_accuracy_heldout"]
        passed["vqa_footwear_accuracy"] = report["vqa"]["footwear_accuracy"] >= BARS["vqa_footwear_accuracy"]
    report["passed"] = passed
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out, (text + "\n").encode())
    return 0 if all(passed.values()) else 1
