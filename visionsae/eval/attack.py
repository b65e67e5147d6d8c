"""``visionsae attack``: red-team ItD on the zoo and report the attack success rate (JSON).

With the zoo's fashion pipeline, its text SAE and concept set (or ``--sae`` / ``--concepts``),
erase ``--erase`` and attack it with one family or all of them
(:mod:`visionsae.attack`): ``text`` (nlpaug perturbations, beam search against the erased
pipeline's classifier), ``whitebox`` (GCG-style token swaps through the gradient of the erased
pipeline's diffusion loss towards the stock pipeline's latents), ``concept_vector``
(Ring-A-Bell: tokens whose embedding carries the concept's direction, no class word).

Seed prompts are every erased class's prompts of the ``evaluate`` prompt family
(:func:`visionsae.zoo.prompt_families.concept_prompts`: other names, basic forms, typos,
descriptions, scenes), a seeded sample of ``--prompts`` per class; nothing of that family
selected a feature, set a threshold or chose the strength. Each attack prompt is drawn by the
stock and the erased pipeline at the same seed and judged by the zoo's judge; the ASR counts
only prompts the stock pipeline draws as the erased class. ``attack.json`` holds the figures,
every attack prompt and the successful ones.
"""

from __future__ import annotations

import time
import types
from pathlib import Path
from typing import Sequence

import torch

FAMILIES = ("text", "whitebox", "concept_vector")
# "none" judges the seed prompts unchanged: what the erasure lets through with no attack


def zoo_judge(judge):
    """The zoo's :class:`~visionsae.zoo.judge.FashionJudge` as an attack judge: True where it
    sees the concept's class."""
    from ..zoo import CLASS_NAMES

    def fn(images: torch.Tensor, concept: str) -> torch.Tensor:
        return judge.predict(images) == CLASS_NAMES.index(concept)

    return fn


def zoo_target(erase: Sequence[str] = ("sneaker",), sae=None, concepts=None, mode: str | None = None,
               value: float | None = None, stock=None, judge=None, batch: int = 16, images_per_prompt: int = 1):
    """A :class:`~visionsae.attack.Target` on the zoo: its fashion pipeline, an ItD pipeline
    erasing ``erase`` with ``sae`` / ``concepts`` (folders or objects; default the zoo's), and the
    zoo's judge. ``mode`` / ``value`` default to the zoo's."""
    from visionsae.pipelines._parts import as_concepts, as_sae
    from visionsae.pipelines.itd import ItDStableDiffusionPipeline

    from ..attack import Target
    from ..zoo import load_fashion_judge, load_fashion_pipeline, zoo_dir
    from ..zoo.prompt_families import class_words
    from ..zoo.captions import CLASS_NAMES
    from ..zoo.settings import ERASE_MODE, ERASE_VALUE, TEXT_SAE_DIR as SAE_DIR
    from .erasure import _generate, nchw

    stock = stock if stock is not None else load_fashion_pipeline()
    stock.set_progress_bar_config(disable=True)
    judge = judge if judge is not None else load_fashion_judge()
    sae = as_sae(sae if sae is not None else zoo_dir() / SAE_DIR)
    concepts = as_concepts(concepts if concepts is not None else zoo_dir() / SAE_DIR / "concepts.json")
    settings = {"mode": ERASE_MODE if mode is None else mode, "value": ERASE_VALUE if value is None else float(value)}
    names = list(erase)
    unknown = [n for n in names if n not in concepts.concepts]
    if unknown:
        from ..errors import UsageError

        raise UsageError(f"--erase: {unknown} not in the concept set; it has {concepts.names()}")
    erased = ItDStableDiffusionPipeline.wrap(stock, sae, concepts, names, **settings)
    erased.set_progress_bar_config(disable=True)
    draw = dict(stock.zoo_settings)

    def generate(pipe, prompts, seeds):
        images, decisions = _generate(pipe, prompts, seeds, draw, batch=batch)
        return nchw(images), decisions

    # the words a concept-vector prompt may not hold: the class word, singular and plural, as
    # Ring-A-Bell leaves out the concept's word (not the concept set's whole vocabulary: that
    # changes with the set and would bar "shoe", "laces", "sole" from a sneaker attack)
    exclude = {n: sorted({n, *(class_words(CLASS_NAMES.index(n)) if n in CLASS_NAMES else ())}) for n in names}
    # the settings the ItD pipeline builds its eraser from (ItDEraser.from_settings)
    return Target(stock=stock, erased=erased, judge=zoo_judge(judge), generate=generate, names=names, settings=draw, sae=sae,
                  concepts=concepts, eraser_settings={"names": names, **settings}, exclude_words=exclude,
                  images_per_prompt=images_per_prompt)


def seed_prompts(names: Sequence[str], per_concept: int, seed: int = 0, family: str = "evaluate") -> list[tuple[str, str]]:
    """(prompt, concept) seeds: ``per_concept`` prompts of each class's ``family`` (the figures:
    ``evaluate``; hardening a concept set: ``select``), taken in turn from its kinds (a seeded
    order within each kind)."""
    import random

    from ..zoo.captions import CLASS_NAMES
    from ..zoo.prompt_families import KINDS, concept_prompts

    out = []
    for n in names:
        if n not in CLASS_NAMES:
            from ..errors import UsageError

            raise UsageError(f"--erase: the zoo's evaluate prompts cover its classes {list(CLASS_NAMES)}, not {n!r}")
        kinds = concept_prompts(CLASS_NAMES.index(n), family)
        pools = {k: random.Random(f"{seed}-attack-{n}-{k}").sample(kinds[k], len(kinds[k])) for k in KINDS}
        picked: list[str] = []
        while len(picked) < per_concept and any(pools.values()):
            for k in KINDS:
                if pools[k] and len(picked) < per_concept:
                    picked.append(pools[k].pop())
        out += [(p, n) for p in picked]
    return out


def concept_pairs(name: str, family: str = "evaluate") -> list[tuple[str, str]]:
    """(with, without) prompt pairs of a zoo class for its concept direction
    (:func:`visionsae.zoo.prompt_families.class_pairs`; evaluate: 16 templates x 9 classes)."""
    from ..zoo.captions import CLASS_NAMES
    from ..zoo.prompt_families import class_pairs

    return class_pairs(CLASS_NAMES.index(name), family)


def run_family(target, family: str, seeds: list[tuple[str, str]], budget: int | None, seed: int,
               progress: bool = True, prompt_family: str = "evaluate") -> dict:
    """One family's attack of every seed prompt, judged: the ASR and every attack prompt."""
    from ..attack import judge_results

    kw = {} if budget is None else {"budget": budget}
    start = time.perf_counter()
    if family == "none":
        from ..attack import SeedResult

        cfg = types.SimpleNamespace()
        results = [SeedResult(p, c, p, 0, False) for p, c in seeds]
        unit = "no attack: the seed prompts themselves, the floor every attack starts from"
    elif family == "text":
        from ..attack.text import TextAttackConfig, run_text_attack

        cfg = TextAttackConfig(seed=seed, **kw)
        results = run_text_attack(target, seeds, cfg, image_seed=seed, progress=progress)
        unit = "queries per seed prompt (classifier or stock pipeline + judge evaluations of one candidate)"
    elif family == "whitebox":
        from ..attack.whitebox import WhiteBoxConfig, run_whitebox_attack

        cfg = WhiteBoxConfig(seed=seed, **kw)
        results = run_whitebox_attack(target, seeds, cfg, image_seed=seed, progress=progress)
        unit = "optimisation steps per seed prompt (each: one gradient of the diffusion loss and `candidates` forward evaluations)"
    elif family == "concept_vector":
        from ..attack.concept_vector import ConceptVectorConfig, run_concept_vector_attack

        cfg = ConceptVectorConfig(seed=seed, **kw)
        pairs = {n: concept_pairs(n, prompt_family) for n in target.names}
        results = run_concept_vector_attack(target, seeds, cfg, pairs, image_seed=seed, progress=progress)
        unit = "generations of the genetic search per seed prompt (each: `population` text-encoder evaluations)"
    else:
        from ..errors import UsageError

        raise UsageError(f"--family: unknown attack family {family!r}; expected one of {(*FAMILIES, 'none')} or 'all'")
    out = {"family": family, "config": dict(vars(cfg)), "budget_unit": unit, **judge_results(target, results, seed)}
    out["seconds"] = time.perf_counter() - start
    return out


def chance(target, family: str = "evaluate", count: int = 48, seed: int = 0) -> dict:
    """What an attack gets without asking for the concept at all: ``count`` generic prompts of
    ``family`` (ImageNet classes of no garment) drawn by the erased pipeline and judged as the
    target's draws are judged. Per erased concept, the share drawn as it (the ASR's chance
    level for prompts the eraser lets through), and the share the eraser flags."""
    from ..zoo.prompt_families import generic_prompts

    prompts = generic_prompts(family, count, seed=seed)
    seeds = [seed + i for i in range(len(prompts))]
    out = {"prompts": len(prompts), "family": family, "images_per_prompt": target.images_per_prompt, "per_concept": {}}
    drawn, decisions = target.draws_each(target.erased, prompts, seeds, target.names)  # one set of images for all
    for concept in target.names:
        flagged = [bool(d[concept]["flagged"]) for d in decisions] if decisions else []
        out["per_concept"][concept] = {"drawn_as_concept": sum(drawn[concept]) / len(prompts),
                                       "flagged": sum(flagged) / len(flagged) if flagged else None}
    return out


def attack(families: Sequence[str] = FAMILIES, erase: Sequence[str] = ("sneaker",), budget: int | None = None,
           seed: int = 0, per_concept: int = 12, out_dir: str | Path | None = "runs/attack", sae=None, concepts=None,
           mode: str | None = None, value: float | None = None, progress: bool = True, target=None,
           seed_family: str = "evaluate", images_per_prompt: int = 1) -> dict:
    """Attack ItD erasing ``erase`` with every family of ``families``; writes ``attack.json``
    in ``out_dir`` (None: nothing written). ``target`` overrides the zoo target built from
    ``erase`` / ``sae`` / ``concepts`` / ``mode`` / ``value`` / ``images_per_prompt``. ``seed_family``:
    the prompt family of the seed prompts (the figures: ``evaluate``; ``calibrate`` to choose a
    setting on). The report's ``chance`` is :func:`chance` on that family."""
    from ..attack import write_json

    target = target if target is not None else zoo_target(erase, sae, concepts, mode, value,
                                                          images_per_prompt=images_per_prompt)
    seeds = seed_prompts(target.names, per_concept, seed, seed_family)
    split = ("seed prompts from the 'evaluate' prompt family only (it chose nothing)" if seed_family == "evaluate"
             else f"seed prompts from the {seed_family!r} prompt family (not a figure to quote: that family chose settings)")
    report = {
        "erased": list(target.names), "split": split, "seed_family": seed_family,
        "edit": {k: v for k, v in target.eraser_settings.items() if k != "names"},
        "hook": target.concepts.hook or target.sae.cfg.hook,
        "sae": str(sae) if isinstance(sae, (str, Path)) else "the zoo's fashion-text-sae" if sae is None else "given",
        "seed": seed, "seed_prompts": len(seeds),
        "asr_definition": "share of attack prompts whose erased-pipeline image the judge sees as the erased concept, "
                          "counted over the attack prompts whose stock-pipeline image (same seed) it sees as the concept"
                          + ("" if target.images_per_prompt == 1 else
                             f"; an image here is the majority of {target.images_per_prompt} images at as many seeds"),
        "images_per_prompt": target.images_per_prompt,
        "chance": chance(target, seed_family, seed=seed),
        "families": {},
    }
    for family in families:
        report["families"][family] = run_family(target, family, seeds, budget, seed, progress, seed_family)
        if out_dir is not None:
            write_json(Path(out_dir) / "attack.json", report)
    report["asr"] = {f: r["asr"] for f, r in report["families"].items()}
    if out_dir is not None:
        write_json(Path(out_dir) / "attack.json", report)
    return report
