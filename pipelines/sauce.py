"""Drop-in SAUCE model: a ``LlavaForConditionalGeneration`` that has unlearned concepts.

    model = SAUCELlavaForConditionalGeneration.from_pretrained(
        "llava-hf/llava-1.5-7b-hf", sae=sae_dir, concepts="concepts.json", unlearn=["dog"])
    out = model.generate(**processor(images=image, text=prompt, return_tensors="pt"), max_new_tokens=20)

or wrap a model you already have (its modules are shared, nothing is copied, and the
original object keeps answering as before): ``SAUCELlavaForConditionalGeneration.wrap(model,
sae, concepts, unlearn=[...])``. ``generate`` and ``forward`` are the parent's, signature
and all; the unlearning is a :class:`visionsae.control.sauce.SAUCEUnlearner` on a
language-model layer (found under ``model.language_model.layers`` in transformers 5 or
``language_model.model.layers`` in 4.x, whichever the SAE's recorded hook resolves to).
``model.unlearning_enabled = False`` gives the stock model's answers from the same object.

``save_pretrained`` writes the SAE, concept set and settings in ``sauce/`` beside the weights
(``config.json`` names the stock class): ``SAUCELlavaForConditionalGeneration.from_pretrained``
of the folder unlearns again, plain ``LlavaForConditionalGeneration.from_pretrained`` loads
the stock model.
"""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path
from typing import Sequence

import torch
from transformers import LlavaForConditionalGeneration

from visionsae.control.sauce import SAUCEUnlearner
from visionsae.sae.io import atomic_write_bytes

from ._parts import as_concepts, as_sae, read_parts, remove_parts, write_parts
from visionsae.errors import UsageError

PARTS_DIR = "sauce"  # the folder save_pretrained writes beside the weights


class SAUCELlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """``LlavaForConditionalGeneration`` with SAE features of chosen concepts suppressed."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, sae=None, concepts=None,
                        unlearn: Sequence[str] | None = None, tokens: str = "image", mode: str | None = "zero",
                        value: float = 0.0, hook: str | None = None, **kwargs):
        """The parent's ``from_pretrained``; with ``sae`` and ``concepts``, unlearn ``unlearn``
        (default: every concept of the set). Without them, a folder written by this class's
        ``save_pretrained`` comes back unlearning what it did."""
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if sae is not None or concepts is not None:
            if sae is None or concepts is None:
                raise UsageError("pass both sae= and concepts= (or neither, and call set_unlearning later)")
            model.set_unlearning(sae, concepts, unlearn, tokens=tokens, mode=mode, value=value, hook=hook)
        elif Path(pretrained_model_name_or_path).is_dir():
            root = Path(pretrained_model_name_or_path) / PARTS_DIR
            manifest = read_parts(root)
            if manifest is not None:
                model.set_unlearning(root / manifest["sae"], root / manifest["concepts"], **manifest["settings"])
                model.unlearning_enabled = manifest["enabled"]
        return model

    @functools.wraps(LlavaForConditionalGeneration.save_pretrained)
    def save_pretrained(self, *args, **kwargs):
        bound = inspect.signature(LlavaForConditionalGeneration.save_pretrained).bind(self, *args, **kwargs).arguments
        folder = Path(bound["save_directory"])
        if self._unlearner is None:
            remove_parts(folder / PARTS_DIR)  # an earlier save's unlearning must not come back
        else:
            write_parts(folder / PARTS_DIR, {"sae": "sae", "concepts": "concepts.json", "settings": dict(self._sauce_settings),
                                             "enabled": self.unlearning_enabled},
                        {"sae": self._unlearner.sae}, {"concepts": self.__dict__["_sauce_concepts"]})
        out = super().save_pretrained(*args, **kwargs)
        if bound.get("is_main_process", True):
            # name the stock class, as the weights are the stock model's (the edit lives in sauce/)
            config = folder / "config.json"
            data = json.loads(config.read_text())
            data["architectures"] = [LlavaForConditionalGeneration.__name__]
            atomic_write_bytes(config, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
        return out

    @classmethod
    def wrap(cls, model: LlavaForConditionalGeneration, sae, concepts, unlearn: Sequence[str] | None = None,
             **unlearn_kwargs) -> "SAUCELlavaForConditionalGeneration":
        """A SAUCE model sharing ``model``'s modules (nothing is copied; ``model`` is unchanged)."""
        if not isinstance(model, LlavaForConditionalGeneration):
            raise TypeError(f"wrap takes a LlavaForConditionalGeneration, got {type(model).__name__}")
        with torch.device("meta"):  # the skeleton's own weights are thrown away at once
            new = cls(model.config)
        for name, child in model.named_children():
            setattr(new, name, child)
        new.generation_config = model.generation_config
        new.train(model.training)
        new.set_unlearning(sae, concepts, unlearn, **unlearn_kwargs)
        return new

    # ------------------------------------------------------------------ unlearning
    @property
    def _unlearner(self) -> SAUCEUnlearner | None:
        return self.__dict__.get("_sauce_unlearner")

    def set_unlearning(self, sae, concepts, unlearn: Sequence[str] | None = None, tokens: str = "image",
                       mode: str | None = "zero", value: float = 0.0, hook: str | None = None) -> None:
        """Unlearn the concepts ``unlearn`` (default: all of the set) from now on; replaces
        any earlier setting. ``tokens``: ``image`` or ``all``; ``mode``: zero, scale, clamp, or
        None for each concept's calibrated setting."""
        self.remove_unlearning()
        sae, concepts = as_sae(sae).to(self.device), as_concepts(concepts)
        unlearner = SAUCEUnlearner(self, sae, concepts, unlearn, hook=hook, tokens=tokens, mode=mode, value=value)
        self.__dict__["_sauce_unlearner"] = unlearner.attach()
        self.__dict__["_sauce_concepts"] = concepts
        self.__dict__["_sauce_settings"] = {"unlearn": list(unlearner.names), "tokens": tokens, "mode": mode,
                                            "value": float(value), "hook": hook}

    def remove_unlearning(self) -> None:
        if self._unlearner is not None:
            self._unlearner.detach()
            self.__dict__["_sauce_unlearner"] = None

    @property
    def unlearned(self) -> list[str]:
        """Names of the concepts being unlearned."""
        return list(self._unlearner.names) if self._unlearner is not None else []

    @property
    def unlearning_enabled(self) -> bool:
        return self._unlearner is not None and self._unlearner.enabled

    @unlearning_enabled.setter
    def unlearning_enabled(self, on: bool) -> None:
        if self._unlearner is None:
            raise UsageError("no unlearning is set: call set_unlearning(sae, concepts, ...) first")
        self._unlearner.enabled = bool(on)

    def to(self, *args, **kwargs):
        out = super().to(*args, **kwargs)
        if self._unlearner is not None:
            # the SAE follows the model's device; it keeps its own dtype (the edit casts back)
            for edit in self._unlearner.edits:
                edit.sae.to(self.device)
        return out


def _register_key_mapping() -> None:
    """transformers 5 renames LLaVA checkpoint keys (saved in the legacy layout:
    ``language_model.lm_head`` ...) only for its own classes and for names registered with it;
    register this subclass under LLaVA's mapping so ``from_pretrained`` loads every weight.
    (transformers 4 reads the inherited ``_checkpoint_conversion_mapping`` instead.)"""
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
    except ImportError:
        return
    mapping = get_checkpoint_conversion_mapping("llava")
    if mapping is not None:
        register_checkpoint_conversion_mapping(SAUCELlavaForConditionalGeneration.__name__, mapping, overwrite=True)


_register_key_mapping()
