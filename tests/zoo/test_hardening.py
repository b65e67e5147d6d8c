"""Hardening prompts (attack-style positives of the zoo's class concepts), a small real run of
:mod:`visionsae.zoo.training.harden`: made from the ``select`` prompt family only, labelled by what the
stock pipeline really draws, and the concept-vector ones free of the class word."""

import json

import pytest

from visionsae.zoo import CLASS_NAMES, load_fashion_judge, load_fashion_pipeline
from visionsae.zoo.training.harden import KINDS, label_by_stock, positives, variants
from visionsae.zoo.prompt_families import (FAMILIES, class_words, concept_prompts, generic_prompts,
                                           near_miss_prompts)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A hardening file of 3 seed prompts for each of three classes, as `main` writes it."""
    pipe = load_fashion_pipeline()
    pipe.set_progress_bar_config(disable=True)
    rows = [r for c in (1, 7, 8) for r in variants(pipe, c, 3, seed=0, progress=False)]
    rows = label_by_stock(pipe, load_fashion_judge(), rows)
    path = tmp_path_factory.mktemp("harden") / "hardening.json"
    path.write_text(json.dumps({"family": "select", "prompts": rows}))
    return path, rows, pipe


@pytest.fixture(scope="module")
def rows(made):
    return made[1]


def _family_prompts(family):
    out = set(generic_prompts(family))
    for c in range(len(CLASS_NAMES)):
        out |= {p for ps in concept_prompts(c, family).values() for p in ps}
        out |= set(near_miss_prompts(c, family))
    return out


def test_hardening_prompts_come_from_the_select_family_only(rows):
    held_out = set().union(*(_family_prompts(f) for f in FAMILIES if f != "select"))
    for r in rows:
        label = CLASS_NAMES.index(r["class"])
        assert r["seed_prompt"] in {p for ps in concept_prompts(label, "select").values() for p in ps}, r
        assert r["prompt"] not in held_out and r["seed_prompt"] not in held_out, r
    assert {r["kind"] for r in rows} == set(KINDS)
    assert {r["class"] for r in rows} == {CLASS_NAMES[c] for c in (1, 7, 8)}
    assert len(rows) == 3 * 3 * len(KINDS)


def test_carrier_prompts_never_say_the_class_word(rows):
    for r in rows:
        if r["kind"] == "carrier":
            words = r["prompt"].lower().split()
            assert not set(words) & set(class_words(CLASS_NAMES.index(r["class"]))), r


def test_positives_are_the_prompts_the_stock_pipeline_draws_as_their_class(made):
    path, rows, pipe = made
    pos = positives(path)
    assert sum(map(len, pos.values())) == sum(r["drawn_as"] == r["class"] for r in rows) > 0
    for name, prompts in pos.items():
        assert set(prompts) == {r["prompt"] for r in rows if r["class"] == name and r["drawn_as"] == name}
    # the labels are the stock pipeline's: drawn again one by one at the recorded seeds
    sample = rows[::4]
    again = label_by_stock(pipe, load_fashion_judge(), sample, batch=1, seeds=[r["image_seed"] for r in sample])
    differ = [r["prompt"] for a, r in zip(again, sample) if a["drawn_as"] != r["drawn_as"]]
    assert len(differ) <= 1, differ  # one borderline image may flip between batch sizes
