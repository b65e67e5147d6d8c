"""The audit's inputs: real and generated image sets read from folders or a JSONL of
caption / real / generated records, and the backbone (a model spec of ``visionsae extract``)
that turns them into tokens. ``visionsae audit`` reads its arguments into these."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputNotFoundError, UsageError

DEFAULT_MODEL = "timm:vit_base_patch14_reg4_dinov2.lvd142m"
DEFAULT_HOOKS = {DEFAULT_MODEL: "blocks.11", "efficientnet-lite0": "_blocks.15"}
# Image side the backbone sees, where `visionsae eval audit` chose one: EfficientNet-Lite0 at
# 128 px (a 4x4 grid of block-15 tokens) found the planted classes as often as at its native
# 224 px on the dev seed (omitted + exaggerated classes in the top 3 with the group ranking
# discounted by the set's interval: 16 of 20 at either size) at a third of the compute; other
# backbones keep their own.
DEFAULT_RESOLUTIONS = {"efficientnet-lite0": 128}


def _listed(value, base: Path, where: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) for v in items):
        raise UsageError(f"{where}: expected an image path or a list of paths, got {value!r}")
    return [v if Path(v).is_absolute() else str(base / v) for v in items]


def write_jsonl(records, path: str | Path) -> Path:
    """Write ``records`` (dicts with "real" and "generated" paths, as :func:`read_jsonl` reads them)
    as a JSONL whose image paths are relative to the file's folder, which is how the reader
    resolves them whatever the working directory."""
    import json
    import os

    from ..atomic import atomic_write_bytes

    path = Path(path)
    here = path.parent.resolve()

    def rel(p):
        return [rel(x) for x in p] if isinstance(p, list) else os.path.relpath(Path(p).resolve(), here)

    lines = [json.dumps({**r, "real": rel(r["real"]), "generated": {k: rel(v) for k, v in r["generated"].items()}})
             for r in records]
    atomic_write_bytes(path, "".join(line + "\n" for line in lines).encode())
    return path


def read_jsonl(path: str | Path):
    """(real ImageSet, [generated ImageSet]) of a JSONL of caption / real / generated records."""
    from ..sources.loading import read_jsonl_objects
    from .core import ImageSet

    p = Path(path)
    if not p.exists():
        raise InputNotFoundError(f"JSONL {p} does not exist")
    real, real_keys, real_caps, real_groups = [], [], [], []
    gens: dict[str, tuple[list, list, list, list]] = {}
    grouped = None  # whether the records carry a "group" (all of them or none)
    for n, rec in read_jsonl_objects(p):
        if "real" not in rec or "generated" not in rec:
            raise UsageError(f"{p}:{n}: expected an object with 'real' and 'generated' (and 'caption', 'group'), "
                             f"got keys {sorted(rec)}")
        if grouped is None:
            grouped = "group" in rec
        elif grouped != ("group" in rec):
            raise UsageError(f"{p}:{n}: {'no' if grouped else 'a'} 'group' here but {'' if grouped else 'no '}'group' "
                             "in the first record; give every record a group (e.g. its class) or none")
        caption = str(rec.get("caption", ""))
        group = str(rec.get("group", ""))
        key = f"{n}"
        for r in _listed(rec["real"], p.parent, f"{p}:{n} real"):
            real.append(r)
            real_keys.append(key)
            real_caps.append(caption)
            real_groups.append(group)
        gen = rec["generated"] if isinstance(rec["generated"], dict) else {"generated": rec["generated"]}
        for name, value in gen.items():
            items, keys, caps, groups = gens.setdefault(str(name), ([], [], [], []))
            for g in _listed(value, p.parent, f"{p}:{n} generated[{name!r}]"):
                items.append(g)
                keys.append(key)
                caps.append(caption)
                groups.append(group)
    if not real:
        raise UsageError(f"{p} holds no records")
    return (ImageSet("real", real, real_keys, real_caps, real_groups if grouped else None),
            [ImageSet(_set_name(name), *v[:3], v[3] if grouped else None) for name, v in gens.items()])


def _set_name(text: str) -> str:
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-") or "generated"
    return "real-" + name if name == "real" else name


def _folder_set(name: str, folder: str):
    """An ImageSet of a folder's images; grouped by first subfolder (e.g. real/bag/001.png is in
    group ``bag``) when every image sits in one."""
    from ..sources.image import list_images
    from .core import ImageSet

    items = list_images(folder)
    parts = [Path(p).relative_to(folder).parts for p in items]
    groups = [q[0] for q in parts] if all(len(q) > 1 for q in parts) else None
    return ImageSet(name, items, groups=groups)


def read_folders(real: str, generated: list[str]):
    gens, names = [], set()
    for folder in generated:
        name = _set_name(Path(folder).resolve().name)
        while name in names:
            name += "-2"
        names.add(name)
        gens.append(_folder_set(name, folder))
    return _folder_set("real", real), gens


def build_source(model: str, hook: str | None, weights: str | None, device: str, resolution: int | None = None):
    """The audit's image source: ``model`` read at ``hook`` (default: :data:`DEFAULT_HOOKS`),
    images at ``resolution`` px (default: :data:`DEFAULT_RESOLUTIONS`, else the model's own)."""
    from ..sources.image import ImagePreprocess
    from ..sources.loading import build_source as build, load_model

    if model.startswith(("timm:", "open_clip:")) and weights is None:
        raise UsageError(f"--model {model} needs --weights FILE (nothing is downloaded; without weights the backbone would "
                       "be random). For an offline run use --model efficientnet-lite0")
    hook = hook or DEFAULT_HOOKS.get(model)
    if hook is None:
        raise UsageError(f"--hook is required for --model {model} (a module path such as encoder.layer.11)")
    if resolution is not None and resolution < 8:
        raise UsageError(f"--resolution must be at least 8 pixels, got {resolution}")
    resolution = resolution or DEFAULT_RESOLUTIONS.get(model)
    loaded = load_model(model, weights=weights, device=device)
    if resolution is not None:
        pre = loaded.processor
        if not isinstance(pre, ImagePreprocess):
            raise UsageError(f"--resolution is not supported for --model {model} (its images are prepared by its own "
                           f"processor, {type(pre).__name__}); leave it out")
        loaded.processor = ImagePreprocess((resolution, resolution), resolution, pre.mean, pre.std, pre.interpolation)
    return build(loaded, "image", hook=hook, device=device)
