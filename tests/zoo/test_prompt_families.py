"""The ItD prompt families share nothing: no prompt, template, noun phrase, description, scene or near miss."""

import itertools
import re

import pytest

from visionsae.zoo import prompt_families as pf
from visionsae.zoo.captions import NUM_CLASSES


def _family_prompts(family):
    out = set()
    for c in range(NUM_CLASSES):
        for ps in pf.concept_prompts(c, family).values():
            out |= set(ps)
        out |= set(pf.near_miss_prompts(c, family))
    return out | set(pf.generic_prompts(family))


@pytest.mark.parametrize("a,b", list(itertools.combinations(pf.FAMILIES, 2)))
def test_families_share_no_prompt_and_no_template(a, b):
    assert not _family_prompts(a) & _family_prompts(b)
    keys = lambda f: {pf._template_key(t) for t in (*pf.TEMPLATES[f], *pf.SCENES[f], *pf.generic_templates()[f])}
    assert not keys(a) & keys(b)
    for table in (pf.NOUNS, pf.DESCRIPTIONS, pf.NEAR_MISSES):
        flat = lambda f: {p for per_class in table[f] for p in per_class}
        assert not flat(a) & flat(b), table
    assert not set(pf.generic_classes()[a]) & set(pf.generic_classes()[b])


def test_descriptions_avoid_the_class_word():
    for family in ("calibrate", "evaluate"):
        for c, words in enumerate(pf.CLASS_WORDS):
            for d in pf.DESCRIPTIONS[family][c]:
                assert not any(re.search(rf"\b{re.escape(w)}\b", d) for w in words), d


def test_typos_are_misspellings_of_the_class_word():
    words = pf.english_words()
    for c, (singular, plural) in enumerate(pf.CLASS_WORDS):
        typos = pf.typo_prompts(c, "evaluate")
        assert len(typos) >= 8
        for p in typos:
            assert not re.search(rf"\b({re.escape(singular)}|{re.escape(plural)})\b", p), p
        word = max(re.findall(r"[a-z]+", singular), key=len)
        assert not words & set(pf.misspell(word, 10, "test"))


def test_basic_forms_cover_plural_upper_case_and_article():
    forms = pf.basic_forms(7, "evaluate")
    assert any("a sneaker" in f for f in forms) and any(" sneakers" in f for f in forms)
    assert any(re.search(r"of sneaker\b", f) for f in forms)  # without article
    assert any("SNEAKER" in f for f in forms)
    assert any(len(p.split()) >= 10 and "sneaker" in p for p in forms)  # inside a long sentence
    assert "sneakers" in pf.basic_forms(7, "select")  # the bare name selects


def test_generic_prompts_hold_no_garment_footwear_or_bag():
    from open_clip import IMAGENET_CLASSNAMES

    apparel = {IMAGENET_CLASSNAMES[i] for i in pf.APPAREL_IMAGENET_CLASSES}
    assert {"sneaker", "sandal", "jeans", "T-shirt", "purse", "backpack"} <= apparel
    for family in pf.FAMILIES:
        assert not apparel & set(pf.generic_classes()[family])


def test_every_prompt_fits_the_zoo_tokenizer():
    from visionsae.zoo.t2i import TOKENIZER_MAX_LENGTH, load_minilm_tokenizer

    tok = load_minilm_tokenizer()
    for family in pf.FAMILIES:
        for c in range(NUM_CLASSES):
            prompts = [p for ps in pf.concept_prompts(c, family).values() for p in ps] + pf.near_miss_prompts(c, family)
            lengths = [len(ids) for ids in tok(prompts).input_ids]
            assert max(lengths) <= TOKENIZER_MAX_LENGTH, prompts[lengths.index(max(lengths))]
