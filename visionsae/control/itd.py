"""ItD (Interpret then Deactivate): erase concepts from a text encoder's activations.

The SAE at one text-encoder layer classifies each prompt per concept (zero-shot, from the
same code); for a flagged prompt only, the flagged concepts' features are deactivated on
the tokens where they fire, the SAE's reconstruction error kept. A prompt that carries no
target concept passes through bit-identical. The eraser is a :class:`FeatureEdit` whose gate
is a :class:`ConceptClassifier`, plus a hook before the encoder for the gates below.

A second gate reads each prompt's *normal form* (:mod:`visionsae.concepts.normalize`:
homoglyphs, spelled-out letters, leetspeak and misspellings of the concepts' words read as
those words). When a prompt's own activations do not carry a concept but its normal form's
do, the encoder is given the normal form for that prompt, and the concept is erased from it:
"a photo of a snaeker" is drawn as "a photo of a sneaker" would be with sneakers erased.
The gate needs the encoder's tokenizer (``tokenizer=``); prompts whose normal form is their
own text cost nothing.

A third gate, the concept's *name*: a prompt that says a concept's name, singular or plural
("sneakers", "A PHOTO OF A SNEAKER", "a polaroid of sneaker"), in its own text or its normal
form, is flagged for it whatever its score (``name_gate=False`` switches that off). It chose
nothing from data: the name is what a user asks to erase. A name that modifies another name
("a dress shirt") does not count.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..concepts import ConceptClassifier, ConceptSet
from ..concepts.normalize import NameMatcher, Normalizer, fold_characters
from ..sae import SparseAutoencoder
from ..sources.base import output_tensor
from .edit import EditSpec, FeatureEdit
from ..errors import UsageError


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass once the hooked layer has run."""


class ItDEraser(FeatureEdit):
    """Erase ``names`` (default: every concept of the set) from ``text_encoder``: a
    :class:`FeatureEdit` at the hook point, gated by the concepts' classifier.

    ``mode`` / ``value``: how to deactivate (``zero``; ``scale`` by a negative ``value``
    pushes the features the other way). The hook point is ``hook``, else the concept set's,
    else the SAE's. With ``tokenizer`` (the encoder's) and concepts that have vocabularies,
    prompts are also classified in their normal form (``normalize=False`` switches that off),
    and a prompt that says a concept's name is flagged for it (``name_gate=False``: not).
    Attach with :meth:`attach` or ``with eraser:``; ``enabled`` toggles it.
    """

    def __init__(
        self,
        text_encoder: nn.Module,
        sae: SparseAutoencoder,
        concepts: ConceptSet,
        names: Sequence[str] | None = None,
        hook: str | None = None,
        mode: str = "zero",
        value: float = 0.0,
        keep_error: bool = True,
        tokenizer: Any = None,
        normalize: bool = True,
        name_gate: bool = True,
    ) -> None:
        hook = hook or concepts.hook or sae.cfg.hook
        if not hook:
            raise UsageError("no hook point: pass hook=..., or use an SAE / concept set that records one")
        self.classifier = ConceptClassifier(sae, concepts, names)
        spec = EditSpec(self.classifier.feature_ids.tolist(), mode=mode, value=value, tokens="active", keep_error=keep_error)
        super().__init__(text_encoder, hook, sae, spec, gate=self._gate)
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        words = sorted({w for n in self.classifier.names for w in concepts[n].vocabulary})
        self.normalizer = Normalizer(words) if (normalize and tokenizer is not None and words) else None
        self.matcher = NameMatcher(self.classifier.names) if (name_gate and tokenizer is not None) else None
        self._settings = {"names": list(self.classifier.names), "hook": hook, "mode": mode, "value": float(value),
                          "keep_error": bool(keep_error), "normalize": bool(normalize), "name_gate": bool(name_gate)}
        self._named: torch.Tensor | None = None  # [B, C] of the coming forward: prompts that say a name
        # the prompts as typed, set by a pipeline around its encode_prompt: a homoglyph the
        # tokenizer turns into [UNK] ("sneakerѕ" with a Cyrillic ѕ) is read from these
        self.raw_prompts: list[list[str]] = []
        self._pre_handle = None
        self._reading = False  # inside the normal-form gate's own encoder call
        self._read_as: dict[int, str] = {}  # rows of the coming forward given in their normal form

    def settings(self) -> dict:
        """The constructor's settings as JSON-able values (names resolved, hook found), so that
        ``ItDEraser.from_settings(encoder, sae, concepts, eraser.settings(), tokenizer)`` rebuilds it."""
        return dict(self._settings, names=list(self._settings["names"]))

    @classmethod
    def from_settings(cls, text_encoder: nn.Module, sae: SparseAutoencoder, concepts: ConceptSet, settings: dict,
                      tokenizer: Any = None) -> "ItDEraser":
        """The eraser that :meth:`settings` describes, on ``text_encoder`` with ``sae`` and ``concepts``."""
        return cls(text_encoder, sae, concepts, tokenizer=tokenizer, **settings)

    @property
    def names(self) -> list[str]:
        return self.classifier.names

    def attach(self) -> "ItDEraser":
        super().attach()
        if (self.normalizer is not None or self.matcher is not None) and self._pre_handle is None:
            self._pre_handle = self.text_encoder.register_forward_pre_hook(self._normal_form_gate, with_kwargs=True)
        return self

    def detach(self) -> None:
        super().detach()
        if self._pre_handle is not None:
            self._pre_handle.remove()
            self._pre_handle = None

    def pop_decisions(self) -> list[dict]:
        """Decisions recorded since the last call (one dict per prompt encoded); a prompt read
        in its normal form has it under ``"read_as"``."""
        out, self.classifier.decisions = self.classifier.decisions, []
        return out

    @torch.no_grad()
    def flag(self, prompts: Sequence[str], batch_size: int = 64) -> list[dict]:
        """Decide ``prompts`` as a pipeline would (both gates), without generating: each is
        tokenised with the encoder's tokenizer, padded to its ``model_max_length``, and encoded
        with the eraser attached. Returns one decision dict per prompt (as :meth:`pop_decisions`)."""
        if self.tokenizer is None:
            raise UsageError("flag() needs the encoder's tokenizer: pass tokenizer= to ItDEraser")
        attached = self._pre_handle is not None or self._handle is not None
        pending = self.pop_decisions()  # a caller's decisions not yet popped stay theirs
        out: list[dict] = []
        if not attached:
            self.attach()
        try:
            for i in range(0, len(prompts), batch_size):
                chunk = list(prompts[i : i + batch_size])
                enc = self.tokenizer(chunk, padding="max_length", max_length=self.tokenizer.model_max_length,
                                     truncation=True, return_tensors="pt")
                device = next(self.text_encoder.parameters()).device
                self.raw_prompts = [chunk]
                self.text_encoder(enc.input_ids.to(device))
                out += self.pop_decisions()
        finally:
            self.raw_prompts = []
            if not attached:
                self.detach()
            self.classifier.decisions = pending + self.classifier.decisions
        return out

    # ------------------------------------------------------------------ gates
    def _gate(self, h: torch.Tensor, code) -> torch.Tensor:
        first = len(self.classifier.decisions)
        named = self._named if self._named is not None and self._named.shape[0] == h.shape[0] else None
        out = self.classifier.gate(h, code, also=named)
        for row, text in self._read_as.items():
            if first + row < len(self.classifier.decisions):
                self.classifier.decisions[first + row]["read_as"] = text
        self._read_as, self._named = {}, None
        return out

    def _normal_form_gate(self, module: nn.Module, args: tuple, kwargs: dict):
        """Before the encoder runs: note which prompts say a concept's name (in their own text or
        their normal form), and give the encoder the normal form of every prompt whose normal
        form (but not necessarily its own text) carries a concept."""
        if self._reading:
            return None
        self._read_as, self._named = {}, None
        if not self.enabled:
            return None
        positional = bool(args)
        ids = args[0] if positional else kwargs.get("input_ids")
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
            return None  # called with embeddings: nothing to read
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        raw = self._typed(ids)
        read = raw if raw is not None else texts
        if self.normalizer is not None:
            normal = [self.normalizer(t) for t in read]
        else:
            normal = [fold_characters(t) if raw is not None else t for t in read]
        names = self.classifier.names
        if self.matcher is not None:
            said = [self.matcher(t) | self.matcher(n) for t, n in zip(texts, normal)]
            self._named = torch.tensor([[c in s for c in names] for s in said], dtype=torch.bool).reshape(len(texts), len(names))
        if raw is None:
            changed = [i for i, (a, b) in enumerate(zip(texts, normal)) if a != b]
        else:  # the normal form of the typed prompt: changed where it tokenises differently
            again = self.tokenizer(normal, padding="max_length", max_length=ids.shape[1], truncation=True,
                                   return_tensors="pt").input_ids.to(ids.device)
            changed = [i for i in range(len(normal)) if not torch.equal(again[i], ids[i])]
        if not changed:
            return None
        enc = self.tokenizer([normal[i] for i in changed], padding="max_length", max_length=ids.shape[1],
                             truncation=True, return_tensors="pt")
        new_ids = enc.input_ids.to(ids.device)
        mask = kwargs.get("attention_mask")
        new_mask = enc.attention_mask.to(mask.device, mask.dtype) if isinstance(mask, torch.Tensor) else None
        flagged = self._flags(new_ids, new_mask).any(-1)
        if self._named is not None:  # a misspelt name ("snaeker") is read as the name, then erased
            flagged = flagged | torch.tensor([bool(self.matcher(normal[i])) for i in changed])
        take = [j for j, f in enumerate(flagged.tolist()) if f]
        if not take:
            return None
        rows = torch.tensor([changed[j] for j in take], device=ids.device)
        ids = ids.clone()
        ids[rows] = new_ids[take]
        if new_mask is not None:
            kwargs = dict(kwargs, attention_mask=mask.clone().index_put_((rows,), new_mask[take]))
        self._read_as = {changed[j]: normal[changed[j]] for j in take}
        if positional:
            return (ids, *args[1:]), kwargs
        return args, dict(kwargs, input_ids=ids)

    def _typed(self, ids: torch.Tensor) -> list[str] | None:
        """The typed prompts of this forward: the one list of :attr:`raw_prompts` that
        tokenises to ``ids`` exactly (else None: the negative prompts, or embeddings made elsewhere)."""
        for prompts in self.raw_prompts:
            if len(prompts) != ids.shape[0]:
                continue
            enc = self.tokenizer(list(prompts), padding="max_length", max_length=ids.shape[1], truncation=True,
                                 return_tensors="pt").input_ids
            if enc.shape == ids.shape and torch.equal(enc.to(ids.device), ids):
                return list(prompts)
        return None

    @torch.no_grad()
    def _flags(self, ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Which concepts the prompts ``ids`` carry ``[B, C]``: the encoder run up to the hooked
        layer, its activations classified (nothing recorded, nothing edited)."""
        captured: dict[str, torch.Tensor] = {}

        def grab(module, inputs, output):
            captured["h"] = output_tensor(output)
            raise _Stop

        handle = self.module.register_forward_hook(grab)
        self.enabled, self._reading = False, True  # the encoder's own run, unedited
        try:
            kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
            self.text_encoder(ids, **kwargs)
        except _Stop:
            pass
        finally:
            handle.remove()
            self.enabled, self._reading = True, False
        h = captured["h"]
        h3 = h[:, None, :] if h.ndim == 2 else h
        _, flagged = self.classifier.classify(h3.to(self.sae.W_enc.dtype))
        return flagged
