"""What every ItD pipeline class shares (:mod:`visionsae.pipelines.itd`): the erasers and
steering edits on the text encoders, switched on around the positive prompt's encoding, the
decisions, saving and loading ``itd/``, and the parent's signatures on ``__call__``,
``encode_prompt`` and ``save_pretrained``."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

import torch

from visionsae.control.edit import FeatureEdit
from visionsae.control.itd import ItDEraser
from visionsae.control.steer import steering_edit
from visionsae.errors import UsageError

from ._parts import as_concepts, as_sae, read_parts, remove_parts, write_parts

PARTS_DIR = "itd"  # the folder save_pretrained writes beside the components


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
        return [(n, e) for n, e in self._erasers] + list(self._steers)

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
            saes[name], sets[name] = eraser.sae, concepts[name]
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
