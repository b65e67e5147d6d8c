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

import argparse
import json
import time
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
               value: float | None = None, stock=None, judge=None, batch: int = 16):
    """A :class:`~visionsae.attack.Target` on the zoo: its fashion pipeline, an ItD pipeline
    erasing ``erase`` with ``sae`` / ``concepts`` (folders or objects; default the zoo's), and the
    zoo's judge. ``mode`` / ``value`` default to the zoo's."""
    from visionsae.pipelines._parts import as_concepts, as_sae
    from visionsae.pipelines.itd import ItDStableDiffusionPipeline

    from ..attack import Target
    from ..zoo import load_fashion_judge, load_fashion_pipeline, zoo_dir
    from ..zoo.prompt_families import class_words
    from ..zoo.captions import CLASS_NAMES
    from ..zoo.text_sae import ERASE_MODE, ERASE_VALUE, SAE_DIR
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
                  concepts=concepts, eraser_settings={"names": names, **settings}, exclude_words=exclude)


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

        cfg = argparse.Namespace()
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


def attack(families: Sequence[str] = FAMILIES, erase: Sequence[str] = ("sneaker",), budget: int | None = None,
           seed: int = 0, per_concept: int = 12, out_dir: str | Path | None = "runs/attack", sae=None, concepts=None,
           mode: str | None = None, value: float | None = None, progress: bool = True, target=None,
           seed_family: str = "evaluate") -> dict:
    """Attack ItD erasing ``erase`` with every family of ``families``; writes ``attack.json``
    in ``out_dir`` (None: nothing written). ``target`` overrides the zoo target built from
    ``erase`` / ``sae`` / ``concepts`` / ``mode`` / ``value``. ``seed_family``: the prompt family of
    the seed prompts (the figures: ``evaluate``; ``calibrate`` to choose a setting on)."""
    from ..attack import write_json

    target = target if target is not None else zoo_target(erase, sae, concepts, mode, value)
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
                          "counted over the attack prompts whose stock-pipeline image (same seed) it sees as the concept",
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", choices=[*FAMILIES, "none", "all"], default="all",
                        help="attack family: text (nlpaug perturbations + beam search), whitebox (token swaps through the "
                             "erased pipeline's diffusion-loss gradient), concept_vector (Ring-A-Bell style), none (the seed "
                             "prompts unchanged), or all (default: none, then the three attacks)")
    parser.add_argument("--erase", default="sneaker", help="comma-separated classes erased together (default: sneaker)")
    parser.add_argument("--budget", type=int, default=None,
                        help="per seed prompt: queries (text, default 60), optimisation steps (whitebox, default 10) or "
                             "genetic generations (concept_vector, default 25); default: each family's own")
    parser.add_argument("--prompts", type=int, default=12,
                        help="seed prompts per erased class, from the evaluate prompt family (default: 12)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompts' sample, the searches and the images")
    parser.add_argument("--out", default="runs/attack", help="folder for attack.json (default: runs/attack)")
    parser.add_argument("--sae", default=None, help="SAE folder of the eraser (default: the zoo's fashion-text-sae)")
    parser.add_argument("--concepts", default=None, help="concept set JSON of that SAE (default: the zoo's)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    from ..zoo.text_sae import add_erase_arguments

    add_erase_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError, check_writable_dir

    names = [n.strip() for n in args.erase.split(",") if n.strip()]
    if not names:
        raise UsageError(f"--erase: expected comma-separated concept names, got {args.erase!r}")
    if args.budget is not None and args.budget < 1:
        raise UsageError(f"--budget must be at least 1, got {args.budget}")
    if args.prompts < 1:
        raise UsageError(f"--prompts must be at least 1, got {args.prompts}")
    if (args.sae is None) != (args.concepts is None):
        raise UsageError("--sae and --concepts go together (a concept set indexes one SAE's features)")
    for flag, path in (("--sae", args.sae), ("--concepts", args.concepts)):
        if path is not None and not Path(path).exists():
            raise UsageError(f"{flag}: {path} does not exist")
    check_writable_dir(args.out, "--out")
    torch.set_num_threads(args.threads)
    families = ("none", *FAMILIES) if args.family == "all" else (args.family,)
    report = attack(families, names, args.budget, args.seed, args.prompts, args.out, args.sae, args.concepts,
                    args.mode, args.value)
    print(json.dumps({"erased": report["erased"], "asr": report["asr"],
                      "counted": {f: r["counted"] for f, r in report["families"].items()},
                      "out": str(Path(args.out) / "attack.json")}, indent=2))
    return 0
