"""ItD pipelines on tiny random SD 1.x / SDXL configs with the real CLIP tokenizer.

A random model proves only that the code runs: here, that flagged prompts are edited,
unflagged ones are bit-identical to the stock pipeline, and every parent argument works.
Erasure quality is measured on the zoo (tests/pipelines/test_itd_zoo.py).
"""

import pytest
import torch

from visionsae.pipelines.itd import ItDStableDiffusionPipeline, ItDStableDiffusionXLPipeline
from tiny_models import tiny_sd
from visionsae.concepts import Concept, ConceptSet, calibrate, concept_scores, prompt_activations, sae_fingerprint
from visionsae.sae import SAEConfig, SparseAutoencoder
from visionsae.sources.text import TextEncoderSource

HOOK = "text_model.encoder.layers.2"
TARGET = ["a photo of a dog"]
KEEP = ["a red car", "a bowl of soup", "mountains at dawn", "a wooden chair", "a city street at night"]


def _sae_and_concepts(text_encoder, tokenizer, hook=HOOK, seed=0, targets=None, max_length=None):
    """An SAE (random, with data-set scale and b_dec) and concepts read off its codes: by default
    'dog' (TARGET); ``targets`` maps each concept to its one prompt. ``max_length``: the
    pipeline's sequence length (a T5's activations depend on it)."""
    targets = targets or {"dog": TARGET[0]}
    torch.manual_seed(seed)
    src = TextEncoderSource(text_encoder, tokenizer, hook, max_length=max_length)
    prompts = list(targets.values()) + KEEP
    acts_btd = next(prompt_activations(src, prompts, batch_size=64))  # [P, T, d]
    P, T, d = acts_btd.shape
    acts = acts_btd.reshape(-1, d)
    sae = SparseAutoencoder(SAEConfig(d_in=d, n_latents=4096, k=8, hook=hook)).eval()
    sae.init_from_data_(acts)

    @torch.no_grad()
    def codes(texts):
        h = next(prompt_activations(src, texts, batch_size=64))
        return h, sae.encode(h)

    # Plant two latents per concept along one of its prompt's token directions, away from the
    # other prompts' tokens (a random SAE has no dog feature), biased to fire there and nowhere
    # in the other prompts. The token with the widest margin is used (random weights give no
    # guarantee).
    with torch.no_grad():
        scaled = (acts * sae.input_scale - sae.b_dec).view(P, T, d)
    found = {}
    for c, (name, prompt) in enumerate(targets.items()):
        n_real = len(tokenizer(prompt)["input_ids"])
        with torch.no_grad():
            other_rows = scaled[[i for i in range(P) if i != c]].reshape(-1, d)
            best = None
            for pos in range(1, n_real):
                row = scaled[c, pos]
                if float(torch.cdist(row[None], other_rows).min()) < 1e-3:
                    continue  # the same prefix as another prompt (causal attention): not separable
                u = row - other_rows.mean(0)
                for _ in range(300):  # perceptron steps towards a direction that separates the token
                    u = u / u.norm()
                    worst = other_rows[(other_rows @ u).argmax()]
                    if float(row @ u) > float(worst @ u):
                        break
                    u = u + 0.2 * (row - worst) / (row - worst).norm()
                u = u / u.norm()
                margin = float(row @ u) - float((other_rows @ u).max())
                if best is None or margin > best[0]:
                    best = (margin, u, (float(row @ u) + float((other_rows @ u).max())) / 2)
            margin, u, cut = best
            assert margin > 0, f"no token of the {name!r} prompt separates from the other prompts"
            features = [2 * c, 2 * c + 1]
            for f in features:
                sae.W_dec[f] = u
                sae.W_enc[f] = 1e4 * u
                sae.b_enc[f] = -1e4 * cut
        found[name] = features
    concepts, first_cal = {}, None
    for c, (name, prompt) in enumerate(targets.items()):
        ids = [torch.tensor(found[name])]
        others = [p for p in prompts if p != prompt]
        (h, code), (ho, co) = codes([prompt]), codes(others)
        with torch.no_grad():
            pos, neg = concept_scores(sae, h, code, ids)[:, 0], concept_scores(sae, ho, co, ids)[:, 0]
        assert pos.min() > neg.max()
        cal = calibrate(pos, neg, 1.0)
        cal["threshold"] = float(pos.min() + neg.max()) / 2  # a margin, so bf16 noise does not flip it
        concepts[name] = Concept(name, found[name], [1.0] * len(found[name]), cal["threshold"], cal)
        first_cal = first_cal or cal
    return sae, ConceptSet(hook, sae_fingerprint(sae), 4096, concepts), first_cal


@pytest.fixture(scope="module")
def sd(clip_tok):
    stock = tiny_sd(clip_tok)
    sae, concepts, cal = _sae_and_concepts(stock.text_encoder, clip_tok)
    assert cal["fpr"] == 0.0, cal  # the keep prompts are not flagged
    return stock, ItDStableDiffusionPipeline.wrap(stock, sae, concepts), sae, concepts


def _run(pipe, prompts, **kw):
    g = torch.Generator().manual_seed(7)
    return pipe(prompts, num_inference_steps=2, generator=g, output_type="np", **kw)


def test_flagged_prompt_is_edited_and_others_are_bit_identical(sd):
    stock, itd, _, _ = sd
    prompts = ["a photo of a dog", "a red car"]
    ours, ref = _run(itd, prompts), _run(stock, prompts)
    assert [d["dog"]["flagged"] for d in ours.concept_decisions] == [True, False]
    assert ours.concept_decisions[0]["dog"]["score"] >= ours.concept_decisions[0]["dog"]["threshold"]
    assert (ours.images[0] != ref.images[0]).any()
    assert (ours.images[1] == ref.images[1]).all()


def test_embeddings_of_unflagged_prompts_equal_the_stock_encode(sd):
    stock, itd, _, _ = sd
    args = (["a red car", "a wooden chair"], "cpu", 2, True, ["a dog", "blurry"])
    ours = itd.encode_prompt(*args)
    ref = stock.encode_prompt(*args)
    assert torch.equal(ours[0], ref[0])
    assert torch.equal(ours[1], ref[1])  # the negative 'a dog' is left alone by default
    flagged = itd.encode_prompt(["a photo of a dog"], "cpu", 1, True)
    assert not torch.equal(flagged[0], stock.encode_prompt(["a photo of a dog"], "cpu", 1, True)[0])
    assert torch.equal(flagged[1], stock.encode_prompt(["a photo of a dog"], "cpu", 1, True)[1])


def test_erase_negative_option(sd):
    _, itd, _, _ = sd
    itd.erase_negative = True
    try:
        _, neg = itd.encode_prompt(["a red car"], "cpu", 1, True, ["a photo of a dog"])
    finally:
        itd.erase_negative = False
    _, neg_plain = itd.encode_prompt(["a red car"], "cpu", 1, True, ["a photo of a dog"])
    assert not torch.equal(neg, neg_plain)


def test_parent_arguments_keep_working(sd):
    stock, itd, _, _ = sd
    seen = []

    def callback(pipe, step, timestep, kwargs):
        seen.append(step)
        return kwargs

    out = _run(itd, "a photo of a dog", num_images_per_prompt=2, guidance_scale=3.0, negative_prompt="blurry",
               callback_on_step_end=callback)
    assert out.images.shape == (2, 32, 32, 3) and seen == [0, 1]
    assert len(out.concept_decisions) == 1 and out.concept_decisions[0]["dog"]["flagged"]
    images, nsfw, decisions = _run(itd, "a red car", return_dict=False)
    assert images.shape == (1, 32, 32, 3) and decisions[0]["dog"]["flagged"] is False
    no_cfg = _run(itd, "a red car", guidance_scale=1.0)
    assert (no_cfg.images == _run(stock, "a red car", guidance_scale=1.0).images).all()


def test_prompt_embeds_made_elsewhere_are_refused_with_a_reason(sd):
    stock, itd, _, _ = sd
    embeds = stock.encode_prompt(["a dog"], "cpu", 1, False)[0]
    with pytest.raises(ValueError, match="prompt_embeds were passed in, but ItD edits the text encoder at "
                                         "'text_model.encoder.layers.2'.*made elsewhere"):
        _run(itd, None, prompt_embeds=embeds)


def test_prompt_embeds_from_this_pipeline_are_the_erased_ones(sd):
    """diffusers' pattern: encode once with encode_prompt, generate from the embeddings."""
    _, itd, _, _ = sd
    prompts = ["a photo of a dog", "a red car"]
    pos, neg = itd.encode_prompt(prompts, "cpu", 1, True)
    from_embeds = _run(itd, None, prompt_embeds=pos, negative_prompt_embeds=neg)
    from_prompts = _run(itd, prompts)
    assert (from_embeds.images == from_prompts.images).all()
    assert from_embeds.concept_decisions == from_prompts.concept_decisions
    assert [d["dog"]["flagged"] for d in from_embeds.concept_decisions] == [True, False]


def test_dtype_cast_and_to_keep_working(sd, clip_tok):
    stock, itd, sae, concepts = sd
    half = ItDStableDiffusionPipeline.wrap(tiny_sd(clip_tok), sae, concepts).to(torch.bfloat16)
    out = half.encode_prompt(["a photo of a dog", "a red car"], "cpu", 1, False)[0]
    assert out.dtype == torch.bfloat16
    assert half.concept_decisions[0]["dog"]["flagged"]


def test_concept_set_for_another_sae_is_refused(sd, clip_tok):
    stock, _, sae, concepts = sd
    other = SparseAutoencoder(SAEConfig(d_in=32, n_latents=4096, k=8, hook=HOOK))
    with pytest.raises(ValueError, match="concept set was built for SAE"):
        ItDStableDiffusionPipeline.wrap(stock, other, concepts)


def test_sdxl_two_encoders(tiny_sdxl, clip_tok):
    stock = tiny_sdxl
    sae1, c1, _ = _sae_and_concepts(stock.text_encoder, stock.tokenizer, seed=1)
    sae2, c2, _ = _sae_and_concepts(stock.text_encoder_2, stock.tokenizer_2, seed=2)
    itd = ItDStableDiffusionXLPipeline.wrap(stock, sae1, c1, sae2, c2)
    prompts = ["a photo of a dog", "a red car"]
    ours = itd.encode_prompt(prompts, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    ref = stock.encode_prompt(prompts, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    assert torch.equal(ours[0][1], ref[0][1]) and torch.equal(ours[2][1], ref[2][1])  # the car
    assert not torch.equal(ours[0][0], ref[0][0])  # the dog
    assert all(torch.equal(a, b) for a, b in zip(ours[1::2], ref[1::2]))  # negatives (zeros)
    out = itd(prompts, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np", height=32, width=32)
    assert out.concept_decisions[0]["text_encoder"]["dog"]["flagged"]
    assert not out.concept_decisions[1]["text_encoder_2"]["dog"]["flagged"]


def test_steering_through_the_pipeline(sd, clip_tok):
    stock, _, sae, _ = sd
    pipe = ItDStableDiffusionPipeline.from_pipe(stock)
    args = (["a red car"], "cpu", 1, True, ["blurry"])
    ref = stock.encode_prompt(*args)
    moved = {}
    for tier in ("gentle", "strong"):
        pipe.set_steering(sae, [5], tier)
        pos, neg = pipe.encode_prompt(*args)
        assert torch.equal(neg, ref[1])  # negative prompts are not steered
        moved[tier] = float((pos - ref[0]).norm())
    assert 0 < moved["gentle"] < moved["strong"]
    pipe.clear_steering()
    assert torch.equal(pipe.encode_prompt(*args)[0], ref[0])
    pipe.set_steering(sae, [5], "strong")
    out = _run(pipe, "a red car")
    assert (out.images != _run(stock, "a red car").images).any()
