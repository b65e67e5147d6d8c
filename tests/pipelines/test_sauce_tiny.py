"""The drop-in SAUCE LLaVA on a tiny random LlavaForConditionalGeneration (the full-size code path)."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration

from visionsae.pipelines.sauce import SAUCELlavaForConditionalGeneration
from visionsae.concepts import Concept, ConceptSet, sae_fingerprint
from visionsae.sae import SAEConfig, SparseAutoencoder

HOOK = "model.language_model.layers.1"


def _inputs(processor, n: int = 2):
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (28, 28, 3), dtype=np.uint8)) for i in range(n)]
    batch = processor(images=images, text=[prompt] * n, return_tensors="pt", padding=True)
    batch.pop("token_type_ids", None)
    return batch


@pytest.fixture(scope="module")
def saved(tiny_llava, tmp_path_factory):
    """The tiny model, an SAE on its last layer and a two-concept set, all saved to disk."""
    model, processor = tiny_llava
    root = tmp_path_factory.mktemp("sauce")
    model.save_pretrained(root / "llava")
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=32, n_latents=64, k=4, hook=HOOK)).eval()
    sae.save_pretrained(root / "sae")
    sae = SparseAutoencoder.from_pretrained(root / "sae")
    cs = ConceptSet(HOOK, sae_fingerprint(sae), 64, {"a": Concept("a", list(range(40)), [1.0] * 40),
                                                    "b": Concept("b", list(range(40, 64)), [1.0] * 24)})
    cs.save(root / "concepts.json")
    return root, processor


def test_from_pretrained_generates_with_the_parents_signature(saved):
    root, processor = saved
    stock = LlavaForConditionalGeneration.from_pretrained(root / "llava").eval()
    model = SAUCELlavaForConditionalGeneration.from_pretrained(root / "llava", sae=root / "sae", concepts=root / "concepts.json",
                                                              unlearn=["a", "b"], tokens="all", mode="scale", value=-6.0).eval()
    assert inspect.signature(type(model).generate) == inspect.signature(LlavaForConditionalGeneration.generate)
    assert model.unlearned == ["a", "b"] and model.unlearning_enabled
    inputs = _inputs(processor)
    expected = stock.generate(**inputs, max_new_tokens=5, do_sample=False)
    edited = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert edited.shape == expected.shape and not torch.equal(edited, expected)
    model.unlearning_enabled = False  # stock answers from the same object, nothing reloaded
    assert torch.equal(model.generate(**inputs, max_new_tokens=5, do_sample=False), expected)
    model.unlearning_enabled = True
    assert torch.equal(model.generate(**inputs, max_new_tokens=5, do_sample=False), edited)
    model.remove_unlearning()
    assert torch.equal(model.generate(**inputs, max_new_tokens=5, do_sample=False), expected)
    with pytest.raises(ValueError, match="both sae= and concepts="):
        SAUCELlavaForConditionalGeneration.from_pretrained(root / "llava", sae=root / "sae")


def test_wrap_shares_modules_and_leaves_the_original_model_stock(saved, tiny_llava):
    root, processor = saved
    model, _ = tiny_llava
    inputs = _inputs(processor)
    with torch.no_grad():
        expected = model(**inputs).logits
    wrapped = SAUCELlavaForConditionalGeneration.wrap(model, root / "sae", root / "concepts.json", ["a"], tokens="image",
                                                      mode="scale", value=-6.0)
    assert wrapped.model is model.model and wrapped.lm_head is model.lm_head  # nothing copied
    assert not any(p.is_meta for p in wrapped.parameters())
    with torch.no_grad():
        edited = wrapped(**inputs).logits
        after = model(**inputs).logits  # the same layers, called through the original object
    assert not torch.allclose(edited, expected)
    assert torch.equal(after, expected)
    assert torch.equal(wrapped.generate(**inputs, max_new_tokens=3, do_sample=False)[:, :-3], inputs["input_ids"])
    wrapped.remove_unlearning()
    with pytest.raises(TypeError, match="LlavaForConditionalGeneration"):
        SAUCELlavaForConditionalGeneration.wrap(torch.nn.Linear(2, 2), root / "sae", root / "concepts.json")


def test_save_pretrained_keeps_the_unlearning_and_loads_as_stock_llava(saved, tmp_path):
    root, processor = saved
    model = SAUCELlavaForConditionalGeneration.from_pretrained(root / "llava", sae=root / "sae", concepts=root / "concepts.json",
                                                              unlearn=["b"], tokens="all", mode="scale", value=-6.0).eval()
    inputs = _inputs(processor)
    edited = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["architectures"] == ["LlavaForConditionalGeneration"]
    back = SAUCELlavaForConditionalGeneration.from_pretrained(tmp_path / "m").eval()
    assert back.unlearned == ["b"] and back.unlearning_enabled
    assert back._unlearner.settings == model._unlearner.settings
    assert torch.equal(back.generate(**inputs, max_new_tokens=5, do_sample=False), edited)
    stock = LlavaForConditionalGeneration.from_pretrained(tmp_path / "m").eval()
    assert type(stock) is LlavaForConditionalGeneration
    assert torch.equal(stock.generate(**inputs, max_new_tokens=5, do_sample=False),
                       LlavaForConditionalGeneration.from_pretrained(root / "llava").eval().generate(
                           **inputs, max_new_tokens=5, do_sample=False))
    back.remove_unlearning()
    back.save_pretrained(tmp_path / "m")  # saved without unlearning: none comes back
    assert not (tmp_path / "m" / "sauce").exists()
    assert SAUCELlavaForConditionalGeneration.from_pretrained(tmp_path / "m").unlearned == []


def test_gradients_reach_the_layers_below_the_unlearning_edit(saved):
    """Attribution and fine-tuning through an unlearned model: with the edit firing, every
    parameter that gets a gradient in the stock model gets one, layer 0 (below the hooked
    layer 1) and the vision tower included, and the edit changes those gradients."""
    root, processor = saved
    stock = LlavaForConditionalGeneration.from_pretrained(root / "llava").eval()
    model = SAUCELlavaForConditionalGeneration.from_pretrained(root / "llava", sae=root / "sae", concepts=root / "concepts.json",
                                                              unlearn=["a", "b"], tokens="all", mode="scale", value=-6.0).eval()
    inputs = _inputs(processor)

    def grads(m):
        m.zero_grad(set_to_none=True)
        m(**inputs, labels=inputs["input_ids"]).loss.backward()
        return {n: p.grad for n, p in m.named_parameters() if p.grad is not None}

    ref, ours = grads(stock), grads(model)
    assert any(bool(e.record.edited_tokens.any()) for e in model._unlearner.edits)  # the edit fired
    assert set(ours) == set(ref)
    below = [n for n in ref if ".layers.0." in n and "language_model" in n]
    assert below and all(float(ours[n].abs().sum()) > 0 for n in below)
    assert any(not torch.allclose(ours[n], ref[n]) for n in below)
    assert any("vision_tower" in n for n in ours)
