"""Attack-style positives for the zoo's class concepts, labelled by what the stock generator draws.

The read-outs of :mod:`visionsae.zoo.text_sae` are fitted on clean prompts; attacks find prompts
the generator still draws as the class while the read-out scores them low: a chain of typos and
homoglyphs, a few unrelated words before or after the prompt (what the white-box attack's token
swaps converge to), word salad that carries the class's direction in the text encoder
(Ring-A-Bell). This script makes such prompts from the ``select`` family only and keeps those
the *stock* pipeline draws as the class (the zoo's judge on its image), as extra positives of
that class's fit. Per class, ``--seeds`` seed prompts of the select family, and for each:

* ``text``: a chain of one to three of the text attack's transformations
  (:func:`visionsae.attack.text.transformations`: nlpaug typos, OCR confusions, synonyms,
  homoglyphs, upper case), no search;
* ``words``: two to six random whole-word tokens of the vocabulary (less the class's words)
  before the prompt, after it, or both;
* ``carrier``: the concept-vector attack's genetic search
  (:func:`visionsae.attack.concept_vector.carrier_prompt`) towards the seed's encoding plus the
  class's direction from ``select``-family prompt pairs, without the class word.

Images are drawn at seeds from :data:`IMAGE_SEED` on, apart from the attacks' (0, 1, ...). No
prompt, template or noun phrase of ``calibrate`` or ``evaluate`` is used, so the thresholds are
still set on calibrate and every figure still comes from evaluate.

    visionsae zoo harden --out assets/zoo/fashion-text-sae/hardening.json
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

KINDS = ("text", "words", "carrier")
IMAGE_SEED = 1_000_000
FILE = "hardening.json"


def variants(pipe, label: int, seeds: int, seed: int = 0, progress: bool = True) -> list[dict]:
    """Attack-style variants of ``seeds`` select-family prompts of class ``label``: one of each
    kind of :data:`KINDS` per seed prompt (see the module docstring)."""
    from tqdm.auto import tqdm

    from ...attack.concept_vector import ConceptVectorConfig, carrier_prompt, concept_direction
    from ...attack.text import transformations
    from ...attack.whitebox import word_token_ids
    from ..captions import CLASS_NAMES
    from ..prompt_families import class_pairs, class_words, concept_prompts

    name = CLASS_NAMES[label]
    rng = random.Random(f"{seed}-harden-{name}")
    pool = [p for ps in concept_prompts(label, "select").values() for p in ps]
    chosen = rng.sample(pool, min(seeds, len(pool)))
    transforms = transformations()
    tok = pipe.tokenizer
    allowed = word_token_ids(tok, class_words(label))
    words = tok.convert_ids_to_tokens(allowed.tolist())
    direction = concept_direction(pipe, class_pairs(label, "select"))
    # half the attack's default search (12 generations of 24, not 25 of 32): 4x cheaper, and the
    # fit needs prompts that carry the direction, not the closest ones
    cfg = ConceptVectorConfig(budget=12, population=24, seed=seed)
    out = []
    for i, prompt in enumerate(tqdm(chosen, desc=f"hardening prompts: {name}", disable=not progress)):
        text = prompt
        for _ in range(rng.randint(1, 3)):
            text = transforms[rng.randrange(len(transforms))][1](text, rng) or text
        extra = rng.sample(words, rng.randint(2, 6))
        cut = rng.choice((0, len(extra), rng.randint(1, len(extra) - 1)))
        salad = " ".join(extra[:cut] + [prompt] + extra[cut:])
        carrier, _, _ = carrier_prompt(pipe, prompt, name, direction, cfg, allowed, i)
        for kind, p in zip(KINDS, (text, salad, carrier)):
            out.append({"class": name, "kind": kind, "seed_prompt": prompt, "prompt": p})
    return out


def label_by_stock(pipe, judge, rows: list[dict], batch: int = 32, seeds=None) -> list[dict]:
    """Each row's ``drawn_as``: the class the judge sees in the stock pipeline's image of its
    prompt, the i-th drawn at ``seeds[i]`` (default ``IMAGE_SEED + i``), as ``image_seed``."""
    from ..captions import CLASS_NAMES
    from ..t2i import draw, nchw

    seeds = list(seeds) if seeds is not None else [IMAGE_SEED + i for i in range(len(rows))]
    images, _ = draw(pipe, [r["prompt"] for r in rows], seeds, dict(pipe.zoo_settings), batch=batch)
    labels = judge.predict(nchw(images)).tolist()
    return [r | {"image_seed": s, "drawn_as": CLASS_NAMES[int(c)]} for r, s, c in zip(rows, seeds, labels)]


def positives(path: str | Path) -> dict[str, list[str]]:
    """The hardening positives of a :data:`FILE`: per class, the prompts drawn as it."""
    rows = json.loads(Path(path).read_text())["prompts"]
    out: dict[str, list[str]] = {}
    for r in rows:
        if r["drawn_as"] == r["class"]:
            out.setdefault(r["class"], []).append(r["prompt"])
    return out


def harden(args) -> int:
    """The run ``visionsae zoo harden`` starts, from its parsed flags."""
    if args.seeds < 1:
        from ...errors import UsageError

        raise UsageError(f"--seeds must be at least 1, got {args.seeds}")
    torch.set_num_threads(args.threads)

    from ...sae.io import atomic_write_bytes
    from .. import load_fashion_judge, load_fashion_pipeline, zoo_dir
    from ..captions import NUM_CLASSES
    from .text_sae import SAE_DIR

    out = Path(args.out) if args.out else zoo_dir() / SAE_DIR / FILE
    start = time.perf_counter()
    pipe = load_fashion_pipeline()
    pipe.set_progress_bar_config(disable=True)
    rows = [r for c in range(NUM_CLASSES) for r in variants(pipe, c, args.seeds, args.seed)]
    rows = label_by_stock(pipe, load_fashion_judge(), rows)
    kept = {k: sum(r["kind"] == k and r["drawn_as"] == r["class"] for r in rows) for k in KINDS}
    report = {"family": "select", "seeds_per_class": args.seeds, "seed": args.seed, "image_seed_from": IMAGE_SEED,
              "kept_per_kind": kept, "seconds": round(time.perf_counter() - start, 1), "prompts": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, json.dumps(report, indent=1, ensure_ascii=False).encode())
    print(json.dumps({k: report[k] for k in ("kept_per_kind", "seconds")} | {"rows": len(rows), "out": str(out)}))
    return 0


if __name__ == "__main__":  # the same as `visionsae zoo harden`
    import sys

    from ...commands import main

    sys.exit(main(["zoo", "harden", *sys.argv[1:]]))
