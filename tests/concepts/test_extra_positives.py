"""Extra positives of a linear concept set (the zoo's hardening prompts) join the fit only: the
read-out learns them, while the concept's vocabulary and the prompts its threshold is set on
stay the same."""

import pytest
import torch

from visionsae.concepts.build import build_linear_concept_set
from visionsae.concepts.linear import LinearConcept, pooled_codes
from visionsae.sae import SparseAutoencoder
from visionsae.zoo import zoo_dir
from visionsae.zoo.prompt_families import concept_prompts, generic_prompts
from visionsae.zoo.training.text_sae import SAE_DIR, text_source

SNEAKER, BAG = 7, 8
# word salad around the class words (in the style of the hardening file's "words" prompts)
EXTRA = ["herald nonsense terrain a pair of trainers", "kicks outta tempted cough gym",
         "borrowing pins uniform running shoes olympic", "laces lift throne goal keyboard sport shoes"]


def _build(sae, src, extra):
    pos = {n: [p for k in ("nouns", "basic_forms") for p in concept_prompts(c, "select")[k]][::4]
           for n, c in (("sneaker", SNEAKER), ("bag", BAG))}
    held = {n: concept_prompts(c, "calibrate")["nouns"][:12] for n, c in (("sneaker", SNEAKER), ("bag", BAG))}
    return build_linear_concept_set(sae, src, pos, generic_prompts("select", 120, seed=0), held,
                                    generic_prompts("calibrate", 120, seed=0), max_fpr=0.05, progress=False,
                                    extra_positives=extra)


@pytest.fixture(scope="module")
def zoo():
    torch.set_num_threads(1)
    return SparseAutoencoder.from_pretrained(zoo_dir() / SAE_DIR), text_source()


def test_extra_positives_join_the_fit_and_nothing_else(zoo):
    sae, src = zoo
    plain, hardened = _build(sae, src, None), _build(sae, src, {"sneaker": EXTRA})
    a, b = plain["sneaker"], hardened["sneaker"]
    assert a.vocabulary == b.vocabulary  # no word of the extra prompts marks the concept
    assert a.calibration["heldout_prompts"] == b.calibration["heldout_prompts"]
    assert b.selection["extra_positives"] == len(EXTRA) and a.selection["extra_positives"] == 0
    assert hardened["bag"].selection["extra_positives"] == 0  # (sneaker's extras are among bag's negatives)
    codes = pooled_codes(sae, src, EXTRA)
    score = lambda c: LinearConcept(c.features, c.weights, c.bias).score(codes)
    assert score(b).mean() > score(a).mean()  # the read-out learnt the extra prompts


def test_extra_positives_of_an_unknown_concept_are_refused(zoo):
    with pytest.raises(ValueError, match="dress"):
        _build(*zoo, {"dress": EXTRA})
