"""The zoo's shipped text SAE and class concepts on the real MiniLM text encoder.

The classifier is checked as the pipeline runs it (both gates: the prompt's own activations and
its normal form) on the ``evaluate`` prompt family, which selected no feature and set no
threshold, and the ItD edit on the real encoder: flagged prompts lose the concept, others come
out bit-identical. The plural and upper-case forms are regression tests: "sneakers" once scored
just under the sneaker threshold and was drawn as sneakers.
"""

import pytest
import torch

from visionsae.concepts import ConceptClassifier, ConceptSet
from visionsae.control.itd import ItDEraser
from visionsae.sae import SparseAutoencoder
from visionsae.sources.base import output_tensor
from visionsae.zoo import CLASS_NAMES, zoo_dir
from visionsae.zoo.prompt_families import basic_forms, concept_prompts, near_miss_prompts
from visionsae.zoo.training.text_sae import HOOK, SAE_DIR, text_source


@pytest.fixture(scope="module")
def zoo_text():
    torch.set_num_threads(1)
    sae = SparseAutoencoder.from_pretrained(zoo_dir() / SAE_DIR)
    concepts = ConceptSet.load(zoo_dir() / SAE_DIR / "concepts.json")
    return sae, concepts, text_source()


def _ids(tok, prompts):
    return tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids


def flags(zoo_text, prompts, names=None):
    """``{concept: [flagged per prompt]}`` as the ItD eraser decides them (both gates)."""
    sae, concepts, src = zoo_text
    decisions = ItDEraser(src.model, sae, concepts, names, tokenizer=src.tokenizer).flag(prompts)
    return {n: [d[n]["flagged"] for d in decisions] for n in (names or concepts.names())}


def test_shipped_concept_set_matches_the_shipped_sae(zoo_text):
    sae, concepts, src = zoo_text
    concepts.check_sae(sae)
    assert concepts.hook == HOOK and sorted(concepts.names()) == sorted(CLASS_NAMES)
    for c in concepts.concepts.values():
        assert c.threshold is not None and c.features and c.weights and c.vocabulary
        assert c.calibration["heldout_prompts"] > 0 and c.calibration["recall"] > 0


@pytest.mark.parametrize("name", ["sneaker", "bag"])
def test_plural_and_case_forms_are_flagged(zoo_text, name):
    singular, plural = {"sneaker": ("sneaker", "sneakers"), "bag": ("bag", "bags")}[name]
    prompts = [plural, f"a photo of {plural}", plural.upper(), f"A PHOTO OF {plural.upper()}", plural.capitalize(),
               f"a photo of a {singular}", singular.upper(), f"some {plural} on a white background",
               f"a sunny day at the beach and a pile of {plural} next to the towels"]
    got = flags(zoo_text, prompts, [name])[name]
    assert all(got), [p for p, f in zip(prompts, got) if not f]


def test_basic_forms_of_every_class_are_flagged_out_of_sample(zoo_text):
    """Singular, plural, upper case, with and without article, in long scenes: all flagged, on
    the evaluate family's templates and scenes."""
    missed = []
    for label, name in enumerate(CLASS_NAMES):
        prompts = basic_forms(label, "evaluate")
        got = flags(zoo_text, prompts, [name])[name]
        missed += [(name, p) for p, f in zip(prompts, got) if not f]
    assert not missed, missed


def test_typos_and_near_misses_out_of_sample(zoo_text):
    for label in (CLASS_NAMES.index("sneaker"), CLASS_NAMES.index("bag")):
        name = CLASS_NAMES[label]
        typos = concept_prompts(label, "evaluate")["typos"]
        assert sum(flags(zoo_text, typos, [name])[name]) >= 0.95 * len(typos)
        near = near_miss_prompts(label, "evaluate")
        assert sum(flags(zoo_text, near, [name])[name]) <= max(1, 0.05 * len(near)), near


def test_misspelling_is_read_in_its_normal_form(zoo_text):
    sae, concepts, src = zoo_text
    eraser = ItDEraser(src.model, sae, concepts, ["sneaker"], tokenizer=src.tokenizer)
    typo, dog = eraser.flag(["a photo of a snaeker", "a photo of a dog"])
    assert typo["sneaker"]["flagged"] and typo["read_as"] == "a photo of a sneaker"
    assert not dog["sneaker"]["flagged"] and "read_as" not in dog


def test_erasing_on_the_real_encoder(zoo_text):
    sae, concepts, src = zoo_text
    encoder, tok = src.model, src.tokenizer
    prompts = ["a mobile phone photo of sneakers", "a polaroid of a pair of running trainers", "a polaroid of a canvas tote",
               "a red car on a street"]
    ids = _ids(tok, prompts)
    with torch.no_grad():
        before = encoder(ids)[0]
        eraser = ItDEraser(encoder, sae, concepts, ["sneaker"], tokenizer=tok)
        with eraser:
            after = encoder(ids)[0]
        decisions = eraser.pop_decisions()
    assert [d["sneaker"]["flagged"] for d in decisions] == [True, True, False, False]
    assert not torch.equal(after[0], before[0]) and not torch.equal(after[1], before[1])
    assert torch.equal(after[2], before[2]) and torch.equal(after[3], before[3])
    # re-reading the edited layer, the sneaker concept no longer fires
    captured = {}
    with eraser, torch.no_grad():  # a hook registered after the eraser's sees the edited output
        handle = encoder.get_submodule(concepts.hook).register_forward_hook(
            lambda m, i, o: captured.setdefault("h", output_tensor(o)))
        encoder(ids[:2])
        handle.remove()
    eraser.pop_decisions()
    _, flagged = ConceptClassifier(sae, concepts, ["sneaker"]).classify(captured["h"])
    assert not flagged.any()


def test_homoglyphs_the_tokenizer_drops_are_read_from_the_typed_prompt(zoo_text):
    """MiniLM's WordPiece turns "sneakerѕ" (Cyrillic ѕ) into [UNK]: the eraser reads the typed prompt."""
    got = flags(zoo_text, ["a LOOKBOOK photo of sneakerѕ", "a polaroid of a bаg", "a photo of a café table"],
                ["sneaker", "bag"])
    assert got == {"sneaker": [True, False, False], "bag": [False, True, False]}
