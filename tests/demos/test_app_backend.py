"""The web demo's back end on a Stable Diffusion folder (`visionsae app --model DIR --sae DIR
--concepts FILE`), without a browser: a tiny random SD 1.x pipeline saved with
save_pretrained, with the real CLIP tokenizer, and an SAE whose 'dog' concept is planted on
the dog prompt's tokens. A random model proves only that the path works: the dog prompt is
flagged and edited, other prompts give the stock image bit for bit, CLIP's 77-token limit is
enforced."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tiny_models import tiny_sd
from visionsae.concepts import Concept, ConceptSet, calibrate, concept_scores, prompt_activations, sae_fingerprint
from visionsae.sae import SAEConfig, SparseAutoencoder
from visionsae.sources.text import TextEncoderSource

HOOK = "text_model.encoder.layers.2"
DOG, KEEP = "a photo of a dog", ["a red car", "a bowl of soup", "mountains at dawn", "a wooden chair"]


@pytest.fixture(scope="module")
def sd_app(clip_tok, tmp_path_factory):
    from visionsae.demos.app_backend import Eraser

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sd-app")
    pipe = tiny_sd(clip_tok)
    pipe.save_pretrained(root / "model")
    src = TextEncoderSource(pipe.text_encoder, clip_tok, HOOK)
    dog, keep = next(prompt_activations(src, [DOG])), next(prompt_activations(src, KEEP))  # [P, T, d]
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=dog.shape[-1], n_latents=512, k=8, hook=HOOK)).eval()
    with torch.no_grad():
        # latent 0 reads the dog prompt's last word ("dog" comes after a prefix the keep prompts
        # share, so its activation is the dog's own); its bias keeps it off every keep token
        n = len(clip_tok(DOG)["input_ids"]) - 2
        u = dog[0, n] / dog[0, n].norm()
        cut = (float(dog[0, n] @ u) + float((keep.reshape(-1, keep.shape[-1]) @ u).max())) / 2
        sae.W_dec[0], sae.W_enc[0], sae.b_enc[0] = u, 1e3 * u, -1e3 * cut
    sae.save_pretrained(root / "sae")
    sae = SparseAutoencoder.from_pretrained(root / "sae")
    ids = [torch.tensor([0])]
    pos = concept_scores(sae, dog, sae.encode(dog), ids)[:, 0]
    neg = concept_scores(sae, keep, sae.encode(keep), ids)[:, 0]
    assert pos.min() > neg.max(), (pos, neg)  # the planted feature tells them apart
    cal = calibrate(pos, neg, 1.0)
    cs = ConceptSet(HOOK, sae_fingerprint(sae), 512, {"dog": Concept("dog", [0], [1.0], cal["threshold"], cal)})
    cs.save(root / "concepts.json")
    return Eraser.from_paths(str(root / "model"), str(root / "sae"), str(root / "concepts.json"),
                             label_prompts=[DOG, *KEEP])


def test_stable_diffusion_folder_erases_the_flagged_prompt_only(sd_app):
    eraser = sd_app
    assert eraser.concepts.names() == ["dog"] and eraser.mode == "zero"
    flagged = eraser.erase(DOG, ["dog"], steps=2)
    assert flagged.decisions["dog"]["flagged"] and not flagged.identical
    assert [f["feature"] for f in flagged.features] == [0]
    assert flagged.features[0]["top_prompts"][0] == DOG  # its label: the prompt it fires on most
    assert flagged.stock.shape == (32, 32, 3)
    other = eraser.erase(KEEP[0], ["dog"], steps=2)
    assert not other.decisions["dog"]["flagged"] and other.identical
    assert np.array_equal(other.stock, other.erased)


def test_clip_prompt_limit_is_77_tokens(sd_app):
    from visionsae.demos.app_backend import AppError

    with pytest.raises(AppError, match="is 80 tokens long but this model's text encoder reads at most 77"):
        sd_app.erase(" ".join(["dog"] * 78), ["dog"], steps=2)
