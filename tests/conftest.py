"""Shared test setup: never touch the network."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


import pytest


@pytest.fixture(scope="session")
def clip_tok():
    """The real CLIP tokenizer (open_clip's BPE vocabulary as a transformers CLIPTokenizer)."""
    from visionsae.sources.clip_tokenizer import clip_tokenizer

    return clip_tokenizer()


@pytest.fixture(scope="session")
def tiny_sdxl(clip_tok):
    """A tiny StableDiffusionXLPipeline with the real CLIP tokenizers (pads '<|endoftext|>' / '!')."""
    from tiny_models import tiny_sdxl as build

    return build(clip_tok)


@pytest.fixture(scope="session")
def t5_tok():
    """A real T5 tokenizer trained offline on real prompts (see tiny_models.tiny_t5_tokenizer)."""
    from tiny_models import tiny_t5_tokenizer

    return tiny_t5_tokenizer()


@pytest.fixture(scope="session")
def tiny_llava():
    """(model, processor): a tiny LlavaForConditionalGeneration (see tiny_models.tiny_llava)."""
    from tiny_models import tiny_llava as build

    return build()
