"""``visionsae erase``: generate with concepts erased (ItD), next to the stock pipeline.

    visionsae erase --model zoo --prompt "a photo of a sneaker" --erase sneaker
    visionsae erase --model runwayml/stable-diffusion-v1-5 --sae SAE_DIR --concepts concepts.json --prompt "..."
    visionsae erase --model stabilityai/stable-diffusion-xl-base-1.0 --sae SAE1 --concepts C1 --sae-2 SAE2 --concepts-2 C2 --prompt "..."

Writes a before/after PNG per prompt and decisions.json (the classifier's verdict per
prompt and concept) into --out.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="zoo", help="'zoo' (the embedded fashion model), a diffusers folder or a Hugging Face id (default: zoo)")
    parser.add_argument("--sae", default=None, help="SAE folder for the (first) text encoder (default for the zoo: assets/zoo/fashion-text-sae)")
    parser.add_argument("--concepts", default=None, help="concept set JSON for --sae (default for the zoo: its class concepts)")
    parser.add_argument("--sae-2", default=None, help="SDXL: SAE folder for text_encoder_2")
    parser.add_argument("--concepts-2", default=None, help="SDXL: concept set JSON for --sae-2")
    parser.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    parser.add_argument("--erase", default=None, help="comma-separated concepts to erase (default: every concept of the set)")
    parser.add_argument("--mode", choices=["zero", "scale"], default=None,
                        help="zero the features, or scale them by --value (default: zero; for the zoo its measured "
                             "setting, scale by -6)")
    parser.add_argument("--value", type=float, default=None, help="factor of --mode scale, e.g. -3 (default: 0; zoo: -6)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance scale (default: the model's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image; prompt i uses seed + i")
    parser.add_argument("--out", default="runs/erase", help="output folder (default: runs/erase)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image

    from visionsae.pipelines.itd import ItDStableDiffusionPipeline, ItDStableDiffusionXLPipeline

    from ..cli import CLIError

    erase = [s.strip() for s in args.erase.split(",")] if args.erase else None
    settings: dict = {}
    if args.model == "zoo":
        from ..zoo.text_sae import ERASE_MODE, ERASE_VALUE

        mode = args.mode or ERASE_MODE
        value = args.value if args.value is not None else (ERASE_VALUE if mode == "scale" else 0.0)
    else:
        mode, value = args.mode or "zero", 0.0 if args.value is None else args.value
    if mode == "scale" and value == 0.0:
        raise CLIError("--mode scale needs a --value (a negative factor such as -3)")
    if args.model == "zoo":
        from ..zoo import load_fashion_pipeline, zoo_dir
        from ..zoo.text_sae import SAE_DIR

        stock = load_fashion_pipeline(device=args.device)
        settings = dict(stock.zoo_settings)
        pipe = ItDStableDiffusionPipeline.wrap(stock, args.sae or zoo_dir() / SAE_DIR,
                                               args.concepts or zoo_dir() / SAE_DIR / "concepts.json", erase,
                                               mode=mode, value=value)
    elif args.sae_2 or args.concepts_2:
        pipe = ItDStableDiffusionXLPipeline.from_pretrained(args.model, sae=args.sae, concepts=args.concepts,
                                                            sae_2=args.sae_2, concepts_2=args.concepts_2, erase=erase,
                                                            mode=mode, value=value).to(args.device)
    else:
        if not args.sae or not args.concepts:
            raise CLIError("--sae and --concepts are needed for a model other than the zoo")
        pipe = ItDStableDiffusionPipeline.from_pretrained(args.model, sae=args.sae, concepts=args.concepts, erase=erase,
                                                         mode=mode, value=value).to(args.device)
    if args.steps is not None:
        settings["num_inference_steps"] = args.steps
    if args.guidance_scale is not None:
        settings["guidance_scale"] = args.guidance_scale
    for p in args.prompt:
        if not p.strip():
            raise CLIError("empty prompt")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i, prompt in enumerate(args.prompt):
        gen = lambda: torch.Generator(args.device).manual_seed(args.seed + i)  # noqa: E731
        pipe.itd_enabled = False
        before = pipe(prompt, generator=gen(), output_type="np", **settings)
        pipe.itd_enabled = True
        after = pipe(prompt, generator=gen(), output_type="np", **settings)
        pair = np.concatenate([before.images[0], np.ones((before.images.shape[1], 2, 3)), after.images[0]], axis=1)
        img = Image.fromarray((pair * 255).clip(0, 255).astype(np.uint8))
        scale = max(1, 256 // img.height)
        path = out / f"prompt_{i:02d}.png"
        img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)
        decision = after.concept_decisions[0]
        changed = bool((before.images[0] != after.images[0]).any())
        records.append({"prompt": prompt, "image": str(path), "changed": changed, "decisions": decision})
        flagged = sorted({n for n, d in _flat(decision).items() if d["flagged"]})
        print(f"{prompt!r}: {'erased ' + ', '.join(flagged) if flagged else 'no target concept, image unchanged'} -> {path}")
    (out / "decisions.json").write_text(json.dumps(records, indent=2))
    print(f"decisions: {out / 'decisions.json'}")
    return 0


def _flat(decision: dict) -> dict:
    """Per-concept decisions, flattening SDXL's per-encoder level."""
    if decision and all(isinstance(v, dict) and "flagged" not in v for v in decision.values()):
        return {f"{enc}:{n}": d for enc, ds in decision.items() for n, d in ds.items()}
    return decision
