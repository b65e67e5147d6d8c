"""ItD on the trained zoo: a small real sample of `visionsae eval erasure`.

The zoo's text-to-image model draws what its prompts ask for (its judge agrees with the
prompted class on 98% of held-out captions); with ItD erasing a class, the judge must stop
seeing that class in images from the class's prompts of the ``evaluate`` family (which chose
no feature, threshold or strength), while every prompt the classifier does not flag gives the
stock pipeline's image bit for bit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from visionsae.pipelines.itd import ItDStableDiffusionPipeline
from visionsae.eval.erasure import _generate, evaluate, nchw
from visionsae.zoo import CLASS_NAMES, load_fashion_judge, load_fashion_pipeline, zoo_dir
from visionsae.zoo.prompt_families import concept_prompts
from visionsae.zoo.settings import ERASE_MODE, ERASE_VALUE, TEXT_SAE_DIR as SAE_DIR


@pytest.fixture(scope="module")
def zoo():
    torch.set_num_threads(1)
    return load_fashion_pipeline(), load_fashion_judge()


def test_erasing_sneaker_removes_it_and_leaves_other_prompts_pixel_identical(zoo):
    stock, judge = zoo
    sneaker = CLASS_NAMES.index("sneaker")
    kinds = concept_prompts(sneaker, "evaluate")
    targets = kinds["nouns"][::23][:3] + kinds["basic_forms"][1::7][:3] + kinds["descriptions"][:2]
    others = [concept_prompts(c, "evaluate")["nouns"][7] for c in range(len(CLASS_NAMES)) if c != sneaker]
    prompts = targets + others
    seeds = list(range(100, 100 + len(prompts)))
    settings = dict(stock.zoo_settings)

    before, _ = _generate(stock, prompts, seeds, settings)
    itd = ItDStableDiffusionPipeline.wrap(stock, zoo_dir() / SAE_DIR, zoo_dir() / SAE_DIR / "concepts.json",
                                          ["sneaker"], mode=ERASE_MODE, value=ERASE_VALUE)
    after, decisions = _generate(itd, prompts, seeds, settings)

    judged_before = judge.predict(nchw(before)).numpy()
    judged_after = judge.predict(nchw(after)).numpy()
    flagged = np.array([d["sneaker"]["flagged"] for d in decisions])
    n = len(targets)
    # the stock model draws sneakers for these prompts (otherwise the test would prove nothing)
    assert (judged_before[:n] == sneaker).sum() >= n - 1, judged_before[:n]
    assert flagged[:n].sum() >= n - 1, [(p, d["sneaker"]) for p, d in zip(targets, decisions)]
    # erased: at most one of eight sneaker prompts still drawn as a sneaker
    assert (judged_after[:n] == sneaker).sum() <= 1, [CLASS_NAMES[c] for c in judged_after[:n]]
    # every prompt the classifier passes gives the stock image, bit for bit
    assert (~flagged).sum() >= len(others) - 1
    for i in np.flatnonzero(~flagged):
        assert np.array_equal(before[i], after[i]), prompts[i]
    # and the image is what it was: the judge's class is unchanged for the other prompts
    assert np.array_equal(judged_after[n:][~flagged[n:]], judged_before[n:][~flagged[n:]])

    # switched off, the wrapped pipeline is the stock one (same batch: the UNet's own numerics
    # depend on the batch size, ItD's do not)
    itd.itd_enabled = False
    again, _ = _generate(itd, prompts, seeds, settings)
    assert np.array_equal(again, before)


def test_eval_erasure_three_classes_small_sample(tmp_path, zoo):
    report = evaluate([["sneaker", "bag", "trouser"]], per_kind=1, out_dir=tmp_path, seed=1, memory_probe=False,
                      progress=False)
    run = report["runs"][0]
    assert report["family"] == run["family"] == "evaluate" and "evaluate" in report["split"]
    assert run["erased"] == ["sneaker", "bag", "trouser"]
    assert run["target_prompts"] == 15  # three classes, one prompt of each of the five kinds
    # the zoo draws most of these as the class (some evaluate phrasings as other garments)
    drawn = round(run["target_drawn_by_stock"] * 15)
    assert drawn >= 8
    assert run["target_flagged"] >= 13 / 15, run["missed_target_prompts"]
    # of those the stock pipeline draws as an erased class, at most one still is
    assert run["still_drawn_as_erased"] <= 1 / drawn, run["erased_images_judged_as"]
    assert run["unflagged_prompts_pixel_identical"] == 1.0
    assert run["other_prompts_flagged"] <= 2 / 35
    assert run["stock_repeatable_at_same_seed"] is True
    # the classifier alone, every prompt of the family (no images)
    assert report["classifier"]["family"] == "evaluate"
    assert report["classifier"]["recall"]["basic_forms"] == 1.0
    assert json.loads((tmp_path / "erasure.json").read_text())["runs"][0]["erased"] == run["erased"]
    assert (tmp_path / "erase_sneaker_bag_trouser.png").stat().st_size > 0


def test_a_homoglyph_prompt_is_erased_and_other_non_ascii_prompts_are_stock(zoo):
    stock, _ = zoo
    prompts = ["a LOOKBOOK photo of sneakerѕ", "a photo of a café table"]  # Cyrillic ѕ; an accent
    seeds, settings = [5, 6], dict(stock.zoo_settings)
    before, _ = _generate(stock, prompts, seeds, settings)
    itd = ItDStableDiffusionPipeline.wrap(stock, zoo_dir() / SAE_DIR, zoo_dir() / SAE_DIR / "concepts.json",
                                          ["sneaker"], mode=ERASE_MODE, value=ERASE_VALUE)
    after, decisions = _generate(itd, prompts, seeds, settings)
    assert decisions[0]["sneaker"]["flagged"] and decisions[0]["read_as"] == "a lookbook photo of sneakers"
    assert not np.array_equal(before[0], after[0])
    assert not decisions[1]["sneaker"]["flagged"] and np.array_equal(before[1], after[1])
