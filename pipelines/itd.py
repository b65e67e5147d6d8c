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

import dataclasses
import functools
import inspect
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput
from diffusers.pipelines.stable_diffusion_xl import StableDiffusionXLPipelineOutput

from visionsae.compat import diffusers_errors_only
from visionsae.control.edit import FeatureEdit
from visionsae.control.itd import ItDEraser
from visionsae.control.steer import steering_edit
from visionsae.errors import UsageError

from ._parts import as_concepts, as_sae, read_parts, remove_parts, write_parts

PARTS_DIR = "itd"  # the folder save_pretrained writes beside the components


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


class _ItDMixin:
    """What the ItD pipelines share: erasers and steering, switched on around the
    positive prompt's encoding; decisions; save / load of the edits."""

    _parent: type  # the stock pipeline class
    _output: type  # its output class with concept_decisions
    _positive_outputs: tuple[int, ...] = (0,)  # which of encode_prompt's outputs are the positive embeddings

    erase_negative: bool = False
    """Also erase from negative prompts (off: negative prompts are left as they are)."""
    itd_enabled: bool = True
    """Switch erasure off to get the stock pipeline's output from the same object."""

    def _state(self, key: str, default):
        # created on first use: diffusers builds pipelines from __init__'s signature, which
        # must stay the parent's
        return self.__dict__.setdefault(f"_itd_{key}", default)

    @property
    def _erasers(self) -> list[tuple[str, ItDEraser]]:
        """(encoder name, eraser), at most one per encoder."""
        return self._state("erasers", [])

    @property
    def _steers(self) -> list[tuple[str, FeatureEdit]]:
        return self._state("steers", [])

    @property
    def concept_decisions(self) -> list[dict[str, dict[str, Any]]]:
        """The classifier's decisions of the last ``encode_prompt`` (per prompt)."""
        return self._state("last", [])

    # ------------------------------------------------------------------ setting edits
    def set_steering(self, sae, features: Sequence[int], strength: str | float = "medium",
                     encoder_name: str = "text_encoder", hook: str | None = None) -> None:
        """Steer the prompt embedding along SAE ``features`` ("gentle", "medium", "strong"
        or a float); replaces any earlier steering. Negative prompts are left alone."""
        self.clear_steering()
        encoder = getattr(self, encoder_name)
        sae = as_sae(sae).to(encoder.device)
        hook = hook or sae.cfg.hook
        if not hook:
            raise UsageError("no hook point: pass hook=..., or use an SAE that records one")
        edit = steering_edit(encoder, hook, sae, features, strength)
        edit.enabled = False
        edit.attach()
        self._steers.append((encoder_name, edit))

    def clear_steering(self) -> None:
        for _, e in self._steers:
            e.detach()
        self._steers.clear()

    def _add_eraser(self, encoder_name: str, sae, concepts, **settings) -> None:
        encoder = getattr(self, encoder_name)
        sae, concepts = as_sae(sae).to(encoder.device), as_concepts(concepts)
        tokenizer = getattr(self, encoder_name.replace("text_encoder", "tokenizer"), None)  # for the normal-form gate
        eraser = ItDEraser.from_settings(encoder, sae, concepts, settings, tokenizer=tokenizer)
        eraser.enabled = False  # switched on only around the positive prompt's encoding
        eraser.attach()
        self._erasers.append((encoder_name, eraser))
        self._state("concepts", {})[encoder_name] = concepts

    def remove_erasers(self) -> None:
        for _, e in self._erasers:
            e.detach()
        self._erasers.clear()
        self._state("concepts", {}).clear()

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

    def _active(self) -> bool:
        return self.itd_enabled and bool(self._edits())

    # ------------------------------------------------------------------ encoding
    @contextmanager
    def _editing(self, positive: bool):
        """Edits on for the forward of each text encoder that encodes the positive prompt: its
        first forward inside the parent's ``encode_prompt`` (the positive prompt comes first),
        then off for the negative prompt unless ``erase_negative``. ``positive=False``: the
        positive embeddings were passed in, so only negatives are encoded. Yields the positive
        prompts' decisions per encoder, filled as the encoders run."""
        groups: dict[str, list[FeatureEdit]] = {}
        for name, edit in self._edits():
            groups.setdefault(name, []).append(edit)
        erasers = dict(self._erasers)
        decisions: dict[str, list[dict]] = {}

        def after_first(name: str):
            def hook(module, args, output):
                if name not in decisions:
                    decisions[name] = erasers[name].pop_decisions() if name in erasers else []
                    if not self.erase_negative:
                        for e in groups[name]:
                            e.enabled = False
            return hook

        handles = []
        for name, edits in groups.items():
            for e in edits:
                e.enabled = positive or self.erase_negative
            if positive:
                handles.append(getattr(self, name).register_forward_hook(after_first(name)))
        try:
            yield decisions
        finally:
            for h in handles:
                h.remove()
            self._set_enabled(False)
            for _, e in self._erasers:
                e.pop_decisions()  # the negative prompts' (erase_negative): not reported

    def _combine(self, per_encoder: dict[str, list[dict]]) -> list[dict]:
        """Per prompt: the one encoder's decisions, or {encoder: decisions} for several."""
        names = [n for n, _ in self._erasers]
        if len(names) <= 1:
            return per_encoder.get(names[0], []) if names else []
        n = max(len(per_encoder.get(name, [])) for name in names)
        return [{name: (per_encoder.get(name, [])[i] if i < len(per_encoder.get(name, [])) else {}) for name in names}
                for i in range(n)]

    def _given_decisions(self, prompt_embeds: torch.Tensor) -> list[dict]:
        """The decisions recorded when this pipeline's encode_prompt made ``prompt_embeds``;
        embeddings made elsewhere are refused (they never went through the eraser)."""
        made = getattr(prompt_embeds, "_itd_made_by", None)
        if made is None or made[0] != id(self):
            hooks = ", ".join(repr(e.hook) for _, e in self._edits())
            raise UsageError(
                f"prompt_embeds were passed in, but ItD edits the text encoder at {hooks}, inside the "
                "encoder; embeddings made elsewhere never went through it. Pass `prompt` instead, or "
                "build the embeddings with this pipeline's encode_prompt."
            )
        return made[1]

    def _encode(self, args: tuple, kwargs: dict):
        """The parent's encode_prompt, with the edits on for the positive prompt."""
        parent = self._parent.encode_prompt
        calls = self.__dict__.get("_itd_encodes")
        if calls is not None:  # inside __call__
            self.__dict__["_itd_encodes"] = calls + 1
            if calls:  # a later encode_prompt of the same __call__ encodes the negative prompts (Flux's true CFG)
                if not self._active():
                    return parent(self, *args, **kwargs)
                with self._editing(positive=False):  # on only with erase_negative; decisions not reported
                    return parent(self, *args, **kwargs)
        if not self._active():
            self.__dict__["_itd_last"] = []
            return parent(self, *args, **kwargs)
        arguments = inspect.signature(parent).bind(self, *args, **kwargs).arguments
        given = arguments.get("prompt_embeds")
        decisions = self._given_decisions(given) if given is not None else None
        for _, e in self._erasers:
            e.pop_decisions()  # anything left from a call that failed
        typed = self._typed_prompts(arguments)
        try:
            for _, e in self._erasers:
                e.raw_prompts = typed  # each eraser finds the list its encoder was given
            with self._editing(positive=given is None) as per_encoder:
                out = parent(self, *args, **kwargs)
        finally:
            for _, e in self._erasers:
                e.raw_prompts = []
        if decisions is None:
            decisions = self._combine(per_encoder)
            for i in self._positive_outputs:  # the positive embeddings (and pooled ones)
                if isinstance(out[i], torch.Tensor):
                    out[i]._itd_made_by = (id(self), decisions)
        self.__dict__["_itd_last"] = decisions
        return out

    @staticmethod
    def _typed_prompts(arguments: dict) -> list[list[str]]:
        """The prompts of an ``encode_prompt`` call as typed (``prompt``, ``prompt_2``, ``prompt_3``)."""
        out = []
        for key in ("prompt", "prompt_2", "prompt_3"):
            p = arguments.get(key)
            if isinstance(p, str):
                out.append([p])
            elif isinstance(p, (list, tuple)) and p and all(isinstance(x, str) for x in p):
                out.append(list(p))
        return out

    def _call(self, args: tuple, kwargs: dict):
        """The parent's __call__, its output with the decisions of its prompts."""
        bound = inspect.signature(self._parent.__call__).bind(self, *args, **kwargs).arguments
        self.__dict__["_itd_last"] = []
        self.__dict__["_itd_encodes"] = 0  # the first encode_prompt is the positive one
        try:
            out = self._parent.__call__(self, *args, **kwargs)
        finally:
            self.__dict__.pop("_itd_encodes", None)
        decisions = self.concept_decisions
        if not bound.get("return_dict", True):
            return (*out, decisions)
        fields = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
        return self._output(**fields, concept_decisions=decisions)

    # ------------------------------------------------------------------ saving
    def _save_parts(self, save_directory) -> None:
        folder = Path(save_directory) / PARTS_DIR
        if not self._edits():
            remove_parts(folder)  # an earlier save's erasers must not come back
            return
        concepts = self._state("concepts", {})
        saes, sets, erasers, steers = {}, {}, [], []
        for name, eraser in self._erasers:
            saes[name], sets[name] = eraser.edit.sae, concepts[name]
            erasers.append({"encoder": name, "sae": name, "concepts": f"{name}.json", "settings": eraser.settings()})
        for i, (name, edit) in enumerate(self._steers):
            key = f"steering-{i}"
            saes[key] = edit.sae
            steers.append({"encoder": name, "sae": key, "features": sorted(int(f) for f in edit.spec.features),
                           "strength": float(edit.spec.value), "hook": edit.hook})
        write_parts(folder, {"erasers": erasers, "steering": steers, "erase_negative": bool(self.erase_negative),
                             "itd_enabled": bool(self.itd_enabled)}, saes, sets)

    def _load_parts(self, folder) -> bool:
        """Restore the edits saved in ``folder/itd``; False where there is none."""
        root = Path(folder) / PARTS_DIR
        manifest = read_parts(root) if Path(folder).is_dir() else None
        if manifest is None:
            return False
        self.remove_erasers()
        self.clear_steering()
        for entry in manifest["erasers"]:
            self._add_eraser(entry["encoder"], root / entry["sae"], root / entry["concepts"], **entry["settings"])
        for entry in manifest["steering"]:
            self.set_steering(root / entry["sae"], entry["features"], entry["strength"], entry["encoder"], entry["hook"])
        self.erase_negative = manifest["erase_negative"]
        self.itd_enabled = manifest["itd_enabled"]
        return True

    def to_json_string(self) -> str:
        # model_index.json names the stock class, so plain diffusers loads a saved folder as
        # the stock pipeline; ItD's from_pretrained restores the erasers from itd/
        config = json.loads(super().to_json_string())
        config["_class_name"] = self._parent.__name__
        return json.dumps(config, indent=2, sort_keys=True) + "\n"


def _parents_signature(cls):
    """Give the ItD class's ``__call__``, ``encode_prompt`` and ``save_pretrained`` the parent's
    name, docs and signature (diffusers' own tests and helpers inspect them)."""
    parent = cls._parent

    @functools.wraps(parent.__call__)
    def __call__(self, *args, **kwargs):
        return self._call(args, kwargs)

    @functools.wraps(parent.encode_prompt)
    def encode_prompt(self, *args, **kwargs):
        return self._encode(args, kwargs)

    @functools.wraps(parent.save_pretrained)
    def save_pretrained(self, *args, **kwargs):
        directory = inspect.signature(parent.save_pretrained).bind(self, *args, **kwargs).arguments["save_directory"]
        self._save_parts(directory)  # first: push_to_hub uploads the folder as the parent leaves it
        return parent.save_pretrained(self, *args, **kwargs)

    for fn in (__call__, encode_prompt, save_pretrained):
        fn.__qualname__ = f"{cls.__name__}.{fn.__name__}"
        setattr(cls, fn.__name__, fn)
    return cls


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
