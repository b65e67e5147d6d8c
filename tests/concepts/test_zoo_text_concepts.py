"""The zoo's shipped text SAE and class concepts on the real MiniLM text encoder.

The classifier is checked on held-out captions (templates and descriptions no selection or
calibration saw) and the ItD edit on the real encoder: flagged prompts lose the concept,
others come out bit-identical.
"""

import pytest
import torch

from visionsae.concepts import ConceptClassifier, ConceptSet
from visionsae.concepts.build import score_prompts
from visionsae.control.itd import ItDEraser
from visionsae.sae import SparseAutoencoder
from visionsae.zoo import CLASS_NAMES, zoo_dir
from visionsae.zoo.captions import class_prompts
from visionsae.zoo.text_sae import SAE_DIR, corpus, text_source


@pytest.fixture(scope="module")
def zoo_text():
    sae = SparseAutoencoder.from_pretrained(zoo_dir() / SAE_DIR)
    concepts = ConceptSet.load(zoo_dir() / SAE_DIR / "concepts.json")
    return sae, concepts, text_source()


def test_shipped_concept_set_matches_the_shipped_sae(zoo_text):
    sae, concepts, src = zoo_text
    concepts.check_sae(sae)
    assert concepts.hook == "encoder.layer.3" and sorted(concepts.names()) == sorted(CLASS_NAMES)
    assert all(c.threshold is not None and c.features for c in concepts.concepts.values())


def test_classifier_on_heldout_captions(zoo_text):
    sae, concepts, src = zoo_text
    classifier = ConceptClassifier(sae, concepts)
    groups, thresholds = classifier._groups, classifier._thresholds
    heldout = {c: class_prompts(c, "heldout")[::3] for c in range(10)}
    hits = {c: score_prompts(sae, src, ps, groups) >= thresholds for c, ps in heldout.items()}
    for label in (7, 8, 1, 9):  # sneaker, bag, trouser, ankle boot
        assert hits[label][:, label].float().mean() >= 0.85, (CLASS_NAMES[label], hits[label][:, label])
        # the other classes' prompts are rarely taken for this class (what erasing it would touch)
        wrong = torch.cat([hits[c][:, label] for c in range(10) if c != label]).float().mean()
        assert wrong <= 0.05, (CLASS_NAMES[label], wrong)
    _, imagenet = corpus()
    hits = score_prompts(sae, src, imagenet[2500:2700], groups) >= thresholds
    for label in (7, 8, 1, 9):  # unrelated prompts are rarely flagged
        assert hits[:, label].float().mean() <= 0.05, CLASS_NAMES[label]


def test_erasing_on_the_real_encoder(zoo_text):
    sae, concepts, src = zoo_text
    encoder, tok = src.model, src.tokenizer
    prompts = ["a snapshot of a sneaker", "a thumbnail showing running shoes", "a snapshot of a handbag", "a red car on a street"]
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        before = encoder(ids)[0]
        eraser = ItDEraser(encoder, sae, concepts, ["sneaker"])
        with eraser:
            after = encoder(ids)[0]
        decisions = eraser.pop_decisions()
    assert [d["sneaker"]["flagged"] for d in decisions] == [True, True, False, False]
    assert not torch.equal(after[0], before[0]) and not torch.equal(after[1], before[1])
    assert torch.equal(after[2], before[2]) and torch.equal(after[3], before[3])
    # Re-reading the edited layer, the sneaker concept no longer fires.
    from visionsae.concepts import prompt_activations

    with eraser:
        captured = {}
        layer = encoder.get_submodule("encoder.layer.3")
        handle = layer.register_forward_hook(lambda m, i, o: captured.setdefault("h", o[0] if isinstance(o, tuple) else o))
        encoder(ids[:2])
        handle.remove()
    eraser.pop_decisions()
    h = captured["h"]
    scores = ConceptClassifier(sae, concepts, ["sneaker"]).classify(h)[0][:, 0]
    assert (scores < concepts["sneaker"].threshold).all(), scores


def test_erasure_edits_the_broader_features_only_of_flagged_concepts(zoo_text, tmp_path):
    sae, concepts, src = zoo_text
    sneaker, bag = concepts["sneaker"], concepts["bag"]
    # the erasure covers the classifier's features and those shared with related classes
    assert set(sneaker.features) < set(sneaker.erased)
    cs = concepts.subset(["sneaker", "bag"])
    assert ConceptSet.load(cs.save(tmp_path / "c.json"))["sneaker"].edit_features == sneaker.edit_features
    classifier = ConceptClassifier(sae, cs)
    assert classifier.feature_ids.tolist() == sorted(set(sneaker.erased) | set(bag.erased))
    ids = src.tokenizer(["a photo of a sneaker", "a photo of a handbag", "a red car on a street"], padding="max_length",
                        max_length=src.tokenizer.model_max_length, return_tensors="pt").input_ids
    captured = {}
    layer = src.model.get_submodule(concepts.hook)
    handle = layer.register_forward_hook(lambda m, i, o: captured.setdefault("h", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        src.model(ids)
    handle.remove()
    mask = classifier.gate(captured["h"], sae.encode(captured["h"]))  # [3 prompts, F edit features]
    chosen = [set(classifier.feature_ids[row].tolist()) for row in mask]
    assert chosen == [set(sneaker.erased), set(bag.erased), set()]
