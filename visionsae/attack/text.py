"""Black-box text attack: perturb a prompt until the eraser's classifier lets it through while
the stock pipeline still draws the concept.

Transformations are nlpaug's augmenters (keyboard typos, random character insert / substitute /
swap / delete, OCR confusions, WordNet synonyms; :mod:`visionsae.attack.wordnet` for the
offline WordNet) plus two nlpaug has no augmenter for: homoglyphs (Cyrillic / Greek look-alike
letters) and upper case. Stop words are never perturbed.

The search is a beam search per seed prompt. Each round every prompt of the beam gets
``neighbours`` perturbations (one transformation each); each new candidate costs one query of the
erased pipeline's classifier, which gives its margin (score minus threshold of the concept,
as the pipeline decides it, both gates). Candidates that are not flagged are checked, lowest
margin first, with the stock pipeline and the judge (one query each): the first the stock
pipeline draws as the concept ends the search. Otherwise the ``beam`` candidates with the
lowest margins go on. With the budget spent and nothing through, the attack prompt is the
flagged candidate with the lowest margin when the stock pipeline draws it (the erasure may
still fail on it), else the seed prompt itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from .common import Budget, BudgetSpent, SeedResult, Target, check_positive, seeded

HOMOGLYPHS = {"a": "а", "c": "с", "e": "е", "i": "і", "o": "о", "p": "р", "s": "ѕ", "x": "х", "y": "у", "k": "κ", "n": "η"}


@dataclass
class TextAttackConfig:
    """Black-box text attack settings."""

    budget: int = 60
    """Queries per seed prompt (one classifier or stock-pipeline evaluation of one candidate)."""
    beam: int = 4
    """Candidates kept each round."""
    neighbours: int = 4
    """Perturbations of each beam prompt per round."""
    seed: int = 0
    """Seed of the perturbations and of the images."""

    def __post_init__(self) -> None:
        for name in ("budget", "beam", "neighbours"):
            check_positive(f"--{name}", getattr(self, name))


def _homoglyph(text: str, rng: random.Random) -> str:
    spots = [i for i, ch in enumerate(text) if ch in HOMOGLYPHS]
    if not spots:
        return text
    i = rng.choice(spots)
    return text[:i] + HOMOGLYPHS[text[i]] + text[i + 1:]


def _upper(text: str, rng: random.Random, stopwords=frozenset()) -> str:
    words = text.split(" ")
    spots = [i for i, w in enumerate(words) if w.lower() not in stopwords and w != w.upper()]
    if not spots:
        return text
    i = rng.choice(spots)
    words[i] = words[i].upper()
    return " ".join(words)


def transformations(stopwords: Sequence[str] = ()) -> list[tuple[str, Callable[[str, random.Random], str]]]:
    """(name, fn(text, rng) -> text) of every transformation. nlpaug draws from Python's and
    numpy's global generators, so each call seeds both from ``rng`` first."""
    import nlpaug.augmenter.char as nac

    from ..concepts.normalize import STOPWORDS

    stop = sorted(set(STOPWORDS) | set(stopwords))
    char = dict(aug_char_min=1, aug_char_max=1, aug_word_min=1, aug_word_max=1, stopwords=stop)
    augs = {
        "keyboard": nac.KeyboardAug(include_special_char=False, include_upper_case=False, **char),
        "insert": nac.RandomCharAug(action="insert", include_upper_case=False, spec_char="", **char),
        "substitute": nac.RandomCharAug(action="substitute", include_upper_case=False, spec_char="", **char),
        "swap": nac.RandomCharAug(action="swap", **char),
        "delete": nac.RandomCharAug(action="delete", **char),
        "ocr": nac.OcrAug(**char),
    }
    try:
        from .wordnet import synonym_augmenter

        augs["synonym"] = synonym_augmenter(stop)
    except (ImportError, FileNotFoundError):
        pass  # no nltk or no Debian WordNet: the character transformations still run

    def nlpaug_fn(aug):
        def fn(text: str, rng: random.Random) -> str:
            state = rng.randrange(2**31)
            random.seed(state)
            np.random.seed(state)
            out = aug.augment(text)
            return out[0] if isinstance(out, list) else out
        return fn

    out = [(name, nlpaug_fn(a)) for name, a in augs.items()]
    out.append(("homoglyph", _homoglyph))
    out.append(("upper", lambda text, rng: _upper(text, rng, frozenset(stop))))
    return out


def attack_prompt(target: Target, prompt: str, concept: str, cfg: TextAttackConfig, image_seed: int,
                  transforms=None, index: int = 0) -> SeedResult:
    """Beam search from ``prompt`` (see the module docstring)."""
    transforms = transforms or transformations()
    rng = seeded(cfg.seed, "text", concept, index, prompt)
    budget = Budget(cfg.budget)
    seen = {prompt}
    best = beam_start = (float("inf"), prompt, [])
    found = False
    try:
        flagged, margin = target.margins([prompt], concept)
        budget.spend()
        beam = [(margin[0], prompt, [])]
        best = beam_start = beam[0]
        if not flagged[0]:  # the classifier misses the seed prompt itself
            budget.spend()
            found = target.draws(target.stock, [prompt], [image_seed], concept)[0][0]
            through = best
        stalled = 0
        while budget.left > 1 and not found and stalled < 20:
            cands = []
            for _, text, path in beam:
                for _ in range(cfg.neighbours):
                    name, fn = transforms[rng.randrange(len(transforms))]
                    new = fn(text, rng)
                    if new and new not in seen:
                        seen.add(new)
                        cands.append((new, path + [name]))
            stalled = 0 if cands else stalled + 1
            if not cands:
                continue
            cands = cands[: budget.left - 1]  # one query kept for the final check
            if not cands:
                break
            budget.spend(len(cands))
            flags, margins = target.margins([c for c, _ in cands], concept)
            scored = sorted(zip(margins, flags, cands), key=lambda x: x[0])
            for m, f, (text, path) in scored:
                if f and m < best[0]:
                    best = (m, text, path)
                if not f and budget.left > 1:
                    budget.spend()
                    draws, _ = target.draws(target.stock, [text], [image_seed], concept)
                    if draws[0]:
                        through, found = (m, text, path), True
                        break
            beam = [(m, text, path) for m, f, (text, path) in scored[: cfg.beam]]
    except BudgetSpent:
        pass
    if found:
        margin, text, path = through
    else:
        # nothing slipped through: the flagged candidate with the lowest margin if the stock
        # pipeline draws it (one more query), else the seed prompt
        margin, text, path = best
        if text != prompt:
            try:
                budget.spend()
                if not target.draws(target.stock, [text], [image_seed], concept)[0][0]:
                    margin, text, path = beam_start
            except BudgetSpent:
                margin, text, path = beam_start
    return SeedResult(prompt, concept, text, budget.used, found, {"margin": margin, "transformations": path})


def run_text_attack(target: Target, seeds: Sequence[tuple[str, str]], cfg: TextAttackConfig, image_seed: int = 0,
                    progress: bool = True) -> list[SeedResult]:
    """The attack of every (seed prompt, concept) pair; the i-th is drawn at ``image_seed + i``."""
    transforms = transformations()
    return [attack_prompt(target, p, c, cfg, image_seed + i, transforms, i)
            for i, (p, c) in enumerate(tqdm(seeds, desc="text attack", disable=not progress))]
