"""Drop-in ItD pipelines: Stable Diffusion (1.x / 2.x, and the zoo), SDXL, SD3 and Flux with
concepts erased.

    pipe = ItDStableDiffusionPipeline.from_pretrained(model_id, sae=sae_dir, concepts="concepts.json")
    out = pipe("a photo of a sneaker", num_inference_steps=20)
    out.images, out.concept_decisions   # per prompt: {concept: {score, threshold, flagged}}

or wrap a pipeline you already have: ``ItDStableDiffusionPipeline.wrap(pipe, sae, concepts)``.
Pipelines with several text encoders take an SAE and a concept set per encoder (``sae=`` /
``concepts=`` for ``text_encoder``, ``sae_2=`` / ``concepts_2=``, ``sae_3=`` / ``concepts_3=``):
SDXL its two CLIPs; SD3 its two CLIPs and its T5 (``text_encoder_3``); Flux its CLIP (of which
it keeps only the pooled vector) and its T5 (``text_encoder_2``). Their decisions come per
prompt as ``{encoder: {concept: ...}}``.

The parent's contract holds: ``__call__``, ``encode_prompt`` and ``save_pretrained`` have the
parent's signatures and run the parent's code (its argument checks and errors included);
the edits are switched on around the text encoder's forward that encodes the positive
prompt (diffusers encodes it before the negative one; Flux encodes its true-CFG negative
prompt in a second ``encode_prompt``), so negative prompts are left as they are unless
``erase_negative=True``. ``save_pretrained`` writes the SAE(s), concept
set(s) and settings in ``itd/`` beside the components; ``from_pretrained`` of the folder
restores the erasers, and plain ``DiffusionPipeline.from_pretrained`` loads it as the stock
pipeline (``model_index.json`` names the stock class).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Sequence

from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput
from diffusers.pipelines.stable_diffusion_xl import StableDiffusionXLPipelineOutput

from visionsae.compat import diffusers_errors_only
from visionsae.errors import UsageError

from ._itd_base import PARTS_DIR, _ItDMixin, _parents_signature  # noqa: F401 (PARTS_DIR: the itd/ folder name)
from ._parts import as_concepts



@dataclass
class ItDPipelineOutput(StableDiffusionPipelineOutput):
    """The parent's output plus, per prompt, the classifier's decision for each concept."""

    concept_decisions: list[dict[str, dict[str, Any]]] = field(default_factory=list)


@dataclass
class ItDXLPipelineOutput(StableDiffusionXLPipelineOutput):
    """SDXL's output plus, per prompt, each encoder's decisions for each concept."""

    concept_decisions: list[dict[str, dict[str, Any]]] = field(default_factory=list)


@dataclass
class ItDSD3PipelineOutput(StableDiffusion3PipelineOutput):
    """SD3's output plus, per prompt, each encoder's decisions for each concept."""

    concept_decisions: list[dict[str, dict[str, Any]]] = field(default_factory=list)


@dataclass
class ItDFluxPipelineOutput(FluxPipelineOutput):
    """Flux's output plus, per prompt, each encoder's decisions for each concept."""

    concept_decisions: list[dict[str, dict[str, Any]]] = field(default_factory=list)


@_parents_signature
class ItDStableDiffusionPipeline(_ItDMixin, StableDiffusionPipeline):
    """``StableDiffusionPipeline`` that erases concepts with an SAE on its text encoder."""

    _parent = StableDiffusionPipeline
    _output = ItDPipelineOutput

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, sae=None, concepts=None, erase: Sequence[str] | None = None,
                        hook: str | None = None, mode: str = "zero", value: float = 0.0, **kwargs):
        """The parent's ``from_pretrained``; with ``sae`` and ``concepts``, erase ``erase``
        (default: every concept of the set). Without them, a folder written by this class's
        ``save_pretrained`` comes back with its erasers and steering."""
        pipe = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if sae is not None or concepts is not None:
            if sae is None or concepts is None:
                raise UsageError("pass both sae= and concepts= (or neither, and call set_eraser later)")
            pipe.set_eraser(sae, concepts, erase, hook=hook, mode=mode, value=value)
        else:
            pipe._load_parts(pretrained_model_name_or_path)
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
        self._add_eraser("text_encoder", sae, concepts, names=erase, hook=hook, mode=mode, value=value)


class _ItDEncodersMixin(_ItDMixin):
    """Pipelines with several text encoders (SDXL, SD3, Flux): an SAE and a concept set per
    encoder, given to ``set_eraser`` (and so to ``from_pretrained`` and ``wrap``) as ``sae`` /
    ``concepts`` for ``text_encoder``, ``sae_2`` / ``concepts_2`` for ``text_encoder_2``,
    ``sae_3`` / ``concepts_3`` for ``text_encoder_3``."""

    _encoders: tuple[str, ...]  # the text encoders an eraser can sit on, in set_eraser's order
    set_eraser: Any  # each class spells out its encoders' arguments

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """The parent's ``from_pretrained``; with SAEs (and their concept sets), erasers on their
        encoders: the arguments of ``set_eraser`` (``sae=``, ``concepts=``, ``sae_2=`` ...,
        ``erase=``, ``mode=``, ``value=``). Without them, a folder written by this class's
        ``save_pretrained`` comes back with its erasers and steering."""
        names = [n for n in inspect.signature(cls.set_eraser).parameters if n != "self"]
        eraser = {n: kwargs.pop(n) for n in names if n in kwargs}
        parts = any(eraser.get(k) is not None for pair in cls._eraser_keys() for k in pair)
        if not parts and eraser:
            raise UsageError(f"{', '.join(f'{k}=' for k in eraser)} set up the erasers of SAEs given here (sae=, "
                             "concepts=, ...); a saved folder's erasers come back with their own settings")
        pipe = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if parts:
            pipe.set_eraser(**eraser)
        else:
            pipe._load_parts(pretrained_model_name_or_path)
        return pipe

    @classmethod
    def wrap(cls, pipe, *args, **kwargs):
        """An ItD pipeline sharing ``pipe``'s components (nothing is copied), with the erasers
        of ``set_eraser(*args, **kwargs)``."""
        with diffusers_errors_only():  # from_pipe re-casts to the same dtype and warns
            new = cls.from_pipe(pipe)
        new.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
        new.set_eraser(*args, **kwargs)
        return new

    @classmethod
    def _eraser_keys(cls) -> list[tuple[str, str]]:
        """(sae argument, concepts argument) of each encoder: ("sae", "concepts"), ("sae_2", "concepts_2") ..."""
        return [("sae", "concepts")] + [(f"sae_{i}", f"concepts_{i}") for i in range(2, len(cls._encoders) + 1)]

    def _set_erasers(self, given: Sequence[tuple], erase: Sequence[str] | None, mode: str, value: float) -> None:
        """Erasers from ``given``, one (sae, concepts) per encoder of ``_encoders`` (None: none there).
        ``erase`` names concepts of any of the sets; each encoder erases those its set holds."""
        self.remove_erasers()
        keys = self._eraser_keys()
        chosen = []
        for name, (sae_key, set_key), (sae, concepts) in zip(self._encoders, keys, given):
            if sae is None:
                if concepts is not None:
                    raise UsageError(f"{set_key}= was given without {sae_key}=: a concept set for {name} needs its SAE")
                continue
            if concepts is None:
                raise UsageError(f"an SAE for {name} ({sae_key}=) needs its concept set ({set_key}=)")
            chosen.append((name, sae, as_concepts(concepts)))
        if not chosen:
            wanted = " and/or ".join(f"{name} ({key}=)" for name, (key, _) in zip(self._encoders, keys))
            raise UsageError(f"pass an SAE for {wanted}")
        if erase is not None:
            unknown = sorted(set(erase) - {n for _, _, c in chosen for n in c.concepts})
            if unknown:
                have = sorted({n for _, _, c in chosen for n in c.concepts})
                raise UsageError(f"erase={list(erase)}: {unknown} are in none of the concept sets (they hold {have})")
        for name, sae, concepts in chosen:
            names = [n for n in erase if n in concepts.concepts] if erase is not None else None
            if names == []:
                continue  # this encoder's set holds none of the concepts to erase
            self._add_eraser(name, sae, concepts, names=names, mode=mode, value=value)


@_parents_signature
class ItDStableDiffusionXLPipeline(_ItDEncodersMixin, StableDiffusionXLPipeline):
    """``StableDiffusionXLPipeline`` with an SAE (and concept set) on each text encoder."""

    _parent = StableDiffusionXLPipeline
    _output = ItDXLPipelineOutput
    _positive_outputs = (0, 2)  # prompt_embeds, pooled_prompt_embeds
    _encoders = ("text_encoder", "text_encoder_2")

    def set_eraser(self, sae=None, concepts=None, sae_2=None, concepts_2=None, erase: Sequence[str] | None = None,
                   mode: str = "zero", value: float = 0.0) -> None:
        """An SAE and concept set for ``text_encoder`` and/or ``text_encoder_2``."""
        self._set_erasers([(sae, concepts), (sae_2, concepts_2)], erase, mode, value)


@_parents_signature
class ItDStableDiffusion3Pipeline(_ItDEncodersMixin, StableDiffusion3Pipeline):
    """``StableDiffusion3Pipeline`` with an SAE (and concept set) on any of its text encoders:
    the CLIP-L ``text_encoder``, the CLIP-G ``text_encoder_2``, the T5 ``text_encoder_3``."""

    _parent = StableDiffusion3Pipeline
    _output = ItDSD3PipelineOutput
    _positive_outputs = (0, 2)  # prompt_embeds, pooled_prompt_embeds
    _encoders = ("text_encoder", "text_encoder_2", "text_encoder_3")

    def set_eraser(self, sae=None, concepts=None, sae_2=None, concepts_2=None, sae_3=None, concepts_3=None,
                   erase: Sequence[str] | None = None, mode: str = "zero", value: float = 0.0) -> None:
        """An SAE and concept set for any of ``text_encoder`` (``sae``), ``text_encoder_2``
        (``sae_2``) and the T5 ``text_encoder_3`` (``sae_3``)."""
        self._set_erasers([(sae, concepts), (sae_2, concepts_2), (sae_3, concepts_3)], erase, mode, value)


@_parents_signature
class ItDFluxPipeline(_ItDEncodersMixin, FluxPipeline):
    """``FluxPipeline`` with an SAE (and concept set) on its CLIP ``text_encoder`` (the pipeline
    keeps only its pooled vector) and/or its T5 ``text_encoder_2``. With ``true_cfg_scale > 1``
    and a negative prompt, Flux encodes the negative prompt in a second ``encode_prompt``: it is
    left as it is unless ``erase_negative``."""

    _parent = FluxPipeline
    _output = ItDFluxPipelineOutput
    _positive_outputs = (0, 1)  # prompt_embeds, pooled_prompt_embeds (not text_ids)
    _encoders = ("text_encoder", "text_encoder_2")

    def set_eraser(self, sae=None, concepts=None, sae_2=None, concepts_2=None, erase: Sequence[str] | None = None,
                   mode: str = "zero", value: float = 0.0) -> None:
        """An SAE and concept set for the CLIP ``text_encoder`` (``sae``) and/or the T5
        ``text_encoder_2`` (``sae_2``)."""
        self._set_erasers([(sae, concepts), (sae_2, concepts_2)], erase, mode, value)
