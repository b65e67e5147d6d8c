"""T5 text encoders (SD3's text_encoder_3, Flux's text_encoder_2) as activation sources, and an
SAE trained on a tiny T5's tokens through `visionsae extract` / `visionsae train`.

Tiny random SD3 / Flux pipelines of the real diffusers classes, with a real T5 tokenizer
(``T5TokenizerFast``) whose pieces are trained offline on real prompts (tiny_models).
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny_flux, tiny_sd3

from visionsae.cli import main
from visionsae.sae import SparseAutoencoder
from visionsae.sources import TextEncoderSource, TokenKind
from visionsae.store import ActivationStore

PROMPTS = ["a photo of a dog", "a red car on a wet street", "x"]


@pytest.fixture(scope="module")
def sd3(clip_tok, t5_tok):
    return tiny_sd3(clip_tok, t5_tok)


@pytest.fixture(scope="module")
def flux(clip_tok, t5_tok):
    return tiny_flux(clip_tok, t5_tok)


def test_sd3_three_encoders_rebuild_the_prompt_embeds(sd3):
    """The CLIPs' penultimate layers and T5's final layer norm, tokenised as the pipeline does
    (T5: its 256-token max_sequence_length, no attention mask), give exactly the embeddings
    SD3's transformer gets from ``encode_prompt``."""
    clip1 = TextEncoderSource.from_pipeline(sd3, "text_model.encoder.layers.3", encoder=1)
    clip2 = TextEncoderSource.from_pipeline(sd3, "text_model.encoder.layers.3", encoder="text_encoder_2")
    t5 = TextEncoderSource.from_pipeline(sd3, "encoder.final_layer_norm", encoder=3)
    assert (clip1.max_length, clip2.max_length, t5.max_length) == (77, 77, 256)
    assert t5.attention_mask is False  # as SD3 runs it
    with torch.no_grad():  # as in the pipeline's __call__ (T5's kernels differ in the last bits with autograd on)
        embeds, _, pooled, _ = sd3.encode_prompt(PROMPTS, None, None, device="cpu", do_classifier_free_guidance=False)
    a1, a2, a3 = (s.encode(PROMPTS, 0).acts for s in (clip1, clip2, t5))
    assert embeds.shape == (3, 77 + 256, 64)
    assert torch.equal(a1.view(3, 77, 32), embeds[:, :77, :32])  # the CLIPs' tokens, padded to T5's width
    assert torch.equal(a2.view(3, 77, 32), embeds[:, :77, 32:])
    assert torch.equal(a3.view(3, 256, 64), embeds[:, 77:])


def test_t5_tokens_have_no_start_an_end_and_padding(sd3, t5_tok):
    batch = TextEncoderSource.from_pipeline(sd3, "encoder.block.1", encoder=3).encode(PROMPTS, first_id=5)
    kinds = batch.kind.view(3, 256)
    ids = t5_tok(PROMPTS, padding="max_length", max_length=256, return_tensors="pt").input_ids
    for b, prompt in enumerate(PROMPTS):
        n = int((ids[b] != t5_tok.pad_token_id).sum())  # real tokens, </s> included
        assert (kinds[b, : n - 1] == TokenKind.TEXT).all()  # T5 has no start token: the first row is a word
        assert kinds[b, n - 1] == TokenKind.END and ids[b, n - 1] == t5_tok.eos_token_id
        assert (kinds[b, n:] == TokenKind.PAD).all()
        rec = batch.records[b]
        assert rec["text"] == prompt and rec["tokens"][-1] == "</s>" and len(rec["tokens"]) == n
        assert not rec["truncated"]
    assert TokenKind.START not in batch.kind.tolist()
    # no attention mask: the pad rows attend to the prompt (bidirectional) and differ between prompts
    pads = batch.acts.view(3, 256, 64)[:, -1]
    assert not torch.equal(pads[0], pads[1])
    # skip_start drops nothing (there is no start row); skip_padding drops the pads
    some = TextEncoderSource.from_pipeline(sd3, "encoder.block.1", encoder=3, skip_start=True, skip_padding=True)
    kept = some.encode(PROMPTS, 0)
    assert set(kept.kind.tolist()) == {int(TokenKind.TEXT), int(TokenKind.END)}
    assert kept.acts.shape[0] == int((ids != t5_tok.pad_token_id).sum())


def test_flux_t5_is_its_second_encoder_at_512_tokens(flux):
    t5 = TextEncoderSource.from_pipeline(flux, "encoder.final_layer_norm", encoder=2)
    assert t5.max_length == 512
    with torch.no_grad():
        embeds, pooled, _ = flux.encode_prompt(PROMPTS, device="cpu")
        embeds_64 = flux.encode_prompt(PROMPTS, device="cpu", max_sequence_length=64)[0]
    assert torch.equal(t5.encode(PROMPTS, 0).acts.view(3, 512, 32), embeds)
    short = TextEncoderSource.from_pipeline(flux, "encoder.final_layer_norm", encoder=2, max_length=64)
    assert torch.equal(short.encode(PROMPTS, 0).acts.view(3, 64, 32), embeds_64)
    with pytest.raises(ValueError, match=r"has no text_encoder_3 .*\['text_encoder', 'text_encoder_2'\]"):
        TextEncoderSource.from_pipeline(flux, "encoder.block.0", encoder=3)


def test_t5_hook_names_and_truncation(sd3):
    with pytest.raises(ValueError, match="encoder.block.1"):
        TextEncoderSource.from_pipeline(sd3, "encoder.blocks.1", encoder=3)
    src = TextEncoderSource.from_pipeline(sd3, "encoder.block.0", encoder=3, max_length=8)
    batch = src.encode(["a photo of a dog " * 4, "a dog"], 0)
    assert [r["truncated"] for r in batch.records] == [True, False]
    assert batch.records[0]["tokens"][-1] == "</s>"  # truncation keeps the end token, as the pipeline's does


def test_sae_on_a_tiny_t5_through_extract_and_train(sd3, tmp_path, capsys):
    """The real CLI path on a saved SD3 pipeline: extract T5 block 1 at SD3's 256 tokens,
    train a TopK SAE on it, and check the SAE reconstructs prompts it never saw."""
    from open_clip import zero_shot_metadata as meta

    sd3.save_pretrained(tmp_path / "sd3")
    classes = meta.IMAGENET_CLASSNAMES
    train_prompts = [f"a photo of a {c}" for c in classes[:24]]
    heldout = [f"a painting of the {c}" for c in classes[500:508]]  # other classes, another template
    (tmp_path / "p.txt").write_text("\n".join(train_prompts) + "\n")
    store_dir, run_dir = tmp_path / "t5-store", tmp_path / "run"
    assert main(["extract", "--model", str(tmp_path / "sd3"), "--encoder", "text_encoder_3", "--hook", "encoder.block.1",
                 "--inputs", str(tmp_path / "p.txt"), "--out", str(store_dir), "--shard-rows", "2048",
                 "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == 24 * 256 and summary["d_in"] == 64
    store = ActivationStore.open(store_dir)
    assert store.source["encoder"] == "text_encoder_3" and store.source["max_length"] == 256
    assert store.source["hook"] == "encoder.block.1" and store.source["attention_mask"] is False
    counts = store.kind_counts()
    assert counts["end"] == 24 and "start" not in counts and counts["text"] + counts["end"] + counts["pad"] == 24 * 256

    assert main(["train", "--store", str(store_dir), "--n-latents", "256", "--k", "8", "--total-samples", "24000",
                 "--batch-size", "256", "--out-dir", str(run_dir), "--checkpoint-every", "0", "--no-progress"]) == 0
    capsys.readouterr()
    sae = SparseAutoencoder.from_pretrained(run_dir / "sae").eval()
    assert sae.cfg.hook == "encoder.block.1" and sae.cfg.d_in == 64

    src = TextEncoderSource.from_pipeline(sd3, sae.cfg.hook, encoder=3)
    x = src.encode(heldout, 0).acts
    with torch.no_grad():
        x_hat = sae(x).x_hat
    fvu = float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert fvu < 0.5, fvu  # far better than predicting the mean, on prompts that chose nothing

    # a wrong encoder name is a usage error that lists the pipeline's encoders
    assert main(["extract", "--model", str(tmp_path / "sd3"), "--encoder", "text_encoder_4", "--hook", "encoder.block.1",
                 "--inputs", str(tmp_path / "p.txt"), "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "text_encoder, text_encoder_2, text_encoder_3" in capsys.readouterr().err
