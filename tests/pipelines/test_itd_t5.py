"""ItD on the pipelines with T5 text encoders: Stable Diffusion 3 (CLIP-L, CLIP-G, T5) and Flux
(pooled CLIP, T5), on tiny random configs of the real diffusers / transformers classes with the
real CLIP tokenizer and a real T5 tokenizer trained offline (tiny_models).

A random model proves only that the code runs: flagged prompts are edited, unflagged ones are
bit-identical to the stock pipeline, each encoder's eraser edits its own part of the
conditioning, and every parent argument works. The concepts are planted (test_itd_tiny).
"""

from __future__ import annotations

import copy
import inspect
import json

import pytest
import torch
from diffusers import DiffusionPipeline, FluxPipeline, StableDiffusion3Pipeline

from test_itd_tiny import HOOK, _sae_and_concepts
from tiny_models import tiny_flux, tiny_sd3
from visionsae.errors import UsageError
from visionsae.pipelines import ItDFluxPipeline, ItDStableDiffusion3Pipeline

T5_HOOK = "encoder.block.0"
DOG, CASTLE, CAR = "a photo of a dog", "a castle on a hill", "a red car"
TWO = {"dog": DOG, "castle": CASTLE}  # the T5 sets hold two concepts; the CLIP sets only 'dog'


@pytest.fixture(scope="module")
def sd3(clip_tok, t5_tok):
    stock = tiny_sd3(clip_tok, t5_tok)
    parts = [
        _sae_and_concepts(stock.text_encoder, stock.tokenizer, HOOK, seed=1)[:2],
        _sae_and_concepts(stock.text_encoder_2, stock.tokenizer_2, HOOK, seed=2)[:2],
        _sae_and_concepts(stock.text_encoder_3, stock.tokenizer_3, T5_HOOK, seed=3, targets=TWO, max_length=256)[:2],
    ]
    return stock, parts


@pytest.fixture(scope="module")
def flux(clip_tok, t5_tok):
    stock = tiny_flux(clip_tok, t5_tok)
    parts = [
        _sae_and_concepts(stock.text_encoder, stock.tokenizer, HOOK, seed=4)[:2],
        _sae_and_concepts(stock.text_encoder_2, stock.tokenizer_2, T5_HOOK, seed=5, targets=TWO, max_length=512)[:2],
    ]
    return stock, parts


def _run(pipe, prompt, **kw):
    kw.setdefault("height", 32)
    kw.setdefault("width", 32)
    return pipe(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="np", **kw)


def _flat(parts):
    return [x for pair in parts for x in pair]


@pytest.mark.parametrize("ours, parent", [(ItDStableDiffusion3Pipeline, StableDiffusion3Pipeline),
                                          (ItDFluxPipeline, FluxPipeline)], ids=["sd3", "flux"])
def test_signatures_are_the_parents(ours, parent):
    for name in ("__init__", "__call__", "encode_prompt", "save_pretrained"):
        assert inspect.signature(getattr(ours, name)) == inspect.signature(getattr(parent, name)), name
    assert ours._get_signature_keys(ours) == parent._get_signature_keys(parent)
    assert inspect.getsource(ours.encode_prompt) == inspect.getsource(parent.encode_prompt)


# ---------------------------------------------------------------------------------------- SD3
def test_sd3_flagged_prompt_is_edited_and_others_are_bit_identical(sd3):
    stock, parts = sd3
    itd = ItDStableDiffusion3Pipeline.wrap(stock, *_flat(parts))
    assert [n for n, _ in itd._erasers] == ["text_encoder", "text_encoder_2", "text_encoder_3"]
    ours, ref = _run(itd, [DOG, CAR]), _run(stock, [DOG, CAR])
    dog, car = ours.concept_decisions
    assert all(dog[enc]["dog"]["flagged"] for enc in ("text_encoder", "text_encoder_2", "text_encoder_3"))
    assert not any(d["flagged"] for enc in car.values() for d in enc.values())
    assert set(car["text_encoder_3"]) == {"dog", "castle"} and set(car["text_encoder"]) == {"dog"}
    assert (ours.images[0] != ref.images[0]).any()
    assert (ours.images[1] == ref.images[1]).all()


@pytest.mark.parametrize("which", [0, 1, 2], ids=["clip-l", "clip-g", "t5"])
def test_sd3_each_encoder_edits_its_own_part_of_the_conditioning(sd3, which):
    """prompt_embeds = [CLIP-L | CLIP-G] tokens (77, padded to T5's width) then T5's 256 tokens;
    pooled = [CLIP-L | CLIP-G] pooled. An eraser on one encoder changes only its part, and
    only for the flagged prompt."""
    stock, parts = sd3
    given = [(None, None)] * 3
    given[which] = parts[which]
    itd = ItDStableDiffusion3Pipeline.wrap(stock, *_flat(given))
    args = ([DOG, CAR], None, None, "cpu", 1, True)
    pos, neg, pooled, neg_pooled = itd.encode_prompt(*args)
    ref = stock.encode_prompt(*args)
    token_part = [(slice(0, 77), slice(0, 32)), (slice(0, 77), slice(32, 64)), (slice(77, None), slice(None))][which]
    pooled_part = [slice(0, 32), slice(32, 64), None][which]
    changed = torch.zeros_like(pos[0], dtype=torch.bool)
    changed[token_part] = True
    assert not torch.equal(pos[0][token_part], ref[0][0][token_part])
    assert torch.equal(pos[0][~changed], ref[0][0][~changed])
    if pooled_part is None:  # T5 has no pooled output
        assert torch.equal(pooled, ref[2])
    else:
        assert not torch.equal(pooled[0, pooled_part], ref[2][0, pooled_part])
        rest = torch.ones(64, dtype=torch.bool)
        rest[pooled_part] = False
        assert torch.equal(pooled[0, rest], ref[2][0, rest])
    assert torch.equal(pos[1], ref[0][1]) and torch.equal(pooled[1], ref[2][1])  # the car
    assert torch.equal(neg, ref[1]) and torch.equal(neg_pooled, ref[3])  # negatives ("") left alone
    # one eraser: its decisions per prompt, not keyed by encoder (as SDXL with one SAE)
    assert [d["dog"]["flagged"] for d in itd.concept_decisions] == [True, False]


def test_sd3_several_concepts_and_a_chosen_subset(sd3):
    stock, parts = sd3
    args = ([DOG, CASTLE, CAR], None, None, "cpu", 1, False)
    ref = stock.encode_prompt(*args)[0]
    both = ItDStableDiffusion3Pipeline.wrap(stock, sae_3=parts[2][0], concepts_3=parts[2][1])
    pos = both.encode_prompt(*args)[0]
    flags = [{n: d["flagged"] for n, d in dec.items()} for dec in both.concept_decisions]
    assert flags == [{"dog": True, "castle": False}, {"dog": False, "castle": True}, {"dog": False, "castle": False}]
    assert not torch.equal(pos[0], ref[0]) and not torch.equal(pos[1], ref[1]) and torch.equal(pos[2], ref[2])

    castle_only = ItDStableDiffusion3Pipeline.wrap(stock, *_flat(parts), erase=["castle"])
    assert [n for n, _ in castle_only._erasers] == ["text_encoder_3"]  # the CLIP sets hold no castle
    pos = castle_only.encode_prompt(*args)[0]
    assert torch.equal(pos[0], ref[0]) and not torch.equal(pos[1], ref[1]) and torch.equal(pos[2], ref[2])
    assert list(castle_only.concept_decisions[1]) == ["castle"]
    with pytest.raises(UsageError, match=r"\['horse'\] are in none of the concept sets"):
        ItDStableDiffusion3Pipeline.wrap(stock, *_flat(parts), erase=["horse"])
    with pytest.raises(UsageError, match="needs its concept set"):
        ItDStableDiffusion3Pipeline.wrap(stock, sae_3=parts[2][0])
    with pytest.raises(UsageError, match=r"text_encoder_3 \(sae_3=\)"):
        ItDStableDiffusion3Pipeline.wrap(stock)


def test_sd3_t5_eraser_reads_a_misspelt_prompt_in_its_normal_form(sd3):
    """The robust gate (ItDEraser's normal form) works through T5's tokenizer: 'dgo' is read as
    'dog' and erased from T5's tokens as 'dog' is; the CLIPs, without erasers, see the prompt as written."""
    stock, parts = sd3
    sae, concepts = parts[2]
    concepts = copy.deepcopy(concepts)
    concepts["dog"].vocabulary = ["dog"]
    itd = ItDStableDiffusion3Pipeline.wrap(stock, sae_3=sae, concepts_3=concepts)
    prompts = [DOG, "a photo of a dgo", CAR]
    with torch.no_grad():
        pos = itd.encode_prompt(prompts, None, None, "cpu", 1, False)[0]
        ref = stock.encode_prompt(prompts, None, None, "cpu", 1, False)[0]
    decisions = itd.concept_decisions
    assert [d["dog"]["flagged"] for d in decisions] == [True, True, False]
    assert decisions[1]["read_as"] == DOG and "read_as" not in decisions[0]
    assert torch.equal(pos[1, 77:], pos[0, 77:])  # T5's tokens: erased as the correct spelling is
    assert torch.equal(pos[1, :77], ref[1, :77])  # the CLIPs' tokens: untouched
    assert torch.equal(pos[2], ref[2])


def test_sd3_guidance_negative_prompts_and_images_per_prompt(sd3):
    stock, parts = sd3
    itd = ItDStableDiffusion3Pipeline.wrap(stock, *_flat(parts))
    out = _run(itd, DOG, num_images_per_prompt=2, guidance_scale=3.0, negative_prompt="blurry")
    assert out.images.shape == (2, 32, 32, 3)
    assert len(out.concept_decisions) == 1 and out.concept_decisions[0]["text_encoder_3"]["dog"]["flagged"]
    args = (CAR, None, None, "cpu", 2, True, DOG)  # a 'dog' negative prompt: left alone by default
    ours, ref = itd.encode_prompt(*args), stock.encode_prompt(*args)
    assert ours[0].shape == (2, 77 + 256, 64)
    assert all(torch.equal(a, b) for a, b in zip(ours, ref))
    itd.erase_negative = True
    try:
        erased = itd.encode_prompt(*args)
    finally:
        itd.erase_negative = False
    assert not torch.equal(erased[1], ref[1]) and torch.equal(erased[0], ref[0])
    assert (_run(itd, CAR, guidance_scale=1.0).images == _run(stock, CAR, guidance_scale=1.0).images).all()
    images, decisions = _run(itd, CAR, return_dict=False)
    assert images.shape == (1, 32, 32, 3) and not decisions[0]["text_encoder_3"]["dog"]["flagged"]


def test_sd3_bfloat16(sd3, clip_tok, t5_tok):
    _, parts = sd3
    half = ItDStableDiffusion3Pipeline.wrap(tiny_sd3(clip_tok, t5_tok), *_flat(parts)).to(torch.bfloat16)
    pos = half.encode_prompt([DOG, CAR], None, None, "cpu", 1, False)[0]
    assert pos.dtype == torch.bfloat16
    assert [d["text_encoder_3"]["dog"]["flagged"] for d in half.concept_decisions] == [True, False]
    assert _run(half, DOG).images.shape == (1, 32, 32, 3)


def test_sd3_save_pretrained_loads_back_with_its_erasers_and_as_the_stock_pipeline(sd3, tmp_path):
    stock, parts = sd3
    itd = ItDStableDiffusion3Pipeline.wrap(stock, *_flat(parts), mode="scale", value=-2.0)
    before = _run(itd, [DOG, CASTLE, CAR]).images
    itd.save_pretrained(tmp_path / "sd3")
    assert json.loads((tmp_path / "sd3" / "model_index.json").read_text())["_class_name"] == "StableDiffusion3Pipeline"
    assert (tmp_path / "sd3" / "itd" / "text_encoder_3" / "sae.safetensors").is_file()
    assert (tmp_path / "sd3" / "itd" / "text_encoder_3.json").is_file()

    loaded = ItDStableDiffusion3Pipeline.from_pretrained(tmp_path / "sd3")
    assert [(n, e.settings()) for n, e in loaded._erasers] == [(n, e.settings()) for n, e in itd._erasers]
    out = _run(loaded, [DOG, CASTLE, CAR])
    assert (out.images == before).all()
    assert out.concept_decisions[1]["text_encoder_3"]["castle"]["flagged"]

    plain = DiffusionPipeline.from_pretrained(tmp_path / "sd3")
    assert type(plain) is StableDiffusion3Pipeline
    assert (_run(plain, [DOG, CAR]).images == _run(stock, [DOG, CAR]).images).all()

    # SAEs given to from_pretrained replace the saved ones
    t5_only = ItDStableDiffusion3Pipeline.from_pretrained(tmp_path / "sd3", sae_3=parts[2][0], concepts_3=parts[2][1])
    assert [n for n, _ in t5_only._erasers] == ["text_encoder_3"]
    with pytest.raises(UsageError, match="needs its SAE"):
        ItDStableDiffusion3Pipeline.from_pretrained(tmp_path / "sd3", concepts_3=parts[2][1])
    with pytest.raises(UsageError, match="mode= set up the erasers of SAEs given here"):
        ItDStableDiffusion3Pipeline.from_pretrained(tmp_path / "sd3", mode="scale")


# ---------------------------------------------------------------------------------------- Flux
def test_flux_flagged_prompt_is_edited_and_others_are_bit_identical(flux):
    stock, parts = flux
    itd = ItDFluxPipeline.wrap(stock, *_flat(parts))
    ours, ref = _run(itd, [DOG, CASTLE, CAR]), _run(stock, [DOG, CASTLE, CAR])
    dog, castle, car = ours.concept_decisions
    assert dog["text_encoder"]["dog"]["flagged"] and dog["text_encoder_2"]["dog"]["flagged"]
    assert castle["text_encoder_2"]["castle"]["flagged"] and not castle["text_encoder"]["dog"]["flagged"]
    assert not any(d["flagged"] for enc in car.values() for d in enc.values())
    assert (ours.images[0] != ref.images[0]).any() and (ours.images[1] != ref.images[1]).any()
    assert (ours.images[2] == ref.images[2]).all()


@pytest.mark.parametrize("which", [0, 1], ids=["clip-pooled", "t5"])
def test_flux_each_encoder_edits_its_own_output(flux, which):
    """Flux takes the CLIP's pooled vector and T5's tokens: an eraser on one changes only that."""
    stock, parts = flux
    given = [(None, None)] * 2
    given[which] = parts[which]
    itd = ItDFluxPipeline.wrap(stock, *_flat(given))
    tokens, pooled, text_ids = itd.encode_prompt([DOG, CAR], device="cpu")
    ref = stock.encode_prompt([DOG, CAR], device="cpu")
    mine, other = (pooled, tokens) if which == 0 else (tokens, pooled)
    ref_mine, ref_other = (ref[1], ref[0]) if which == 0 else (ref[0], ref[1])
    assert not torch.equal(mine[0], ref_mine[0]) and torch.equal(mine[1], ref_mine[1])
    assert torch.equal(other, ref_other) and torch.equal(text_ids, ref[2])


def test_flux_true_cfg_negative_prompt_is_left_alone_unless_asked(flux):
    stock, parts = flux
    itd = ItDFluxPipeline.wrap(stock, *_flat(parts))
    kw = dict(negative_prompt=DOG, true_cfg_scale=2.0)
    ours = _run(itd, CAR, **kw)
    assert (ours.images == _run(stock, CAR, **kw).images).all()  # the car is not flagged, the 'dog' negative kept
    assert len(ours.concept_decisions) == 1 and not ours.concept_decisions[0]["text_encoder_2"]["dog"]["flagged"]
    itd.erase_negative = True
    try:
        erased = _run(itd, CAR, **kw)
    finally:
        itd.erase_negative = False
    assert (erased.images != ours.images).any()
    assert len(erased.concept_decisions) == 1  # the negative prompt's decisions are not reported

    many = _run(itd, DOG, num_images_per_prompt=2, **kw)
    assert many.images.shape == (2, 32, 32, 3) and len(many.concept_decisions) == 1
    assert many.concept_decisions[0]["text_encoder_2"]["dog"]["flagged"]


def test_flux_prompt_embeds_from_this_pipeline_only(flux):
    stock, parts = flux
    itd = ItDFluxPipeline.wrap(stock, *_flat(parts))
    with torch.no_grad():  # as inside __call__ (T5's kernels differ in the last bits with autograd on)
        pos, pooled, _ = itd.encode_prompt([DOG, CAR], device="cpu")
        neg, neg_pooled, _ = stock.encode_prompt(["blurry", "blurry"], device="cpu")  # negatives may come from anywhere
    from_embeds = _run(itd, None, prompt_embeds=pos, pooled_prompt_embeds=pooled, negative_prompt_embeds=neg,
                       negative_pooled_prompt_embeds=neg_pooled, true_cfg_scale=2.0)
    from_prompts = _run(itd, [DOG, CAR], negative_prompt=["blurry", "blurry"], true_cfg_scale=2.0)
    assert (from_embeds.images == from_prompts.images).all()
    assert from_embeds.concept_decisions == from_prompts.concept_decisions
    elsewhere, elsewhere_pooled, _ = stock.encode_prompt([DOG], device="cpu")
    with pytest.raises(ValueError, match="prompt_embeds were passed in, but ItD edits the text encoder"):
        _run(itd, None, prompt_embeds=elsewhere, pooled_prompt_embeds=elsewhere_pooled)


def test_flux_bfloat16_and_save_pretrained(flux, clip_tok, t5_tok, tmp_path):
    stock, parts = flux
    itd = ItDFluxPipeline.wrap(stock, *_flat(parts))
    before = _run(itd, [DOG, CAR]).images
    itd.save_pretrained(tmp_path / "flux")
    assert json.loads((tmp_path / "flux" / "model_index.json").read_text())["_class_name"] == "FluxPipeline"
    loaded = ItDFluxPipeline.from_pretrained(tmp_path / "flux")
    assert [n for n, _ in loaded._erasers] == ["text_encoder", "text_encoder_2"]
    assert (_run(loaded, [DOG, CAR]).images == before).all()
    plain = DiffusionPipeline.from_pretrained(tmp_path / "flux")
    assert type(plain) is FluxPipeline
    assert (_run(plain, [DOG, CAR]).images == _run(stock, [DOG, CAR]).images).all()

    half = loaded.to(torch.bfloat16)
    tokens, pooled, _ = half.encode_prompt([DOG, CAR], device="cpu")
    assert tokens.dtype == pooled.dtype == torch.bfloat16
    assert [d["text_encoder_2"]["dog"]["flagged"] for d in half.concept_decisions] == [True, False]


def test_erase_command_on_an_sd3_folder(sd3, tmp_path, capsys):
    """`visionsae erase` picks ItDStableDiffusion3Pipeline from the folder's model_index.json and
    erases with an SAE on its T5 (--sae-3)."""
    from visionsae.cli import main

    stock, parts = sd3
    stock.save_pretrained(tmp_path / "sd3")
    sae, concepts = parts[2]
    sae.save_pretrained(tmp_path / "t5-sae")
    concepts.save(tmp_path / "t5-concepts.json")
    out = tmp_path / "out"
    assert main(["erase", "--model", str(tmp_path / "sd3"), "--sae-3", str(tmp_path / "t5-sae"), "--concepts-3",
                 str(tmp_path / "t5-concepts.json"), "--prompt", DOG, "--prompt", CAR, "--steps", "2",
                 "--out", str(out)]) == 0
    records = json.loads((out / "decisions.json").read_text())
    assert [r["changed"] for r in records] == [True, False]
    assert records[0]["decisions"]["dog"]["flagged"] and not records[1]["decisions"]["dog"]["flagged"]
    capsys.readouterr()

    flux_dir = tmp_path / "flux-like"
    flux_dir.mkdir()
    (flux_dir / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert main(["erase", "--model", str(flux_dir), "--sae-3", str(tmp_path / "t5-sae"), "--concepts-3",
                 str(tmp_path / "t5-concepts.json"), "--prompt", DOG, "--out", str(tmp_path / "o2")]) == 2
    assert "text_encoder, text_encoder_2: --concepts-3, --sae-3 do not apply" in capsys.readouterr().err
    assert main(["erase", "--model", str(tmp_path / "sd3"), "--prompt", DOG, "--out", str(tmp_path / "o3")]) == 2
    assert "pass --sae and/or --sae-2 and/or --sae-3" in capsys.readouterr().err
