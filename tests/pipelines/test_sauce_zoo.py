"""SAUCE on the trained zoo VQA: a small real sample of `visionsae eval unlearning`.

The shipped layer SAE reconstructs held-out conversations; unlearning "sneaker" through the
drop-in model stops the model naming sneakers on sneaker test images, while the other
classes' answers and the footwear question on them stay as they were.
"""

from __future__ import annotations

import json

import pytest
import torch

from visionsae.pipelines.sauce import SAUCELlavaForConditionalGeneration
from visionsae.concepts import ConceptSet
from visionsae.eval.unlearning import category_questions, eval_images, footwear_question
from visionsae.sae import SparseAutoencoder
from visionsae.zoo import CLASS_NAMES, load_fashion_vqa, zoo_dir
from visionsae.zoo.vqa import FashionVQA
from visionsae.zoo.settings import UNLEARN_MODE, UNLEARN_TOKENS, UNLEARN_VALUE, VQA_SAE_DIR as SAE_DIR
from visionsae.zoo.training.vqa_sae import collect, conversations, fvu_by_kind

PER_CLASS = 20
HELDOUT_FVU_BAR = 0.02  # measured 0.0048 over 2000 held-out conversations (training.json)


@pytest.fixture(scope="module")
def zoo():
    torch.set_num_threads(1)
    folder = zoo_dir() / SAE_DIR
    return load_fashion_vqa(), SparseAutoencoder.from_pretrained(folder), ConceptSet.load(folder / "concepts.json")


def test_shipped_sae_is_fast_trained_and_reconstructs_heldout_conversations(zoo):
    vqa, sae, concepts = zoo
    concepts.check_sae(sae)
    assert sae.cfg.hook == concepts.hook == "model.language_model.layers.2"
    assert sae.cfg.extra["training"] == "fast"
    summary = json.loads((zoo_dir() / SAE_DIR / "training.json").read_text())
    equal = summary["heldout_fvu_equal_terms"]  # both variants from one store, every token kind, per kind scored
    assert set(equal["fast"]) == set(equal["shuffled"]) == {"all", "image", "text", "special"}
    rows = collect(vqa.model, vqa.processor, *conversations("test", 64, seed=7), progress=False)
    fvu = fvu_by_kind(sae, rows)
    assert fvu["all"] < HELDOUT_FVU_BAR, fvu
    assert set(CLASS_NAMES) == set(concepts.names())


def test_unlearning_sneaker_on_real_test_images(zoo):
    vqa, sae, concepts = zoo
    images, labels = eval_images(PER_CLASS)
    names = [CLASS_NAMES[c] for c in labels]
    questions = category_questions(len(images))
    stock = vqa.ask(images, questions)
    stock_feet = vqa.ask(images, footwear_question())
    model = SAUCELlavaForConditionalGeneration.wrap(vqa.model, sae, concepts, ["sneaker"], tokens=UNLEARN_TOKENS,
                                                    mode=UNLEARN_MODE, value=UNLEARN_VALUE)
    unlearned = FashionVQA(model, vqa.processor)
    answers = unlearned.ask(images, questions)
    feet = unlearned.ask(images, footwear_question())
    target = [n == "sneaker" for n in names]
    target_acc = sum(a == "sneaker" for a, t in zip(answers, target) if t) / sum(target)
    assert sum(a == "sneaker" for a, t in zip(stock, target) if t) / sum(target) >= 0.9  # the model knew them
    assert target_acc <= 0.10
    assert not any("sneaker" in a for a in answers)
    other = [not t for t in target]
    n_other = sum(other)
    stock_acc = sum(a == n for a, n, o in zip(stock, names, other) if o) / n_other
    acc = sum(a == n for a, n, o in zip(answers, names, other) if o) / n_other
    assert acc >= stock_acc - 0.03, (stock_acc, acc)  # measured: +0.8 points on 100 images per class
    changed = sum(a != b for a, b, o in zip(feet, stock_feet, other) if o) / n_other
    assert changed <= 0.03, changed
    model.unlearning_enabled = False
    assert unlearned.ask(images[:32], questions[:32]) == stock[:32]


def test_calibration_picks_a_setting_that_spares_other_answers(zoo):
    """Calibrating sneaker on training images: its features scaled by -4 change the answers
    about other images, so the calibration must pass that over for the milder -0.5."""
    import copy

    from visionsae.control.sauce import calibrate_unlearning
    from visionsae.zoo import captions
    from visionsae.zoo.data import load_fashion_mnist
    from visionsae.zoo.vqa import fashion_images_to_pil

    vqa, sae, shipped = zoo
    concepts = copy.deepcopy(shipped)
    images, labels = load_fashion_mnist("train")
    pick = lambda c, n: fashion_images_to_pil(images[(labels == c).nonzero().squeeze(-1)[-n:]])  # noqa: E731
    sneakers = pick(7, 16)
    others = [im for c in (5, 9, 0, 8) for im in pick(c, 6)]
    cat_q = captions.TRAIN_CATEGORY_QUESTIONS
    foot_q = captions.YES_NO_ATTRIBUTES["footwear"][1][0]
    result = calibrate_unlearning(vqa.model, sae, concepts, "sneaker", vqa.ask, sneakers, [cat_q[0]] * 16,
                                  others + others, [cat_q[0]] * len(others) + [foot_q] * len(others),
                                  feature_counts=(4,), values=(-0.5, -4.0), max_changed=0.05)
    by_value = {t["value"]: t for t in result["trials"]}
    assert by_value[-0.5]["named"] <= 0.05 and by_value[-0.5]["passes"]
    assert by_value[-4.0]["others_changed"] > by_value[-0.5]["others_changed"]
    assert result["met"] and result["value"] == -0.5 and result["features"] == 4
    assert concepts["sneaker"].features == shipped["sneaker"].features[:4]
    assert concepts["sneaker"].calibration is result
