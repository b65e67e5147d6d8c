"""Text encoder sources on tiny random CLIP text models with the real CLIP tokenizer."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_clip_text

from visionsae.sources import TextEncoderSource, TokenKind, resolve_hook

PROMPTS = ["a photo of a dog", "an astronaut riding a horse on the moon, highly detailed", "x"]


def test_clip_tokenizer_matches_open_clip_ids(clip_tok):
    import open_clip

    ref = open_clip.get_tokenizer("ViT-B-32")
    for text in PROMPTS + ["It's 4K, trending on ArtStation!!"]:
        ours = clip_tok(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        theirs = ref([text])[0]
        n = int(ours.attention_mask.sum())
        assert ours.input_ids[0, :n].tolist() == theirs[:n].tolist()
        assert int(theirs[n:].abs().sum()) == 0  # open_clip pads with 0 after <|endoftext|>
    assert clip_tok.bos_token_id == 49406 and clip_tok.eos_token_id == 49407 and len(clip_tok) == 49408


def test_clip_text_rows_kinds_and_metadata(clip_tok):
    model = tiny_clip_text()
    src = TextEncoderSource(model, clip_tok, "text_model.encoder.layers.2")  # transformers-4 style path
    assert src.hook == "encoder.layers.2"
    batch = src.encode(PROMPTS, first_id=10)
    assert batch.acts.shape == (3 * 77, 32)
    assert batch.input_id.tolist() == [10] * 77 + [11] * 77 + [12] * 77
    assert batch.position.tolist() == list(range(77)) * 3
    ids = clip_tok(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model(ids, output_hidden_states=True).hidden_states[3]  # output of layer 2
    assert torch.equal(batch.acts.view(3, 77, 32), ref)
    kinds = batch.kind.view(3, 77)
    for b, p in enumerate(PROMPTS):
        n = int((ids[b] != 49407).sum()) + 1  # real tokens incl. the end token
        assert kinds[b, 0] == TokenKind.START
        assert (kinds[b, 1 : n - 1] == TokenKind.TEXT).all()
        assert kinds[b, n - 1] == TokenKind.END
        assert (kinds[b, n:] == TokenKind.PAD).all()
        rec = batch.records[b]
        assert rec["input_id"] == 10 + b and rec["text"] == p and len(rec["tokens"]) == n
        assert rec["tokens"][0] == "<|startoftext|>" and rec["tokens"][-1] == "<|endoftext|>"


def test_skip_start_and_padding(clip_tok):
    model = tiny_clip_text()
    full = TextEncoderSource(model, clip_tok, "encoder.layers.4").encode(PROMPTS, 0)
    some = TextEncoderSource(model, clip_tok, "encoder.layers.4", skip_start=True, skip_padding=True).encode(PROMPTS, 0)
    keep = (full.kind != TokenKind.START) & (full.kind != TokenKind.PAD)
    assert torch.equal(some.acts, full.acts[keep]) and torch.equal(some.position, full.position[keep])
    assert set(some.kind.tolist()) == {int(TokenKind.TEXT), int(TokenKind.END)}


def test_truncation_is_recorded(clip_tok):
    src = TextEncoderSource(tiny_clip_text(), clip_tok, "encoder.layers.0")
    batch = src.encode(["word " * 100, "short"], 0)
    assert [r["truncated"] for r in batch.records] == [True, False]
    assert batch.acts.shape[0] == 2 * 77
    # a prompt whose tokens exactly fill the row is not cut; one token more is
    for padding in ("max_length", "longest"):
        short = TextEncoderSource(tiny_clip_text(), clip_tok, "encoder.layers.0", max_length=8, padding=padding)
        batch = short.encode(["a b c d e f", "a b c d e f g", "a b"], 0)
        assert [len(r["tokens"]) for r in batch.records] == [8, 8, 4]
        assert [r["truncated"] for r in batch.records] == [False, True, False], padding


def test_bad_hook_names_close_matches(clip_tok):
    with pytest.raises(ValueError, match="encoder.layers.1"):
        resolve_hook(tiny_clip_text(), "encoder.layer.1")


def test_sdxl_two_encoders_match_encode_prompt(tiny_sdxl):
    """The two hooks (penultimate layer of each encoder) give exactly the embeddings the UNet
    gets from ``pipe.encode_prompt``; tokenizer_2 pads with '!' and padding is still told apart."""
    pipe = tiny_sdxl
    src1 = TextEncoderSource.from_pipeline(pipe, "text_model.encoder.layers.3", encoder=1)
    src2 = TextEncoderSource.from_pipeline(pipe, "text_model.encoder.layers.3", encoder="text_encoder_2")
    b1, b2 = src1.encode(PROMPTS, 0), src2.encode(PROMPTS, 0)
    prompt_embeds, *_ = pipe.encode_prompt(PROMPTS, device="cpu", num_images_per_prompt=1,
                                           do_classifier_free_guidance=False)
    ours = torch.cat([b1.acts.view(3, 77, 32), b2.acts.view(3, 77, 32)], dim=-1)
    assert torch.equal(ours, prompt_embeds)
    assert pipe.tokenizer_2.pad_token_id == 0
    assert torch.equal(b1.kind, b2.kind)  # same real tokens, different pad ids
    assert (b2.kind == TokenKind.END).sum() == 3


def test_sd_final_layer_norm_is_prompt_embeds(tiny_sdxl, clip_tok):
    """SD 1.x feeds the UNet the final layer norm output: hooking it reproduces the pipeline."""
    from diffusers import StableDiffusionPipeline

    sd = StableDiffusionPipeline(
        vae=tiny_sdxl.vae, text_encoder=tiny_sdxl.text_encoder, tokenizer=clip_tok, unet=tiny_sdxl.unet,
        scheduler=tiny_sdxl.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    src = TextEncoderSource.from_pipeline(sd, "text_model.final_layer_norm")
    embeds, _ = sd.encode_prompt(PROMPTS, "cpu", 1, False)
    assert torch.equal(src.encode(PROMPTS, 0).acts.view(3, 77, 32), embeds)
