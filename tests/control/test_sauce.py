"""SAUCE: feature selection scores, the unlearner's token policies and switches, on a tiny LLaVA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from visionsae.concepts import Concept, ConceptSet, sae_fingerprint
from visionsae.control.sauce import SAUCEUnlearner, conversation_maxes, layer_hook, score_features, select_concepts
from visionsae.sae import SAEConfig, SparseAutoencoder

HOOK = "model.language_model.layers.0"


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (28, 28, 3), dtype=np.uint8))


def _prompt(processor, question: str) -> str:
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True)


def _inputs(processor, n: int = 2, question: str = "What is this?"):
    batch = processor(images=[_image(i) for i in range(n)], text=[_prompt(processor, question)] * n, return_tensors="pt",
                      padding=True)
    batch.pop("token_type_ids", None)
    return batch


@pytest.fixture(scope="module")
def sae_and_concepts(tiny_llava):
    model, processor = tiny_llava
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=32, n_latents=64, k=4, hook=HOOK)).eval()
    layer = model.get_submodule(HOOK)
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append((o[0] if isinstance(o, tuple) else o).detach()))
    with torch.no_grad():
        model(**_inputs(processor, 4))
    handle.remove()
    sae.init_from_data_(seen[0].reshape(-1, 32))
    cs = ConceptSet(HOOK, sae_fingerprint(sae), 64, {
        "a": Concept("a", list(range(0, 32)), [1.0] * 32),
        "b": Concept("b", list(range(32, 64)), [1.0] * 32),
    })
    return sae, cs


def _layer_output(model, inputs, edit_owner=None):
    """The hooked layer's output as the rest of the model sees it (after any edit)."""
    captured = []
    layer = model.get_submodule(HOOK)
    handle = layer.register_forward_hook(lambda m, i, o: captured.append((o[0] if isinstance(o, tuple) else o).clone()))
    with torch.no_grad():
        logits = model(**inputs).logits
    handle.remove()
    return captured[0], logits


def test_mean_diff_and_ratio_find_the_planted_concept_latent():
    g = torch.Generator().manual_seed(0)
    others = torch.rand(200, 50, generator=g)
    concept = torch.rand(100, 50, generator=g)
    concept[:, 7] += 3.0  # much stronger on the concept's images
    concept[:, 11] += 1.0
    for method in ("mean_diff", "ratio"):
        ids, scores = score_features(concept, others, method, top_n=2)
        assert ids == [7, 11], method
        assert scores[0] > scores[1] > 0
    ids, _ = score_features(concept, others, "mean_diff", top_n=None, percentile=90)
    assert 7 in ids and len(ids) < 10
    with pytest.raises(ValueError, match="unknown selection method"):
        score_features(concept, others, "median")


def test_each_group_demotes_a_latent_shared_with_one_other_concept():
    g = torch.Generator().manual_seed(1)
    sneaker, sandal, shirt = (torch.rand(100, 20, generator=g) * 0.1 for _ in range(3))
    sneaker[:, 3] += 6.0  # a shoe feature: sneakers and sandals
    sandal[:, 3] += 6.0
    sneaker[:, 5] += 1.0  # sneaker only
    pooled, _ = score_features(sneaker, torch.cat([sandal, shirt]), "mean_diff", top_n=1)
    each, _ = score_features(sneaker, [sandal, shirt], "mean_diff", top_n=1)
    assert pooled == [3]  # half the others lack it, so it beats the sneaker-only latent
    assert each == [5]


def test_layer_hook_finds_layers_across_transformers_layouts(tiny_llava):
    model, _ = tiny_llava
    assert layer_hook(model, HOOK) == HOOK
    assert layer_hook(model, "language_model.model.layers.1") == "model.language_model.layers.1"  # 4.x path
    assert layer_hook(model, layer=-1) == "model.language_model.layers.1"
    with pytest.raises(ValueError, match="out of range"):
        layer_hook(model, layer=7)


def test_image_policy_edits_only_image_tokens_and_switches_off(tiny_llava, sae_and_concepts):
    model, processor = tiny_llava
    sae, cs = sae_and_concepts
    inputs = _inputs(processor)
    base_h, base_logits = _layer_output(model, inputs)
    image = inputs["input_ids"] == model.config.image_token_id
    unlearner = SAUCEUnlearner(model, sae, cs, ["a"], tokens="image", mode="scale", value=-4.0)
    with unlearner:
        h, logits = _layer_output(model, inputs)
        moved = (h - base_h).abs().amax(-1) > 0
        assert moved[image].any()
        assert not moved[~image].any()  # text tokens leave the layer untouched
        assert not torch.allclose(logits, base_logits)
        unlearner.enabled = False
        h_off, logits_off = _layer_output(model, inputs)
        assert torch.equal(h_off, base_h) and torch.equal(logits_off, base_logits)
    assert torch.equal(_layer_output(model, inputs)[1], base_logits)  # detached


def test_all_policy_zero_removes_the_features_wherever_they_fire(tiny_llava, sae_and_concepts):
    model, processor = tiny_llava
    sae, cs = sae_and_concepts
    inputs = _inputs(processor)
    base_h, _ = _layer_output(model, inputs)
    code = sae.encode(base_h)
    ids = torch.tensor(cs["a"].features + cs["b"].features)
    with SAUCEUnlearner(model, sae, cs, ["a", "b"], tokens="all", mode="zero"):
        h, _ = _layer_output(model, inputs)
    fires = (torch.isin(code.indices, ids) & (code.values > 0)).any(-1)
    moved = (h - base_h).abs().amax(-1) > 0
    assert torch.equal(moved, fires)  # only tokens where a chosen feature fires move
    # the reconstruction error is kept: the edit equals minus the chosen features' decoded part
    chosen = code.values * torch.isin(code.indices, ids)
    expected = -(torch.nn.functional.embedding_bag(code.indices.reshape(-1, 4), sae.W_dec, per_sample_weights=chosen.reshape(-1, 4), mode="sum")
                 .reshape(h.shape) / sae.input_scale)
    assert torch.allclose(h - base_h, expected, atol=1e-5)


def test_generation_edits_the_prompt_and_runs_with_the_cache(tiny_llava, sae_and_concepts):
    model, processor = tiny_llava
    sae, cs = sae_and_concepts
    inputs = _inputs(processor)
    stock = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    unlearner = SAUCEUnlearner(model, sae, cs, tokens="image", mode="scale", value=-8.0).attach()
    try:
        edited = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert unlearner.edits[0].record.calls == 4  # prefill + 3 cached steps (no image token after the prompt)
    finally:
        unlearner.detach()
    assert edited.shape == stock.shape and not torch.equal(edited, stock)


def test_errors_name_the_problem(tiny_llava, sae_and_concepts):
    model, processor = tiny_llava
    sae, cs = sae_and_concepts
    with pytest.raises(ValueError, match="zero', 'scale' or 'clamp"):
        SAUCEUnlearner(model, sae, cs, mode="add")
    with pytest.raises(ValueError, match="token scope"):
        SAUCEUnlearner(model, sae, cs, tokens="text")
    with pytest.raises(KeyError, match="unknown concept"):
        SAUCEUnlearner(model, sae, cs, ["c"])
    other = SparseAutoencoder(SAEConfig(d_in=32, n_latents=64, k=4)).eval()
    with pytest.raises(ValueError, match="built for SAE"):
        SAUCEUnlearner(model, other, cs)
    inputs = _inputs(processor)
    embeds = model.get_input_embeddings()(inputs["input_ids"].clamp_max(1000))
    with SAUCEUnlearner(model, sae, cs, tokens="image"), pytest.raises(ValueError, match="input_ids"):
        model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"])


def test_select_concepts_from_images_round_trips_as_json(tiny_llava, sae_and_concepts, tmp_path):
    model, processor = tiny_llava
    sae, _ = sae_and_concepts
    examples = {"noise": [_image(i) for i in range(6)],
                "dark": [Image.new("RGB", (28, 28), (i, i, i)) for i in range(6)]}
    maxes = conversation_maxes(model, processor, sae, examples["dark"], ["What?"] * 6, HOOK, tokens="image")
    assert maxes.shape == (6, 64) and (maxes > 0).any()
    cs = select_concepts(model, processor, sae, examples, ["What is this?", "Describe it."], top_n=3)
    assert cs.hook == HOOK and cs.sae_fingerprint == sae_fingerprint(sae)
    for c in cs.concepts.values():
        assert 1 <= len(c.features) <= 3 and all(0 <= f < 64 for f in c.features)
        assert c.selection["method"] == "sauce_mean_diff" and c.selection["tokens"] == "image"
    loaded = ConceptSet.load(cs.save(tmp_path / "concepts.json"))
    assert loaded.concepts["dark"].features == cs.concepts["dark"].features
    loaded.check_sae(sae)


def test_calibrated_settings_group_concepts_into_edits(tiny_llava, sae_and_concepts):
    import copy

    model, processor = tiny_llava
    sae, cs = sae_and_concepts
    cs = copy.deepcopy(cs)
    cs["a"].calibration = {"mode": "scale", "value": -2.0}
    cs["b"].calibration = {"mode": "scale", "value": -0.5}
    unlearner = SAUCEUnlearner(model, sae, cs, tokens="all", mode=None)
    assert unlearner.settings == {"a": {"mode": "scale", "value": -2.0}, "b": {"mode": "scale", "value": -0.5}}
    assert [e.spec.value for e in unlearner.edits] == [-2.0, -0.5]
    assert [sorted(e._feature_ids.tolist()) for e in unlearner.edits] == [cs["a"].features, cs["b"].features]
    assert len(SAUCEUnlearner(model, sae, cs, tokens="all", mode="zero").edits) == 1  # one setting, one edit
    inputs = _inputs(processor)
    base_h, _ = _layer_output(model, inputs)
    with unlearner:
        h, _ = _layer_output(model, inputs)
    assert not torch.equal(h, base_h)
