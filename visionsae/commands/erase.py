"""``visionsae erase``: generate with concepts erased (ItD), next to the stock pipeline.

    visionsae erase --model zoo --prompt "a photo of a sneaker" --erase sneaker
    visionsae erase --model runwayml/stable-diffusion-v1-5 --sae SAE_DIR --concepts concepts.json --prompt "..."
    visionsae erase --model stabilityai/stable-diffusion-xl-base-1.0 --sae SAE1 --concepts C1 --sae-2 SAE2 --concepts-2 C2 --prompt "..."
    visionsae erase --model sd3-folder/ --sae-3 T5_SAE --concepts-3 C3 --prompt "..."     # SD3's T5 (Flux's: --sae-2)

The pipeline class comes from a local folder's model_index.json (SD 1.x/2.x, SDXL, SD3, Flux);
for a hub id, SDXL where --sae-2 is given, else SD.

Writes a before/after PNG per prompt and decisions.json (the classifier's verdict per
prompt and concept) into --out.
"""

from __future__ import annotations

import argparse

from ..errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..zoo.settings import ERASE_MODE, ERASE_VALUE

    parser.add_argument("--model", default="zoo", help="'zoo' (the embedded fashion model), a diffusers folder or a Hugging Face id (default: zoo)")
    parser.add_argument("--sae", default=None, help="SAE folder for the (first) text encoder (default for the zoo: assets/zoo/fashion-text-sae)")
    parser.add_argument("--concepts", default=None, help="concept set JSON for --sae (default for the zoo: its class concepts)")
    parser.add_argument("--sae-2", default=None, help="SDXL / SD3: SAE folder for text_encoder_2 (Flux: its T5)")
    parser.add_argument("--concepts-2", default=None, help="concept set JSON for --sae-2")
    parser.add_argument("--sae-3", default=None, help="SD3: SAE folder for text_encoder_3 (its T5)")
    parser.add_argument("--concepts-3", default=None, help="concept set JSON for --sae-3")
    parser.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    parser.add_argument("--erase", default=None, help="comma-separated concepts to erase (default: every concept of the set)")
    parser.add_argument("--mode", choices=["zero", "scale"], default=None,
                        help=f"zero the features, or scale them by --value (default: zero; for the zoo its measured "
                             f"setting, {ERASE_MODE} by {ERASE_VALUE:g})")
    parser.add_argument("--value", type=float, default=None,
                        help=f"negative factor of --mode scale, e.g. -3 (default for the zoo: {ERASE_VALUE:g})")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps, >= 1 (default: the model's)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance scale (default: the model's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image; prompt i uses seed + i")
    parser.add_argument("--out", default="runs/erase", help="output folder (default: runs/erase)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def check_edit(mode: str, value: float, flag: str = "--value") -> None:
    """An erasure's edit: ``zero``, or ``scale`` by a finite negative factor (a positive one
    would strengthen the concept, a factor of 0 is ``zero``); a UsageError naming ``flag``."""
    import math

    if mode == "scale" and not (math.isfinite(value) and value < 0):
        raise UsageError(f"{flag} must be a finite negative factor for --mode scale (it pushes the concept's features "
                         f"the other way; 0 is --mode zero), got {value:g}")


def check_seed(seed: int, count: int = 1, flag: str = "--seed") -> None:
    """Seeds ``seed`` .. ``seed + count - 1`` fit a torch generator (0 to 2**64 - 1)."""
    if not 0 <= seed <= 2**64 - count:
        raise UsageError(f"{flag} must be in [0, 2**64 - {count}] (a torch generator seed; prompt i uses seed + i), got {seed}")


def run(args: argparse.Namespace) -> int:
    from ..errors import check_writable_dir

    # every check that needs no model first: a mistake costs no pipeline load
    erase, mode, value = _checked(args)
    out = check_writable_dir(args.out, "--out")
    pipe, settings = _pipeline(args, erase, mode, value)
    if args.steps is not None:
        settings["num_inference_steps"] = args.steps
    if args.guidance_scale is not None:
        settings["guidance_scale"] = args.guidance_scale
    results = _generate(pipe, args, settings, mode, value)
    _write(results, out)  # only once every image is good: no folder of half the results
    return 0


def _checked(args: argparse.Namespace) -> tuple[list[str] | None, str, float]:
    """The concepts to erase and the edit (mode, value), every flag checked; nothing loaded."""
    import math

    from ..sources.text import check_prompt_text

    erase = [s.strip() for s in args.erase.split(",")] if args.erase else None
    if erase is not None and not all(erase):
        raise UsageError(f"--erase {args.erase!r}: expected comma-separated concept names")
    for i, p in enumerate(args.prompt):
        check_prompt_text(p, f"--prompt {i + 1}")
        if not p.strip():
            raise UsageError(f"--prompt {i + 1} is empty")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    if args.guidance_scale is not None and not math.isfinite(args.guidance_scale):
        raise UsageError(f"--guidance-scale must be a finite number, got {args.guidance_scale}")
    check_seed(args.seed, len(args.prompt))
    if args.model == "zoo":
        from ..zoo.settings import ERASE_MODE, ERASE_VALUE

        mode = args.mode or ERASE_MODE
        value = args.value if args.value is not None else (ERASE_VALUE if mode == "scale" else 0.0)
    else:
        mode, value = args.mode or "zero", 0.0 if args.value is None else args.value
    if mode == "scale" and args.value is None and args.model != "zoo":
        raise UsageError("--mode scale needs a --value (a negative factor such as -3)")
    if mode == "zero" and args.value is not None:
        raise UsageError(f"--value {args.value:g} is the factor of --mode scale; --mode zero takes none")
    check_edit(mode, value)
    return erase, mode, value


def _pipeline(args: argparse.Namespace, erase, mode: str, value: float):
    """(the erasing pipeline of --model, the generation settings it comes with)."""
    from visionsae.pipelines.itd import ItDStableDiffusionPipeline

    if args.model == "zoo":
        from ..zoo import load_fashion_pipeline, zoo_dir
        from ..zoo.settings import TEXT_SAE_DIR as SAE_DIR

        stock = load_fashion_pipeline(device=args.device)
        pipe = ItDStableDiffusionPipeline.wrap(stock, args.sae or zoo_dir() / SAE_DIR,
                                               args.concepts or zoo_dir() / SAE_DIR / "concepts.json", erase,
                                               mode=mode, value=value)
        return pipe, dict(stock.zoo_settings)
    cls = itd_class(args.model, bool(args.sae_2 or args.concepts_2))
    given = {"sae": args.sae, "concepts": args.concepts, "sae_2": args.sae_2, "concepts_2": args.concepts_2,
             "sae_3": args.sae_3, "concepts_3": args.concepts_3}
    if cls is ItDStableDiffusionPipeline:
        extra = sorted(f"--{k.replace('_', '-')}" for k in ("sae_2", "concepts_2", "sae_3", "concepts_3") if given[k])
        if extra:
            raise UsageError(f"{args.model} is a single-encoder Stable Diffusion pipeline: {', '.join(extra)} do not apply")
        if not args.sae or not args.concepts:
            raise UsageError("--sae and --concepts are needed for a model other than the zoo")
        eraser = {"sae": args.sae, "concepts": args.concepts}
    else:
        keys = [k for pair in cls._eraser_keys() for k in pair]
        extra = sorted(f"--{k.replace('_', '-')}" for k, v in given.items() if v and k not in keys)
        if extra:
            raise UsageError(f"{args.model} is a {cls._parent.__name__}, whose text encoders are "
                             f"{', '.join(cls._encoders)}: {', '.join(extra)} do not apply")
        eraser = {k: given[k] for k in keys}
        if not any(eraser[sae] for sae, _ in cls._eraser_keys()):
            flags = " and/or ".join(f"--{sae.replace('_', '-')}" for sae, _ in cls._eraser_keys())
            raise UsageError(f"{args.model} is a {cls._parent.__name__}: pass {flags} (with their concept sets)")
    return cls.from_pretrained(args.model, **eraser, erase=erase, mode=mode, value=value).to(args.device), {}


def _generate(pipe, args: argparse.Namespace, settings: dict, mode: str, value: float) -> list[tuple]:
    """(prompt, stock output, erased output) of every --prompt at its seed; a NaN image refused."""
    import numpy as np
    import torch

    results = []
    for i, prompt in enumerate(args.prompt):
        gen = lambda: torch.Generator(args.device).manual_seed(args.seed + i)  # noqa: E731
        pipe.itd_enabled = False
        before = pipe(prompt, generator=gen(), output_type="np", **settings)
        pipe.itd_enabled = True
        after = pipe(prompt, generator=gen(), output_type="np", **settings)
        for name, images in (("stock", before.images), ("erased", after.images)):
            if not np.isfinite(images).all():
                raise UsageError(
                    f"the {name} image of --prompt {i + 1} holds NaN or Inf"
                    + (f" (the edit {mode} {value:g} drove the text embedding out of range; use a smaller factor)"
                       if name == "erased" else " (the model itself gives no image at these settings)")
                    + "; nothing was written"
                )
        results.append((prompt, before, after))
    return results


def _write(results: list[tuple], out) -> None:
    """A stock | erased PNG per prompt and decisions.json, each written atomically."""
    import io
    import json

    import numpy as np
    from PIL import Image

    from ..sae.io import atomic_write_bytes

    records = []
    for i, (prompt, before, after) in enumerate(results):
        pair = np.concatenate([before.images[0], np.ones((before.images.shape[1], 2, 3)), after.images[0]], axis=1)
        img = Image.fromarray((pair * 255).clip(0, 255).astype(np.uint8))
        scale = max(1, 256 // img.height)
        path = out / f"prompt_{i:02d}.png"
        png = io.BytesIO()
        img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(png, format="PNG")
        atomic_write_bytes(path, png.getvalue())
        decision = after.concept_decisions[0]
        changed = bool((before.images[0] != after.images[0]).any())
        records.append({"prompt": prompt, "image": str(path), "changed": changed, "decisions": decision})
        flagged = sorted({n for n, d in _flat(decision).items() if d["flagged"]})
        print(f"{prompt!r}: {'erased ' + ', '.join(flagged) if flagged else 'no target concept, image unchanged'} -> {path}")
    atomic_write_bytes(out / "decisions.json", json.dumps(records, indent=2).encode())
    print(f"decisions: {out / 'decisions.json'}")


def itd_class(model: str, second_encoder: bool):
    """The ItD pipeline class of ``model``: the one whose parent its folder's model_index.json
    names (a UsageError for a pipeline ItD does not cover); for a hub id, SDXL when a second
    encoder's SAE is given, else SD."""
    import json
    from pathlib import Path

    from visionsae.pipelines import itd

    classes = {c._parent.__name__: c for c in (itd.ItDStableDiffusionPipeline, itd.ItDStableDiffusionXLPipeline,
                                               itd.ItDStableDiffusion3Pipeline, itd.ItDFluxPipeline)}
    index = Path(model) / "model_index.json"
    if not index.is_file():
        return itd.ItDStableDiffusionXLPipeline if second_encoder else itd.ItDStableDiffusionPipeline
    try:
        name = json.loads(index.read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError, AttributeError):
        raise UsageError(f"{index} is not a JSON object naming its pipeline class") from None
    if name not in classes:
        raise UsageError(f"{model} is a {name}; ItD erases from {', '.join(classes)}")
    return classes[name]


def _flat(decision: dict) -> dict:
    """Per-concept decisions, flattening SDXL's per-encoder level."""
    if decision and all(isinstance(v, dict) and "flagged" not in v for v in decision.values()):
        return {f"{enc}:{n}": d for enc, ds in decision.items() for n, d in ds.items()}
    return decision
