"""Drop-in ItD pipelines: Stable Diffusion (1.x / 2.x, and the zoo) and SDXL with concepts erased.

    pipe = ItDStableDiffusionPipeline.from_pretrained(model_id, sae=sae_dir, concepts="concepts.json")
    out = pipe("a photo of a sneaker", num_inference_steps=20)
    out.images, out.concept_decisions   # per prompt: {concept: {score, threshold, flagged}}

or wrap a pipeline you already have: ``ItDStableDiffusionPipeline.wrap(pipe, sae, concepts)``.
Every argument of the parent's ``__call__`` works as before. Only the positive prompt goes
through the eraser (negative prompts are left as they are unless ``erase_negative=True``):
the positive and negative embeddings are computed in two text-encoder calls, which give
the same numbers as the parent's one ``encode_prompt``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.pipelines.stable_diffusion_xl import StableDiffusionXLPipelineOutput

from visionsae.concepts import ConceptSet
from visionsae.control.edit import FeatureEdit
from visionsae.control.itd import ItDEraser
from visionsae.control.steer import steering_edit
from visionsae.sae import SparseAutoencoder

from visionsae.compat import diffusers_errors_only


def _load_sae(sae: SparseAutoencoder | str | Path) -> SparseAutoencoder:
    return sae if isinstance(sae, SparseAutoencoder) else SparseAutoencoder.from_pretrained(sae)


def _load_concepts(concepts: ConceptSet | str | Path) -> ConceptSet:
    return concepts if isinstance(concepts, ConceptSet) else ConceptSet.load(concepts)


@dataclass
class ItDPipelineOutput(StableDiffusionPipelineOutput):
    """The parent's output plus, per prompt, the classifier's decision for each concept."""

    concept_decisions: list[dict[str, dict[str, Any]]] = field(default_factory=list)


@dataclass
class ItDXLPipelineOutput(StableDiffusionXLPipelineOutput):
    """SDXL's output plus, per prompt, each encoder's decisions for each concept."""

    concept_decisions: list[dict[str, dict[str, Any]]] = field(default_factory=list)


class _ItDMixin:
    """What the SD and SDXL pipelines share: erasers, their devices, decisions."""

    erase_negative: bool = False
    """Also erase from negative prompts (off: negative prompts are left as they are)."""
    itd_enabled: bool = True
    """Switch erasure off to get the stock pipeline's output from the same object."""

    @property
    def _erasers(self) -> list[tuple[str, ItDEraser]]:
        # created on first use: diffusers builds pipelines from __init__'s signature, which
        # must stay the parent's
        if "_itd_erasers" not in self.__dict__:
            self.__dict__["_itd_erasers"] = []
        return self.__dict__["_itd_erasers"]

    @property
    def _steers(self) -> list[tuple[str, FeatureEdit]]:
        if "_itd_steers" not in self.__dict__:
            self.__dict__["_itd_steers"] = []
        return self.__dict__["_itd_steers"]

    def set_steering(self, sae, features: Sequence[int], strength: str | float = "medium",
                     encoder_name: str = "text_encoder", hook: str | None = None) -> None:
        """Steer the prompt embedding along SAE ``features`` ("gentle", "medium", "strong"
        or a float); replaces any earlier steering. Negative prompts are left alone."""
        self.clear_steering()
        encoder = getattr(self, encoder_name)
        sae = _load_sae(sae).to(encoder.device)
        hook = hook or sae.cfg.hook
        if not hook:
            raise ValueError("no hook point: pass hook=..., or use an SAE that records one")
        edit = steering_edit(encoder, hook, sae, features, strength)
        edit.enabled = False
        edit.attach()
        self._steers.append((encoder_name, edit))

    def clear_steering(self) -> None:
        for _, e in self._steers:
            e.detach()
        self._steers.clear()

    def _add_eraser(self, encoder_name: str, sae, concepts, names=None, hook=None, mode="zero", value=0.0) -> None:
        encoder = getattr(self, encoder_name)
        sae = _load_sae(sae).to(encoder.device)
        eraser = ItDEraser(encoder, sae, _load_concepts(concepts), names=names, hook=hook, mode=mode, value=value)
        eraser.enabled = False  # switched on only around the positive prompt's encoding
        eraser.attach()
        self._erasers.append((encoder_name, eraser))

    def remove_erasers(self) -> None:
        for _, e in self._erasers:
            e.detach()
        self._erasers.clear()

    def to(self, *args, **kwargs):
        out = super().to(*args, **kwargs)
        for name, edit in self._edits():
            # the SAE follows its encoder's device; it stays in its own dtype (edits cast back)
            edit.sae.to(getattr(self, name).device)
        return out

    def _edits(self) -> list[tuple[str, FeatureEdit]]:
        return [(n, e.edit) for n, e in self._erasers] + list(self._steers)

    def _set_enabled(self, on: bool) -> None:
        for _, edit in self._edits():
            edit.enabled = on

    def _decisions(self) -> list[dict]:
        per_encoder = [(name, e.pop_decisions()) for name, e in self._erasers]
        if not per_encoder:
            return []
        if len(per_encoder) == 1:
            return per_encoder[0][1]
        n = max(len(d) for _, d in per_encoder)
        return [{name: (d[i] if i < len(d) else {}) for name, d in per_encoder} for i in range(n)]

    def _active(self) -> bool:
        return self.itd_enabled and bool(self._edits())

    def _check_embeds(self, prompt_embeds) -> None:
        if prompt_embeds is not None and self._edits():
            hooks = ", ".join(repr(e.hook) for _, e in self._edits())
            raise ValueError(
                f"prompt_embeds were passed in, but ItD edits the text encoder at {hooks}, inside the "
                "encoder; its output embeddings no longer hold those activations. Pass `prompt` "
                "instead, or build the embeddings with this pipeline's encode_prompt."
            )


class ItDStableDiffusionPipeline(_ItDMixin, StableDiffusionPipeline):
    """``StableDiffusionPipeline`` that erases concepts with an SAE on its text encoder."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, sae=None, concepts=None, erase: Sequence[str] | None = None,
                        hook: str | None = None, mode: str = "zero", value: float = 0.0, **kwargs):
        pipe = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if sae is not None or concepts is not None:
            if sae is None or concepts is None:
                raise ValueError("pass both sae= and concepts= (or neither, and call set_eraser later)")
            pipe.set_eraser(sae, concepts, erase, hook=hook, mode=mode, value=value)
        return pipe

    @classmethod
    def wrap(cls, pipe: StableDiffusionPipeline, sae, concepts, erase: Sequence[str] | None = None, **eraser_kwargs):
        """An ItD pipeline sharing ``pipe``'s components (nothing is copied)."""
        with diffusers_errors_only():  # from_pipe re-casts to the same dtype and warns
            new = cls.from_pipe(pipe)
        new.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
        new.set_eraser(sae, concepts, erase, **eraser_kwargs)
        return new

    def set_eraser(self, sae, concepts, erase: Sequence[str] | None = None, hook: str | None = None,
                   mode: str = "zero", value: float = 0.0) -> None:
        """Erase the concepts ``erase`` (default: all of the set) from now on."""
        self.remove_erasers()
        self._add_eraser("text_encoder", sae, concepts, erase, hook, mode, value)

    def encode_prompt(self, prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt=None,
                      prompt_embeds=None, negative_prompt_embeds=None, lora_scale=None, clip_skip=None):
        if not self._active():
            return super().encode_prompt(prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt,
                                         prompt_embeds, negative_prompt_embeds, lora_scale, clip_skip)
        self._check_embeds(prompt_embeds)
        common = dict(lora_scale=lora_scale, clip_skip=clip_skip)
        self._set_enabled(True)
        try:
            prompt_embeds, _ = super().encode_prompt(prompt, device, num_images_per_prompt, False, prompt_embeds=prompt_embeds, **common)
        finally:
            self._set_enabled(False)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            batch = prompt_embeds.shape[0] // num_images_per_prompt
            negative = negative_prompt if negative_prompt is not None else ""
            if isinstance(negative, str):
                negative = [negative] * batch
            elif len(negative) != batch:
                raise ValueError(f"negative_prompt has {len(negative)} entries but there are {batch} prompts")
            self._set_enabled(self.erase_negative)
            try:
                negative_prompt_embeds, _ = super().encode_prompt(negative, device, num_images_per_prompt, False, **common)
            finally:
                self._set_enabled(False)
        return prompt_embeds, negative_prompt_embeds

    def __call__(self, *args, **kwargs):
        self._decisions()  # drop anything left from an earlier call
        return_dict = kwargs.get("return_dict", True)
        out = super().__call__(*args, **kwargs)
        decisions = self._decisions()
        if not return_dict:
            return (*out, decisions)
        return ItDPipelineOutput(images=out.images, nsfw_content_detected=out.nsfw_content_detected, concept_decisions=decisions)


class ItDStableDiffusionXLPipeline(_ItDMixin, StableDiffusionXLPipeline):
    """``StableDiffusionXLPipeline`` with an SAE (and concept set) on each text encoder."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, sae=None, concepts=None, sae_2=None, concepts_2=None,
                        erase: Sequence[str] | None = None, mode: str = "zero", value: float = 0.0, **kwargs):
        pipe = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if sae is not None or sae_2 is not None:
            pipe.set_eraser(sae, concepts, sae_2, concepts_2, erase, mode=mode, value=value)
        return pipe

    @classmethod
    def wrap(cls, pipe: StableDiffusionXLPipeline, sae=None, concepts=None, sae_2=None, concepts_2=None,
             erase: Sequence[str] | None = None, **eraser_kwargs):
        with diffusers_errors_only():  # from_pipe re-casts to the same dtype and warns
            new = cls.from_pipe(pipe)
        new.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
        new.set_eraser(sae, concepts, sae_2, concepts_2, erase, **eraser_kwargs)
        return new

    def set_eraser(self, sae=None, concepts=None, sae_2=None, concepts_2=None, erase: Sequence[str] | None = None,
                   mode: str = "zero", value: float = 0.0) -> None:
        """An SAE and concept set for ``text_encoder`` and/or ``text_encoder_2``."""
        self.remove_erasers()
        if sae is None and sae_2 is None:
            raise ValueError("pass an SAE for text_encoder (sae=) and/or text_encoder_2 (sae_2=)")
        for name, s, c in (("text_encoder", sae, concepts), ("text_encoder_2", sae_2, concepts_2)):
            if s is not None:
                if c is None:
                    raise ValueError(f"an SAE for {name} needs its concept set")
                names = [n for n in erase if n in _load_concepts(c).concepts] if erase is not None else None
                self._add_eraser(name, s, c, names, None, mode, value)

    def encode_prompt(self, prompt, prompt_2=None, device=None, num_images_per_prompt=1, do_classifier_free_guidance=True,
                      negative_prompt=None, negative_prompt_2=None, prompt_embeds=None, negative_prompt_embeds=None,
                      pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None, lora_scale=None, clip_skip=None):
        if not self._active():
            return super().encode_prompt(prompt, prompt_2, device, num_images_per_prompt, do_classifier_free_guidance,
                                         negative_prompt, negative_prompt_2, prompt_embeds, negative_prompt_embeds,
                                         pooled_prompt_embeds, negative_pooled_prompt_embeds, lora_scale, clip_skip)
        self._check_embeds(prompt_embeds)
        common = dict(device=device, num_images_per_prompt=num_images_per_prompt, lora_scale=lora_scale, clip_skip=clip_skip)
        self._set_enabled(True)
        try:
            prompt_embeds, _, pooled_prompt_embeds, _ = super().encode_prompt(
                prompt, prompt_2, do_classifier_free_guidance=False, prompt_embeds=prompt_embeds,
                pooled_prompt_embeds=pooled_prompt_embeds, **common)
        finally:
            self._set_enabled(False)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            # The parent's rule: no negative prompt and force_zeros_for_empty_prompt -> zeros
            if negative_prompt is None and negative_prompt_2 is None and self.config.force_zeros_for_empty_prompt:
                negative_prompt_embeds = torch.zeros_like(prompt_embeds)
                negative_pooled_prompt_embeds = torch.zeros_like(pooled_prompt_embeds)
            else:
                batch = prompt_embeds.shape[0] // num_images_per_prompt
                neg = negative_prompt or ""
                neg_2 = negative_prompt_2 or neg
                neg = [neg] * batch if isinstance(neg, str) else neg
                neg_2 = [neg_2] * batch if isinstance(neg_2, str) else neg_2
                self._set_enabled(self.erase_negative)
                try:
                    negative_prompt_embeds, _, negative_pooled_prompt_embeds, _ = super().encode_prompt(
                        neg, neg_2, do_classifier_free_guidance=False, **common)
                finally:
                    self._set_enabled(False)
        return prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds

    def __call__(self, *args, **kwargs):
        self._decisions()
        return_dict = kwargs.get("return_dict", True)
        out = super().__call__(*args, **kwargs)
        decisions = self._decisions()
        if not return_dict:
            return (*out, decisions)
        return ItDXLPipelineOutput(images=out.images, concept_decisions=decisions)
