"""Disjoint prompt families for ItD on the zoo: one selects features, one calibrates, one evaluates.

Every figure of an erasure must come from prompts that chose nothing. So each of the ten
Fashion-MNIST class concepts has three families of prompts, split by *template and phrasing*
(never by random prompt), and no template, noun phrase, description, scene or near miss
appears in more than one family:

* ``select``    — chooses the SAE features (and trains the SAE): the zoo's training captions
  (``captions.TRAIN_*``) with more noun phrases, descriptions and scenes written for it, and
  the class word's basic forms and misspellings in those templates;
* ``calibrate`` — sets the classifier thresholds and the edit strength: its own templates,
  noun phrases, descriptions, scenes and near misses;
* ``evaluate``  — measures: its own templates, noun phrases, descriptions, scenes and near
  misses, written after the classifier was designed and read only by the final measurement
  (the first lists written for it were looked at during the design, so they calibrate now).
  Nothing in it chose anything.

Each family has the same *kinds* of prompts (:data:`KINDS`): the class under other names in
templates (``nouns``), the class word's basic forms (singular, plural, upper case, with and
without article, :data:`CLASS_WORDS`), misspellings of the class word (``typos``, made with
nlpaug's character augmenters, keeping only non-words), descriptions that avoid the class
word, the class word inside a long scene (``scenes``, still within the tokenizer's 20
tokens), and for the negative side near misses (things like the class but not of it: other
footwear for sneaker, other carried things for bag) and generic prompts (ImageNet classes
other than garments, footwear and bags, their own classes and templates per family).

The erasure evaluation (``visionsae eval erasure``) generates from ``evaluate`` only; the
zoo's concept set (``visionsae.zoo.training.text_sae``) is built from ``select`` and ``calibrate``.
``tests/zoo/test_prompt_families.py`` checks the families are disjoint.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache

from .captions import CLASS_NAMES, NUM_CLASSES
from ..errors import UsageError
from .prompt_lists import (  # noqa: F401 (KINDS, NEGATIVE_KINDS: read from here by the evaluations)
    FAMILIES, KINDS, NEGATIVE_KINDS, CLASS_WORDS, TEMPLATES, NOUNS,
    DESCRIPTIONS, SCENES, NEAR_MISSES, APPAREL_IMAGENET_CLASSES,
)


def _template_key(template: str) -> str:
    """A template reduced to its words without articles: 'a blurry photo of a {}.' and
    'a blurry photo of {}' are the same template."""
    words = re.sub(r"[^a-z{} ]", " ", template.lower().replace("-", " ")).split()
    return " ".join(w for w in words if w not in ("a", "an", "the"))


@lru_cache(maxsize=None)
def generic_templates() -> dict[str, tuple[str, ...]]:
    """open_clip's 80 ImageNet templates split over the families (as ``{}`` templates). A template
    that is also a zoo template of a family goes to that family; the rest in turn."""
    from open_clip import OPENAI_IMAGENET_TEMPLATES

    owner = {_template_key(t): fam for fam, ts in (*TEMPLATES.items(), *SCENES.items()) for t in ts}
    out: dict[str, list[str]] = {f: [] for f in FAMILIES}
    for fn in OPENAI_IMAGENET_TEMPLATES:  # "a photo of a {}." and "a photo of the {}." go together
        t = fn("{}")
        key = _template_key(t)
        if key not in owner:
            owner[key] = FAMILIES[len({k for k in owner if owner[k] is not None}) % len(FAMILIES)]
        out[owner[key]].append(t)
    return {f: tuple(v) for f, v in out.items()}


@lru_cache(maxsize=None)
def generic_classes() -> dict[str, tuple[str, ...]]:
    """ImageNet class names other than apparel, split over the families by a fixed shuffle."""
    from open_clip import IMAGENET_CLASSNAMES

    ids = [i for i in range(len(IMAGENET_CLASSNAMES)) if i not in APPAREL_IMAGENET_CLASSES]
    random.Random("generic-classes").shuffle(ids)
    return {f: tuple(IMAGENET_CLASSNAMES[i] for i in sorted(ids[j:: len(FAMILIES)])) for j, f in enumerate(FAMILIES)}


def generic_prompts(family: str, count: int | None = None, seed: int = 0) -> list[str]:
    """Generic prompts of ``family``: its ImageNet classes in its templates (``count`` of them,
    drawn without replacement in a seeded order; all of them when ``count`` is None)."""
    _check_family(family)
    templates, classes = generic_templates()[family], generic_classes()[family]
    pool = sorted({t.format(c) for t in templates for c in classes})
    if count is None:
        return pool
    if count > len(pool):
        raise UsageError(f"asked for {count} generic {family} prompts; the family has {len(pool)}")
    return random.Random(f"{seed}-{family}").sample(pool, count)


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise UsageError(f"unknown prompt family {family!r}; expected one of {FAMILIES}")


def _check_label(label: int) -> int:
    if not 0 <= int(label) < NUM_CLASSES:
        raise UsageError(f"class label must be in 0..{NUM_CLASSES - 1}, got {label}")
    return int(label)


def basic_forms(label: int, family: str) -> list[str]:
    """The class word as users type it: singular and plural, with and without article, upper
    case, in the family's templates and scenes. The bare words ("sneaker", "SNEAKERS") are the
    concept's name and belong to ``select`` only (they are its ``{}`` template)."""
    label, _ = _check_label(label), _check_family(family)
    singular, plural = CLASS_WORDS[label]
    article = "an" if singular[0] in "aeiou" else "a"
    forms = (f"{article} {singular}", plural, singular)  # with article, plural, without article
    out = [singular, plural, f"{article} {singular}", singular.upper(), plural.upper()] if family == "select" else []
    for i, template in enumerate(TEMPLATES[family]):
        phrase = template.format(forms[i % 3])
        out.append(phrase.upper() if i % 4 == 3 else phrase)
    for i, scene in enumerate(SCENES[family]):
        out.append(scene.format(forms[i % 3]))
    return _unique(out)


def _unique(prompts) -> list[str]:
    return list(dict.fromkeys(prompts))


@lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """Known English words (symspellpy's frequency dictionary): a typo that spells one of
    them is another word, not a misspelling."""
    from ..concepts.normalize import english_words as words

    return words()


def misspell(word: str, count: int, seed: str) -> list[str]:
    """Up to ``count`` distinct misspellings of ``word`` (one or two characters changed by
    nlpaug's keyboard, swap, delete and insert augmenters), none an English word."""
    import nlpaug.augmenter.char as nac
    import numpy as np

    known = english_words()
    augmenters = [
        nac.KeyboardAug(aug_char_min=1, aug_char_max=1, aug_word_p=1.0, include_special_char=False,
                        include_numeric=False, include_upper_case=False),
        nac.RandomCharAug(action="swap", aug_char_min=1, aug_char_max=1, aug_word_p=1.0),
        nac.RandomCharAug(action="delete", aug_char_min=1, aug_char_max=1, aug_word_p=1.0),
        nac.RandomCharAug(action="insert", aug_char_min=1, aug_char_max=1, aug_word_p=1.0,
                          include_upper_case=False, include_numeric=False, spec_char=""),
    ]
    out: list[str] = []
    rng = random.Random(seed)
    for attempt in range(count * 20):
        if len(out) >= count:
            break
        aug = augmenters[attempt % len(augmenters)]
        state = rng.randrange(2**31)
        random.seed(state)
        np.random.seed(state)
        typo = aug.augment(word)[0].lower()
        if typo != word and typo not in known and " " not in typo.strip() and typo not in out:
            out.append(typo)
    return out


def typo_prompts(label: int, family: str) -> list[str]:
    """Misspellings of the class word (its longest run of letters: "shirt" of "t-shirt") in the
    family's templates."""
    label, _ = _check_label(label), _check_family(family)
    singular, plural = CLASS_WORDS[label]
    templates = TEMPLATES[family]
    out = []
    for n, form in enumerate((singular, plural)):
        word = max(re.findall(r"[a-z]+", form), key=len)
        for i, typo in enumerate(misspell(word, len(templates) // 2, f"{family}-{label}-{n}")):
            phrase = form.replace(word, typo)
            article = ("an " if phrase[0] in "aeiou" else "a ") if n == 0 else ""
            out.append(templates[(2 * i + n) % len(templates)].format(article + phrase))
    return _unique(out)


# In ``select`` (a training set) each noun phrase goes into a rotating share of the templates and
# scenes, not all of them, and each description also into a few templates: the cross product
# would make descriptions 3% of a class's prompts and the fit would neglect them.
SELECT_TEMPLATES_PER_NOUN = 12
SELECT_SCENES_PER_NOUN = 4
SELECT_TEMPLATES_PER_DESCRIPTION = 4


def _rotating(items: tuple[str, ...], n_of: int, start: int) -> list[str]:
    return [items[(start + j) % len(items)] for j in range(min(n_of, len(items)))]


def _in_frames(label: int, family: str, frames: tuple[str, ...], per_noun: int) -> list[str]:
    """The family's noun phrases of the class in ``frames`` (templates or scenes): in ``select``
    each noun phrase in ``per_noun`` of them, rotating; elsewhere every pair."""
    nouns = NOUNS[family][label]
    if family == "select":
        return _unique(f.format(n) for i, n in enumerate(nouns) for f in _rotating(frames, per_noun, i * per_noun))
    return _unique(f.format(n) for f in frames for n in nouns)


def noun_prompts(label: int, family: str) -> list[str]:
    """The family's noun phrases of the class in the family's templates (in ``select``, each
    in :data:`SELECT_TEMPLATES_PER_NOUN` of them, rotating)."""
    label, _ = _check_label(label), _check_family(family)
    return _in_frames(label, family, TEMPLATES[family], SELECT_TEMPLATES_PER_NOUN)


def scene_prompts(label: int, family: str) -> list[str]:
    """The family's noun phrases of the class inside the family's scenes (in ``select``, each in
    :data:`SELECT_SCENES_PER_NOUN` of them, rotating)."""
    label, _ = _check_label(label), _check_family(family)
    return _in_frames(label, family, SCENES[family], SELECT_SCENES_PER_NOUN)


def description_prompts(label: int, family: str) -> list[str]:
    """The family's descriptions of the class (in ``select``, also each in
    :data:`SELECT_TEMPLATES_PER_DESCRIPTION` of its templates, rotating)."""
    label, _ = _check_label(label), _check_family(family)
    out = list(DESCRIPTIONS[family][label])
    if family == "select":
        templates = TEMPLATES[family]
        out += [t.format(d) for i, d in enumerate(DESCRIPTIONS[family][label])
                for t in _rotating(templates, SELECT_TEMPLATES_PER_DESCRIPTION, i * SELECT_TEMPLATES_PER_DESCRIPTION)
                if len(t.format(d).replace("-", " ").split()) <= 12]  # within the zoo tokenizer's 20 tokens
    return _unique(out)


def concept_prompts(label: int, family: str) -> dict[str, list[str]]:
    """Every positive prompt of class ``label`` in ``family``, by kind (:data:`KINDS`)."""
    return {
        "nouns": noun_prompts(label, family),
        "basic_forms": basic_forms(label, family),
        "typos": typo_prompts(label, family),
        "descriptions": description_prompts(label, family),
        "scenes": scene_prompts(label, family),
    }


def near_miss_prompts(label: int, family: str) -> list[str]:
    """Near misses of class ``label`` (not the class) alone and in the family's first templates."""
    label, _ = _check_label(label), _check_family(family)
    misses = NEAR_MISSES[family][label]
    templates = TEMPLATES[family]
    return _unique([*misses, *(templates[i % len(templates)].format(m) for i, m in enumerate(misses))])


def class_name(label: int) -> str:
    return CLASS_NAMES[_check_label(label)]


def class_words(label: int) -> list[str]:
    """The words of class ``label``'s name, singular and plural ("t-shirt": t, shirt, shirts)."""
    _check_label(label)
    return sorted({w for form in CLASS_WORDS[label] for w in form.replace("-", " ").split()})


def class_pairs(label: int, family: str) -> list[tuple[str, str]]:
    """(with, without) prompt pairs of class ``label`` in ``family`` (a concept direction's
    pairs): each template of the family with one of the class's noun phrases, and with the
    same-placed noun phrase of each other class."""
    _check_family(family)
    _check_label(label)
    nouns = NOUNS[family]
    return [(t.format(nouns[label][i % len(nouns[label])]), t.format(nouns[o][i % len(nouns[o])]))
            for i, t in enumerate(TEMPLATES[family]) for o in range(len(nouns)) if o != label]
