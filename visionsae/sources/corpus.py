"""A real prompt corpus that needs no download: open_clip's 1000 ImageNet class names times its
prompt templates ("a photo of a {}.", "itap of a {}." ...), with the class of each prompt."""

from __future__ import annotations

import random
from dataclasses import dataclass
from ..errors import UsageError

# ImageNet-1k classes 151..268 are dog breeds.
DOG_CLASS_IDS = tuple(range(151, 269))

# Road and rail vehicles among the ImageNet-1k class names of open_clip.
VEHICLE_CLASS_NAMES = (
    "ambulance", "station wagon", "taxicab", "convertible", "jeep", "limousine", "minivan", "ford model t",
    "race car", "sports car", "school bus", "trolleybus", "fire truck", "garbage truck", "pickup truck",
    "police van", "tow truck", "semi-trailer truck", "moving van", "tractor", "golf cart", "go-kart", "moped",
    "minibus", "recreational vehicle", "snowmobile", "forklift", "tram", "railroad car",
    "electric locomotive", "steam locomotive", "mountain bike", "tandem bicycle",
)


@dataclass(frozen=True)
class Prompt:
    """One prompt of the corpus."""

    text: str  # the prompt
    class_id: int  # ImageNet-1k class index
    class_name: str  # open_clip's class name
    template: int  # index of the template in the template list used


def class_names() -> list[str]:
    from open_clip import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def vehicle_class_ids() -> tuple[int, ...]:
    names = class_names()
    missing = [n for n in VEHICLE_CLASS_NAMES if n not in names]
    if missing:
        raise UsageError(f"vehicle classes not among open_clip's ImageNet class names: {missing}")
    return tuple(names.index(n) for n in VEHICLE_CLASS_NAMES)


def imagenet_prompts(templates: str = "simple", classes: list[int] | None = None) -> list[Prompt]:
    """Every class (or ``classes``) in every template; ``templates`` is ``"simple"`` (open_clip's 7)
    or ``"openai"`` (the 80 of CLIP's zero-shot evaluation)."""
    from open_clip import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    tmpl = {"simple": SIMPLE_IMAGENET_TEMPLATES, "openai": OPENAI_IMAGENET_TEMPLATES}.get(templates)
    if tmpl is None:
        raise UsageError(f"templates must be 'simple' or 'openai', got {templates!r}")
    names = class_names()
    ids = range(len(names)) if classes is None else classes
    return [Prompt(t(names[c]), c, names[c], j) for c in ids for j, t in enumerate(tmpl)]


def sample_prompts(n: int, *, templates: str = "openai", seed: int = 0, exclude: set[int] = frozenset()) -> list[Prompt]:
    """``n`` prompts drawn without replacement (seeded) from all classes not in ``exclude``."""
    pool = [p for p in imagenet_prompts(templates) if p.class_id not in exclude]
    if n > len(pool):
        raise UsageError(f"asked for {n} prompts but the corpus has {len(pool)}")
    return random.Random(seed).sample(pool, n)
