"""Vision-language models: the residual stream of a language-model layer of a transformers
``LlavaForConditionalGeneration`` (any VLM whose processor takes ``images=`` and ``text=``).

Inputs are records ``{"image": path or PIL image (optional), "question": str}``; the prompt is
built with the processor's chat template (a user turn with the image and the question, then
the generation prompt), exactly what the model sees when it answers. Each row is one token:
IMAGE (an image-placeholder position, which carries the projected vision features), TEXT,
START (the BOS token), or PAD.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import nn

from visionsae.sources.base import ActivationSource, rows_from_tokens, tokens_of
from visionsae.sources.image import load_image, to_rgb, ImageReadError
from visionsae.store import ActivationBatch, TokenKind
from ..errors import UsageError

# where the decoder layers of the language model sit (transformers 5, then 4)
_LAYER_PATHS = ("model.language_model.layers", "language_model.model.layers", "model.language_model.model.layers",
                "language_model.layers", "model.layers")


def decoder_layers_path(model: nn.Module) -> str:
    """The module path of the language model's decoder layers (a ModuleList)."""
    names = dict(model.named_modules())
    for p in _LAYER_PATHS:
        if isinstance(names.get(p), nn.ModuleList):
            return p
    raise UsageError(f"cannot find the language-model layers of {type(model).__name__}; pass hook= explicitly")


class VLMSource(ActivationSource):
    """Language-model residual stream of a VLM at layer ``layer`` (or any ``hook``).

    Parameters
    ----------
    model:
        A ``LlavaForConditionalGeneration`` (or a VLM with the same processor interface).
    processor:
        Its processor (``LlavaProcessor``): chat template, tokenizer, image processor.
    layer:
        Index of the language-model decoder layer whose output (residual stream) is read;
        negative counts from the end.
    hook:
        A module path instead of ``layer``.
    on_error:
        ``"raise"`` or ``"skip"`` an input whose image cannot be read.
    keep_kinds, device, stop_early:
        As :class:`~visionsae.sources.base.ActivationSource`.
    """

    input_type = "vlm"

    def __init__(self, model: nn.Module, processor: Any, *, layer: int | None = None, hook: str | None = None,
                 on_error: str = "raise", **kw):
        if (layer is None) == (hook is None):
            raise UsageError("give exactly one of layer= (a language-model layer index) or hook= (a module path)")
        if hook is None:
            path = decoder_layers_path(model)
            n = len(model.get_submodule(path))
            if not -n <= layer < n:
                raise UsageError(f"layer {layer} is out of range: the language model has {n} layers")
            hook = f"{path}.{layer % n}"
        super().__init__(model, hook, **kw)
        if on_error not in ("raise", "skip"):
            raise UsageError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.on_error = on_error
        cfg = model.config
        image_token_id = getattr(cfg, "image_token_id", None)
        if image_token_id is None:
            image_token_id = getattr(cfg, "image_token_index", None)
        self.image_token_id = image_token_id
        self.layer = layer

    def describe(self) -> dict:
        return {**super().describe(), "processor": type(self.processor).__name__, "layer": self.layer,
                "image_token_id": self.image_token_id}

    def prompt(self, question: str, with_image: bool) -> str:
        """The chat-template prompt of one user turn (image first, then the question)."""
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
        conversation = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True)

    def token_kinds(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T] kinds: IMAGE where the image token is, PAD where the mask is 0, START for a
        leading BOS token, TEXT elsewhere."""
        kinds = torch.full(input_ids.shape, int(TokenKind.TEXT), dtype=torch.uint8)
        if self.image_token_id is not None:
            kinds[input_ids == self.image_token_id] = int(TokenKind.IMAGE)
        starts = {t for t in (self.tokenizer.bos_token_id, getattr(self.tokenizer, "cls_token_id", None)) if t is not None}
        first = mask.bool().int().argmax(1)
        rows = torch.arange(input_ids.shape[0])
        is_start = torch.tensor([int(t) in starts for t in input_ids[rows, first]], dtype=torch.bool)
        kinds[rows[is_start], first[is_start]] = int(TokenKind.START)
        kinds[mask == 0] = int(TokenKind.PAD)
        return kinds

    def encode(self, items: Sequence[dict], first_id: int) -> ActivationBatch:
        prompts, images, ids, kept, skipped = [], [], [], [], []
        for i, rec in enumerate(items):
            if not isinstance(rec, dict) or not isinstance(rec.get("question"), str):
                raise UsageError(
                    f"input {first_id + i} must be a record {{'image': path, 'question': str}}, got {rec!r:.80}"
                )
            img = rec.get("image")
            try:
                if img is not None:
                    img = load_image(img) if isinstance(img, (str, os.PathLike)) else to_rgb(img)
            except ImageReadError as exc:
                if self.on_error == "raise":
                    raise
                skipped.append({"input_id": first_id + i, "input": str(rec.get("image")), "reason": str(exc)})
                continue
            prompts.append(self.prompt(rec["question"], img is not None))
            if img is not None:
                images.append(img)
            ids.append(first_id + i)
            kept.append(rec)
        if not prompts:
            e = torch.empty(0)
            return ActivationBatch(e.reshape(0, 0), e.long(), e.int(), e.to(torch.uint8), [], skipped)
        inputs = self.processor(images=images or None, text=prompts, return_tensors="pt", padding=True)
        input_ids, mask = inputs["input_ids"], inputs["attention_mask"]
        model_inputs = {k: v.to(self.device) for k, v in inputs.items() if k != "token_type_ids"}
        if "pixel_values" in model_inputs:
            model_inputs["pixel_values"] = model_inputs["pixel_values"].to(next(self.model.parameters()).dtype)
        out = self._capture(lambda: self.model(**model_inputs))
        tokens = tokens_of(out)
        if tokens.shape[:2] != input_ids.shape:
            raise UsageError(f"hook {self.hook!r} gives shape {tuple(out.shape)}, not one row per token of "
                             f"{tuple(input_ids.shape)} ids")
        kinds = self.token_kinds(input_ids, mask)
        # position in the prompt as the model numbers it: left padding shifts it, so count from the
        # first real token (left padding then has negative positions)
        first = mask.bool().int().argmax(1, keepdim=True)
        positions = torch.arange(input_ids.shape[1])[None, :] - first
        batch = rows_from_tokens(tokens, kinds, 0, positions)
        B, T = input_ids.shape
        batch.input_id = torch.as_tensor(ids, dtype=torch.int64).repeat_interleave(T)
        batch.records = []
        for b, (i, rec) in enumerate(zip(ids, kept)):
            real = input_ids[b][mask[b].bool()]
            batch.records.append({
                "input_id": i,
                "image": str(rec["image"]) if isinstance(rec.get("image"), (str, os.PathLike)) else None,
                "question": rec["question"],
                "prompt": prompts[b],
                "tokens": self.tokenizer.convert_ids_to_tokens(real.tolist()),
            })
        batch.skipped = skipped
        return self._keep(batch)
