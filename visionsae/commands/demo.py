"""``make demo`` / ``visionsae demo``: the main job, offline.

Erases a concept (default: sneaker) from the embedded zoo text-to-image model with ItD:
the zoo's text SAE flags each prompt per concept, and only flagged prompts have the
concept's features deactivated. For every prompt it generates the stock and the erased
image at the same seed, asks the zoo's judge what each shows, and writes a before/after
grid (demo.png) and the classifier's decisions (decisions.json).

``--planted`` runs the SAE-training self-test instead: a TopK SAE on planted-feature
activations (data whose true features are known), and how many planted directions it found.
"""

from __future__ import annotations

import argparse
import json
from ..errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..zoo.settings import DEMO_ERASE

    erase = ",".join(DEMO_ERASE)
    parser.add_argument("--erase", default=erase, help=f"comma-separated zoo classes to erase (default: {erase})")
    parser.add_argument("--prompt", action="append", default=None, help="a prompt (repeat; default: ten prompts across classes)")
    parser.add_argument("--out-dir", default="runs/demo", help="where demo.png and decisions.json go (default: runs/demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image; prompt i uses seed + i")
    from ._args import add_erase_arguments

    add_erase_arguments(parser)
    parser.add_argument("--planted", action="store_true", help="train an SAE on planted data and report what it recovered")


def run_planted(out_dir: str, seed: int = 0, samples: int = 300_000) -> int:
    """Train a TopK SAE on planted-feature data and print what it recovered."""
    from ..eval.planted import evaluate_rule
    from ..planted import PlantedConfig

    planted = PlantedConfig(seed=seed)
    print(f"Planted data: {planted.n_true} true directions in {planted.d_in} dimensions, ~{planted.mean_active:g} "
          f"active per sample. Training a TopK SAE (k=16, 2048 latents) on {samples:,} samples...", flush=True)
    res = evaluate_rule("topk", total_samples=samples, planted=planted, out_dir=out_dir, seed=seed, progress=True,
                        batch_size=256, k=16)
    print(f"Held-out reconstruction: FVU {res['fvu']:.3f}, L0 {res['l0']:.1f}, dead latents {res['dead_fraction']:.1%}")
    print(f"Recovered {res['recovered']:.1%} of the {planted.n_true} planted directions (best decoder cosine > 0.9); "
          f"mean best cosine {res['mean_best_cosine']:.3f}; {res['samples_per_s']:,.0f} samples/s")
    print(f"SAE saved to {out_dir}/sae (cfg.json + sae.safetensors)")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..errors import check_writable_dir

    check_writable_dir(args.out_dir, "--out-dir")  # before any model is loaded or trained
    if args.planted:
        return run_planted(args.out_dir, args.seed)
    from pathlib import Path

    import torch

    from visionsae.pipelines.itd import ItDStableDiffusionPipeline

    from ..eval.erasure import _grid, nchw
    from ..sae.io import atomic_write_bytes
    from ..zoo import CLASS_NAMES, load_fashion_judge, load_fashion_pipeline, zoo_dir
    from ..zoo.settings import DEMO_PROMPTS, TEXT_SAE_DIR as SAE_DIR

    names = [n.strip() for n in args.erase.split(",") if n.strip()]
    unknown = [n for n in names if n not in CLASS_NAMES]
    if unknown:
        raise UsageError(f"unknown classes {unknown}; the zoo's classes are {list(CLASS_NAMES)}")
    prompts = args.prompt or list(DEMO_PROMPTS)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    how = "zeroing" if args.mode == "zero" else f"scaling by {args.value:g}"
    print(f"Erasing {', '.join(names)} from the zoo's fashion text-to-image model (ItD: {how} the concept's "
          "SAE features in flagged prompts only; offline)...", flush=True)
    stock = load_fashion_pipeline()
    settings = dict(stock.zoo_settings)
    pipe = ItDStableDiffusionPipeline.wrap(stock, zoo_dir() / SAE_DIR, zoo_dir() / SAE_DIR / "concepts.json", names,
                                           mode=args.mode, value=args.value)
    judge = load_fashion_judge()
    gens = lambda: [torch.Generator().manual_seed(args.seed + i) for i in range(len(prompts))]  # noqa: E731
    pipe.itd_enabled = False
    before = pipe(prompts, generator=gens(), output_type="np", **settings).images
    pipe.itd_enabled = True
    result = pipe(prompts, generator=gens(), output_type="np", **settings)
    after, decisions = result.images, result.concept_decisions
    judged_before = [CLASS_NAMES[i] for i in judge.predict(nchw(before)).tolist()]
    judged_after = [CLASS_NAMES[i] for i in judge.predict(nchw(after)).tolist()]
    records = []
    print(f"\n{'prompt':42s} {'flagged':10s} {'judge: stock -> erased':28s} image")
    for i, p in enumerate(prompts):
        flagged = [n for n in names if decisions[i][n]["flagged"]]
        same = bool((before[i] == after[i]).all())
        records.append({"prompt": p, "flagged": flagged, "scores": decisions[i], "judge_stock": judged_before[i],
                        "judge_erased": judged_after[i], "pixel_identical": same})
        print(f"{p[:42]:42s} {','.join(flagged) or '-':10s} {judged_before[i] + ' -> ' + judged_after[i]:28s} "
              f"{'identical' if same else 'changed'}")
    _grid(list(zip(before, after)), out / "demo.png")
    atomic_write_bytes(out / "decisions.json", json.dumps(records, indent=2).encode())
    print(f"\nbefore | after grid: {out / 'demo.png'}\ndecisions: {out / 'decisions.json'}")
    return 0
