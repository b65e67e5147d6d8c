"""The attack success rate counts only prompts the stock pipeline draws as the concept, and the
attacks' seed prompts come from the evaluate prompt family only."""

from __future__ import annotations

import pytest

from visionsae.attack import Budget, BudgetSpent, SeedResult, attack_success_rate, judge_results
from visionsae.errors import UsageError
from visionsae.eval.attack import seed_prompts
from visionsae.zoo import CLASS_NAMES
from visionsae.zoo.prompt_families import concept_prompts


def test_asr_counts_only_prompts_the_stock_pipeline_draws():
    stock = [True, True, False, False, True]
    erased = [True, False, True, True, False]  # the two False-stock prompts drawn by the erased one do not count
    out = attack_success_rate(stock, erased)
    assert out == {"asr": 1 / 3, "successes": 1, "counted": 3, "prompts": 5}
    assert attack_success_rate([False, False], [True, True])["asr"] is None  # nothing counted: no figure, not 0
    with pytest.raises(ValueError, match="2 stock judgements but 1"):
        attack_success_rate([True, True], [True])


def test_judged_on_the_zoo_only_prompts_drawn_as_the_concept_count(sneaker_target):
    # a dress prompt is not drawn as a sneaker by the stock pipeline: it cannot count either way;
    # the unflagged plain prompt of another class passes the eraser, so both images are the same
    results = [SeedResult("a photo of a dress", "sneaker", "a photo of a dress", 0, False),
               SeedResult("a photo of a sneaker", "sneaker", "a photo of a sneaker", 0, False)]
    out = judge_results(sneaker_target, results, seed=3)
    rows = out["attacks"]
    assert rows[0]["stock_draws_concept"] is False and rows[0]["flagged"] is False
    assert rows[1]["stock_draws_concept"] is True and rows[1]["flagged"] is True
    assert out["counted"] == 1 and out["prompts"] == 2
    assert out["asr"] == float(rows[1]["erased_draws_concept"])


def test_budget_refuses_queries_past_its_limit():
    b = Budget(3)
    b.spend(2)
    with pytest.raises(BudgetSpent):
        b.spend(2)
    assert b.used == 2 and b.left == 1


def test_seed_prompts_are_from_the_evaluate_family_only_and_seeded():
    seeds = seed_prompts(["sneaker", "bag"], 7, seed=0)
    assert seeds == seed_prompts(["sneaker", "bag"], 7, seed=0)
    assert [c for _, c in seeds] == ["sneaker"] * 7 + ["bag"] * 7
    for name in ("sneaker", "bag"):
        label = CLASS_NAMES.index(name)
        evaluate = {p for ps in concept_prompts(label, "evaluate").values() for p in ps}
        others = {p for fam in ("select", "calibrate") for ps in concept_prompts(label, fam).values() for p in ps}
        mine = [p for p, c in seeds if c == name]
        assert set(mine) <= evaluate and not set(mine) & others


def test_configs_refuse_bad_budgets():
    from visionsae.attack.concept_vector import ConceptVectorConfig
    from visionsae.attack.text import TextAttackConfig
    from visionsae.attack.whitebox import WhiteBoxConfig

    for cfg in (TextAttackConfig, WhiteBoxConfig, ConceptVectorConfig):
        with pytest.raises(UsageError, match="--budget must be a positive integer, got 0"):
            cfg(budget=0)


def test_several_images_per_prompt_decide_by_majority_at_their_seeds(sneaker_target):
    import dataclasses

    from visionsae.attack.common import SEED_STRIDE

    prompts = ["a photo of a sneaker", "a photo of a dress", "a scan of a running shoe", "a photo of a goldfish"]
    five = dataclasses.replace(sneaker_target, images_per_prompt=5)
    drawn, decisions = five.draws(five.erased, prompts, [7, 8, 9, 10], "sneaker")
    assert len(decisions) == len(prompts)  # one decision a prompt, not one an image
    for p, s, d in zip(prompts, [7, 8, 9, 10], drawn):
        single = [sneaker_target.draws(sneaker_target.erased, [p], [s + j * SEED_STRIDE], "sneaker")[0][0] for j in range(5)]
        assert d == (sum(single) >= 3), p
    # one image a prompt is the one-image definition, at the prompt's own seed
    assert sneaker_target.draws(sneaker_target.stock, prompts[:1], [7], "sneaker")[0] == \
        dataclasses.replace(sneaker_target, images_per_prompt=1).draws(sneaker_target.stock, prompts[:1], [7], "sneaker")[0]
    with pytest.raises(UsageError, match="images_per_prompt"):
        dataclasses.replace(sneaker_target, images_per_prompt=0)


def test_chance_draws_prompts_of_no_class_as_the_pipeline_does(sneaker_target):
    from visionsae.eval.attack import chance
    from visionsae.zoo.prompt_families import generic_prompts

    out = chance(sneaker_target, "evaluate", count=24, seed=0)
    assert out["prompts"] == 24 and out["family"] == "evaluate"
    level = out["per_concept"]["sneaker"]
    assert level["flagged"] <= 0.05  # generic prompts pass the eraser (its false flags on them are ~0.2%)
    drawn, _ = sneaker_target.draws(sneaker_target.erased, generic_prompts("evaluate", 24, seed=0), list(range(24)), "sneaker")
    assert level["drawn_as_concept"] == sum(drawn) / 24
