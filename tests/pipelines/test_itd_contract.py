"""The ItD pipelines keep their parents' contract (what diffusers' own tests and helpers rely
on): the same signatures, ``encode_prompt`` callable alone with the parent's arguments, the
parent's errors for bad prompt / negative-prompt combinations, and ``save_pretrained``
folders that load back with their erasers (ours) or as the stock pipeline (plain diffusers).
Tiny random SD 1.x / SDXL configs with the real CLIP tokenizer; the 'dog' concept is planted
(see test_itd_tiny)."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from test_itd_tiny import _sae_and_concepts
from tiny_models import tiny_sd
from visionsae.pipelines import ItDStableDiffusionPipeline, ItDStableDiffusionXLPipeline

PAIRS = [(ItDStableDiffusionPipeline, StableDiffusionPipeline), (ItDStableDiffusionXLPipeline, StableDiffusionXLPipeline)]
DOG, CAR = "a photo of a dog", "a red car"


@pytest.fixture(scope="module")
def sd(clip_tok):
    stock = tiny_sd(clip_tok)
    sae, concepts, _ = _sae_and_concepts(stock.text_encoder, clip_tok)
    return stock, ItDStableDiffusionPipeline.wrap(stock, sae, concepts, mode="scale", value=-2.0), sae, concepts


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl):
    stock = tiny_sdxl
    sae1, c1, _ = _sae_and_concepts(stock.text_encoder, stock.tokenizer, seed=1)
    sae2, c2, _ = _sae_and_concepts(stock.text_encoder_2, stock.tokenizer_2, seed=2)
    return stock, ItDStableDiffusionXLPipeline.wrap(stock, sae1, c1, sae2, c2)


def _images(pipe, prompt, **kw):
    kw.setdefault("height", 32)
    kw.setdefault("width", 32)
    return pipe(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="np", **kw).images


@pytest.mark.parametrize("ours, parent", PAIRS, ids=["sd", "sdxl"])
def test_signatures_are_the_parents(ours, parent):
    for name in ("__init__", "__call__", "encode_prompt", "save_pretrained"):
        assert inspect.signature(getattr(ours, name)) == inspect.signature(getattr(parent, name)), name
    assert ours._get_signature_keys(ours) == parent._get_signature_keys(parent)  # what from_pretrained builds from
    # diffusers reads the names encode_prompt returns from its source
    assert inspect.getsource(ours.encode_prompt) == inspect.getsource(parent.encode_prompt)


def test_encode_prompt_alone_positional_and_keyword(sd):
    stock, itd, _, _ = sd
    args = ([DOG, CAR], "cpu", 2, True, ["blurry", "a dog"])
    names = list(inspect.signature(StableDiffusionPipeline.encode_prompt).parameters)[1:]
    positional, keyword = itd.encode_prompt(*args), itd.encode_prompt(**dict(zip(names, args)))
    ref = stock.encode_prompt(*args)
    for a, b in zip(positional, keyword):
        assert torch.equal(a, b)
    assert [d["dog"]["flagged"] for d in itd.concept_decisions] == [True, False]
    pos, neg = positional
    assert pos.shape == ref[0].shape == (4, 77, 32)  # num_images_per_prompt repeats, as the parent does
    assert not torch.equal(pos[:2], ref[0][:2]) and torch.equal(pos[2:], ref[0][2:])  # the dog only
    assert torch.equal(neg, ref[1])  # negative prompts left alone, 'a dog' included
    # without classifier-free guidance the parent returns None for the negative
    alone = itd.encode_prompt(CAR, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    assert alone[1] is None and torch.equal(alone[0], stock.encode_prompt(CAR, "cpu", 1, False)[0])


def test_encode_prompt_on_a_pipeline_of_text_components_only(sd, clip_tok):
    """diffusers' isolation pattern: a pipeline holding only the text encoder and tokenizer
    encodes; one without them generates from the embeddings."""
    stock, itd, sae, concepts = sd
    parts = {k: (v if k in ("text_encoder", "tokenizer") else None) for k, v in stock.components.items()}
    text_only = ItDStableDiffusionPipeline(**parts)
    text_only.set_eraser(sae, concepts, mode="scale", value=-2.0)
    pos, neg = text_only.encode_prompt(DOG, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    ref = itd.encode_prompt(DOG, "cpu", 1, True)
    assert torch.equal(pos, ref[0]) and torch.equal(neg, ref[1])
    no_text = StableDiffusionPipeline(**{k: (None if k in ("text_encoder", "tokenizer") else v)
                                         for k, v in stock.components.items()})
    gen = torch.Generator().manual_seed(3)
    out = no_text(prompt_embeds=pos, negative_prompt_embeds=neg, num_inference_steps=2, generator=gen, output_type="np")
    assert (out.images == _images(itd, DOG)).all()


def _outcome(fn):
    try:
        fn()
    except Exception as exc:  # the parent's error, to compare with ours
        return type(exc), str(exc)
    return None


BAD_SD = [
    dict(prompt=[DOG, CAR], negative_prompt="blurry"),  # a list prompt, a string negative
    dict(prompt=DOG, negative_prompt=["blurry", "dark"]),
    dict(prompt=[DOG, CAR], negative_prompt=["blurry"]),  # batch sizes differ
    dict(prompt=[DOG, CAR], negative_prompt=["blurry", "dark"]),  # fine, for contrast
    dict(prompt=DOG, prompt_embeds=torch.zeros(1, 77, 32)),
    dict(prompt=None),
    dict(prompt=3),
]


@pytest.mark.parametrize("kwargs", BAD_SD, ids=lambda kw: ",".join(f"{k}={type(v).__name__}" for k, v in kw.items()))
def test_prompt_combinations_raise_as_the_parent_does(sd, kwargs):
    stock, itd, _, _ = sd
    expected = _outcome(lambda: _images(stock, **kwargs))
    assert _outcome(lambda: _images(itd, **kwargs)) == expected
    if "prompt_embeds" not in kwargs:
        enc = {k: v for k, v in kwargs.items()}
        assert (_outcome(lambda: itd.encode_prompt(device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, **enc))
                == _outcome(lambda: stock.encode_prompt(device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, **enc)))
    if kwargs == dict(prompt=[DOG, CAR], negative_prompt="blurry"):
        assert expected is not None and expected[0] is TypeError  # the case the issue saw accepted


@pytest.mark.parametrize("kwargs", [dict(prompt=[DOG, CAR], negative_prompt="blurry"),
                                    dict(prompt=DOG, negative_prompt=["blurry", "dark"]),
                                    dict(prompt=[DOG, CAR], negative_prompt_2=["blurry"], negative_prompt=["a", "b"])],
                         ids=["list-str", "str-list", "negative_2-batch"])
def test_sdxl_prompt_combinations_raise_as_the_parent_does(sdxl, kwargs):
    stock, itd = sdxl
    assert _outcome(lambda: _images(itd, **kwargs)) == _outcome(lambda: _images(stock, **kwargs))


def test_save_pretrained_loads_back_with_its_erasers_and_as_the_stock_pipeline(sd, tmp_path):
    stock, itd, sae, _ = sd
    itd.set_steering(sae, [5], "gentle")
    try:
        erased, kept = _images(itd, DOG), _images(itd, CAR)
        itd.save_pretrained(tmp_path / "pipe")
    finally:
        itd.clear_steering()
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert (tmp_path / "pipe" / "itd" / "text_encoder" / "sae.safetensors").is_file()

    loaded = ItDStableDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert [(n, e.settings()) for n, e in loaded._erasers] == [(n, e.settings()) for n, e in itd._erasers]
    assert loaded._erasers[0][1].settings()["mode"] == "scale" and loaded._erasers[0][1].settings()["value"] == -2.0
    assert len(loaded._steers) == 1 and loaded._steers[0][1].spec.value == 0.1
    out = loaded(DOG, num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="np",
                 height=32, width=32)
    assert (out.images == erased).all() and out.concept_decisions[0]["dog"]["flagged"]
    assert (_images(loaded, CAR) == kept).all()

    for plain in (DiffusionPipeline.from_pretrained(tmp_path / "pipe"), StableDiffusionPipeline.from_pretrained(tmp_path / "pipe")):
        assert type(plain) is StableDiffusionPipeline
        assert (_images(plain, DOG) == _images(stock, DOG)).all()  # the stock pipeline: nothing erased

    # saving again without erasers leaves none behind for the next load
    loaded.remove_erasers()
    loaded.clear_steering()
    loaded.save_pretrained(tmp_path / "pipe")
    assert not (tmp_path / "pipe" / "itd").exists()
    assert ItDStableDiffusionPipeline.from_pretrained(tmp_path / "pipe")._erasers == []


def test_a_damaged_itd_folder_is_an_error_not_a_stock_pipeline(sd, tmp_path):
    _, itd, _, _ = sd
    itd.save_pretrained(tmp_path / "pipe")
    (tmp_path / "pipe" / "itd" / "itd.json").unlink()
    with pytest.raises(ValueError, match="has no itd.json"):
        ItDStableDiffusionPipeline.from_pretrained(tmp_path / "pipe")


def test_sdxl_save_pretrained_keeps_both_erasers(sdxl, tmp_path):
    stock, itd = sdxl
    before = _images(itd, [DOG, CAR])
    itd.save_pretrained(tmp_path / "xl")
    loaded = ItDStableDiffusionXLPipeline.from_pretrained(tmp_path / "xl")
    assert [n for n, _ in loaded._erasers] == ["text_encoder", "text_encoder_2"]
    out = loaded([DOG, CAR], num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="np",
                 height=32, width=32)
    assert (out.images == before).all()
    assert out.concept_decisions[0]["text_encoder"]["dog"]["flagged"] and out.concept_decisions[0]["text_encoder_2"]["dog"]["flagged"]
    plain = DiffusionPipeline.from_pretrained(tmp_path / "xl")
    assert type(plain) is StableDiffusionXLPipeline
    assert (_images(plain, [DOG, CAR]) == _images(stock, [DOG, CAR])).all()
