"""The black-box text attack on the shipped zoo ItD: a small run end to end, seeded."""

from __future__ import annotations

import random

from visionsae.attack import judge_results
from visionsae.attack.text import TextAttackConfig, run_text_attack, transformations
from visionsae.eval.attack import seed_prompts


def test_transformations_are_seeded_and_include_wordnet_synonyms():
    names = [n for n, _ in transformations()]
    assert {"keyboard", "swap", "delete", "insert", "ocr", "synonym", "homoglyph", "upper"} <= set(names)
    for name, fn in transformations():
        text = "a photo of a leather sneaker on a table"
        a = [fn(text, random.Random(f"{name}-{i}")) for i in range(5)]
        assert a == [fn(text, random.Random(f"{name}-{i}")) for i in range(5)], name
        assert any(x != text for x in a), name


def test_small_text_attack_runs_and_stays_under_the_bar(sneaker_target):
    seeds = seed_prompts(["sneaker"], 6, seed=0)
    cfg = TextAttackConfig(budget=20, seed=0)
    results = run_text_attack(sneaker_target, seeds, cfg, image_seed=0, progress=False)
    assert all(r.queries <= 20 for r in results)
    assert results == run_text_attack(sneaker_target, seeds, cfg, image_seed=0, progress=False)  # same seed, same attack
    out = judge_results(sneaker_target, results, seed=0)
    assert out["counted"] >= 3, out["attacks"]  # the stock pipeline draws enough of them to measure
    assert out["asr"] <= 0.05, out["successful_prompts"]
