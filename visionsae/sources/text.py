"""Text encoders: any transformers text encoder, including the text encoders of a diffusers
pipeline, a hook each: SD 1.x/2.x one CLIP; SDXL two CLIPs; SD3 two CLIPs (``text_encoder``,
``text_encoder_2``) and a T5 (``text_encoder_3``); Flux a CLIP (``text_encoder``, of which the
pipeline keeps only the pooled vector) and a T5 (``text_encoder_2``).

Prompts are tokenised the way diffusers' ``encode_prompt`` does (pad to a fixed length,
truncate, and pass an attention mask only when the encoder's config sets
``use_attention_mask``), so the rows are the activations the denoiser sees. The length is the
tokenizer's ``model_max_length`` for CLIP (77); for the T5 encoder of SD3 and Flux it is the
pipeline's ``max_sequence_length`` default (SD3: 256, Flux: 512; :func:`pipeline_max_length`).

Which tokens there are: CLIP has ``<|startoftext|>`` (START), the prompt's tokens (TEXT),
``<|endoftext|>`` (END) and padding (PAD). T5 has no start token: TEXT from the first row, its
``</s>`` END, then ``<pad>`` PAD. SD3 and Flux run T5 without an attention mask, so its pad
rows attend to the prompt (T5's attention is bidirectional), carry it, and reach the
transformer; they are kept unless ``skip_padding`` (or ``--kinds text,end``) leaves them out.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch
from torch import nn

from visionsae.errors import UsageError
from visionsae.sources.base import ActivationSource, rows_from_tokens, tokens_of
from visionsae.store import ActivationBatch, TokenKind

_HUGE = 10**6  # tokenizers without a length limit report ~1e30 as model_max_length
ENCODERS = {1: "text_encoder", 2: "text_encoder_2", 3: "text_encoder_3"}  # a pipeline's text encoders by number


def encoder_name(encoder: int | str) -> str:
    """``text_encoder``, ``text_encoder_2`` ... of ``encoder`` given as 1, 2, 3, "2" or a name."""
    if isinstance(encoder, str) and encoder.isdigit():
        encoder = int(encoder)
    return ENCODERS.get(encoder, f"text_encoder_{encoder}") if isinstance(encoder, int) else str(encoder)


def pipeline_max_length(pipeline_class: type, model_type: str) -> int | None:
    """The length a diffusers pipeline pads an encoder's prompts to, where it is not the
    tokenizer's: for an encoder that is not CLIP (``model_type`` of its config, e.g. ``t5``), the
    default ``max_sequence_length`` of the pipeline's ``encode_prompt`` (SD3: 256, Flux: 512).
    None where the pipeline has no such argument (SD, SDXL) or the encoder is a CLIP (77)."""
    if str(model_type).startswith("clip"):
        return None
    encode = getattr(pipeline_class, "encode_prompt", None)
    param = inspect.signature(encode).parameters.get("max_sequence_length") if encode is not None else None
    if param is None or not isinstance(param.default, int):
        return None
    return int(param.default)


def check_prompt_text(prompt: object, what: str = "the prompt") -> str:
    """``prompt`` if it is a string of valid text, else a UsageError naming ``what``: a
    non-string, or a string holding a lone surrogate (what Python makes of bytes that are not
    UTF-8 on a command line), which no tokenizer can read."""
    if not isinstance(prompt, str):
        raise UsageError(f"{what} is a {type(prompt).__name__}, expected a prompt string")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = prompt[exc.start]
        shown = f"byte {ord(bad) - 0xDC00:#04x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"U+{ord(bad):04X}"
        raise UsageError(f"{what} holds {shown} at character {exc.start + 1}, which is not valid UTF-8 text: "
                         f"{prompt[:60]!r}") from None
    return prompt


class TextEncoderSource(ActivationSource):
    """Activations of a text encoder at one hook point, one row per token.

    Parameters
    ----------
    text_encoder:
        A transformers text model (``CLIPTextModel``, ``CLIPTextModelWithProjection``,
        ``BertModel``, ``T5EncoderModel`` ...).
    tokenizer:
        Its tokenizer.
    hook:
        Module path inside ``text_encoder`` (``text_model.encoder.layers.8``,
        ``encoder.layer.3``, ``text_model.final_layer_norm``).
    max_length:
        Length to pad and truncate to; default the tokenizer's ``model_max_length`` (77 for CLIP;
        :meth:`from_pipeline` passes SD3's / Flux's ``max_sequence_length`` for their T5).
    padding:
        ``"max_length"`` (as the pipelines) or ``"longest"`` (pad to the longest prompt of the batch;
        faster for encoders with a 512-token limit, but then a token's activations can depend on the
        batch for encoders run without an attention mask).
    attention_mask:
        Pass the attention mask to the encoder. ``None`` follows diffusers: only when
        ``text_encoder.config.use_attention_mask`` is true (CLIP and a BERT inside a
        StableDiffusionPipeline are run without one).
    skip_start:
        Leave out the start token's row (CLIP's ``<|startoftext|>`` is an attention sink with a
        huge norm).
    skip_padding:
        Leave out the rows of padding tokens.
    keep_kinds, device, stop_early:
        As :class:`~visionsae.sources.base.ActivationSource`.
    """

    input_type = "text"
    prepare_in_thread = False  # tokenising a batch is cheap (measured: extraction 0.89-0.94 of the bare forward with the thread, 0.94-1.02 without)

    def __init__(
        self,
        text_encoder: nn.Module,
        tokenizer: Any,
        hook: str,
        *,
        max_length: int | None = None,
        padding: str = "max_length",
        attention_mask: bool | None = None,
        skip_start: bool = False,
        skip_padding: bool = False,
        **kw,
    ):
        super().__init__(text_encoder, hook, **kw)
        if padding not in ("max_length", "longest"):
            raise UsageError(f"padding must be 'max_length' or 'longest', got {padding!r}")
        self.tokenizer = tokenizer
        if max_length is None:
            max_length = int(tokenizer.model_max_length)
            if max_length > _HUGE:
                raise UsageError(
                    f"{type(tokenizer).__name__} sets no length limit; pass max_length (e.g. 77)"
                )
        self.max_length = max_length
        self.padding = padding
        if attention_mask is None:
            attention_mask = bool(getattr(getattr(text_encoder, "config", None), "use_attention_mask", False))
        self.attention_mask = attention_mask
        self.skip_start, self.skip_padding = skip_start, skip_padding
        self._start_ids = {t for t in (tokenizer.bos_token_id, tokenizer.cls_token_id) if t is not None}
        self._end_ids = {t for t in (tokenizer.eos_token_id, tokenizer.sep_token_id) if t is not None}

    @classmethod
    def from_pipeline(cls, pipe: Any, hook: str, *, encoder: int | str = 1, **kw) -> "TextEncoderSource":
        """The text encoder of a diffusers pipeline with its tokenizer: ``encoder=1`` is
        ``pipe.text_encoder`` with ``pipe.tokenizer``, ``2`` is ``text_encoder_2`` (SDXL's second
        CLIP, Flux's T5), ``3`` is ``text_encoder_3`` (SD3's T5); a name such as
        ``"text_encoder_2"`` works too. A T5's prompts are padded to the pipeline's default
        ``max_sequence_length`` unless ``max_length`` is given."""
        name = encoder_name(encoder)
        tok_name = name.replace("text_encoder", "tokenizer")
        enc, tok = getattr(pipe, name, None), getattr(pipe, tok_name, None)
        if enc is None or tok is None:
            have = [n for n in ENCODERS.values() if getattr(pipe, n, None) is not None]
            raise UsageError(f"{type(pipe).__name__} has no {name} with a {tok_name} (it has {have})")
        if kw.get("max_length") is None:
            kw["max_length"] = pipeline_max_length(type(pipe), getattr(enc.config, "model_type", ""))
        return cls(enc, tok, hook, **kw)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "tokenizer": type(self.tokenizer).__name__,
            "max_length": self.max_length,
            "padding": self.padding,
            "attention_mask": self.attention_mask,
            "skip_start": self.skip_start,
            "skip_padding": self.skip_padding,
        }

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask as the pipeline makes them."""
        return self.tokenizer(
            list(prompts),
            padding=self.padding,
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )

    def token_kinds(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T] TokenKind of each token: START, TEXT, END, PAD (padding is where the tokenizer's
        attention mask is 0, so a pad id equal to the end id is still told apart)."""
        kinds = torch.full(input_ids.shape, int(TokenKind.TEXT), dtype=torch.uint8)
        kinds[mask == 0] = int(TokenKind.PAD)
        real = mask.bool()
        first = real.int().argmax(1)
        last = mask.shape[1] - 1 - real.flip(1).int().argmax(1)
        rows = torch.arange(input_ids.shape[0])
        start_ok = torch.tensor([int(i) in self._start_ids for i in input_ids[rows, first]], dtype=torch.bool)
        end_ok = torch.tensor([int(i) in self._end_ids for i in input_ids[rows, last]], dtype=torch.bool)
        kinds[rows[start_ok], first[start_ok]] = int(TokenKind.START)
        kinds[rows[end_ok], last[end_ok]] = int(TokenKind.END)
        return kinds

    def encode(self, prompts: Sequence[str], first_id: int) -> ActivationBatch:
        return self.run(self.prepare(prompts, first_id))

    def prepare(self, prompts: Sequence[str], first_id: int) -> tuple:
        for i, p in enumerate(prompts):
            check_prompt_text(p, f"input {first_id + i}")
        tok = self.tokenize(prompts)
        ids, mask = tok["input_ids"], tok["attention_mask"]
        full_lengths = mask.sum(1).tolist()
        # Only a prompt whose tokens fill its row can have been cut: those alone are tokenised
        # again, uncut, to tell (the records say which prompts the encoder saw truncated).
        filled = [i for i, n in enumerate(full_lengths) if n >= ids.shape[1]]
        if filled:
            for i, row in zip(filled, self.tokenizer([prompts[i] for i in filled], truncation=False)["input_ids"]):
                full_lengths[i] = len(row)
        records = [self._record(first_id + i, p, ids[i], mask[i], full_lengths[i]) for i, p in enumerate(prompts)]
        return ids, mask, self.token_kinds(ids, mask), records, first_id

    def run(self, prepared: tuple) -> ActivationBatch:
        ids, mask, kinds, records, first_id = prepared
        kwargs = {"input_ids": ids.to(self.device)}
        if self.attention_mask:
            kwargs["attention_mask"] = mask.to(self.device)
        out = self._capture(lambda: self.model(**kwargs))
        tokens = tokens_of(out)
        if tokens.shape[:2] != ids.shape:
            raise UsageError(
                f"hook {self.hook!r} gives shape {tuple(out.shape)}, not one row per token of {tuple(ids.shape)} ids"
            )
        batch = rows_from_tokens(tokens, kinds, first_id)
        batch.records = records
        drop = []
        if self.skip_start:
            drop.append(int(TokenKind.START))
        if self.skip_padding:
            drop.append(int(TokenKind.PAD))
        if drop:
            batch = batch.select(~torch.isin(batch.kind, torch.tensor(drop, dtype=torch.uint8)))
        return self._keep(batch)

    def _record(self, input_id: int, prompt: str, ids: torch.Tensor, mask: torch.Tensor, full_length: int) -> dict:
        n = int(mask.sum())
        return {
            "input_id": input_id,
            "text": prompt,
            "tokens": self.tokenizer.convert_ids_to_tokens(ids[:n].tolist()),
            "truncated": full_length > n,
        }
