"""A concept set: per concept, the SAE features that carry it and its classifier threshold.

Saved as JSON next to (or apart from) the SAE; it records the SAE's fingerprint so a set
is never applied to an SAE it was not built for.
"""

from __future__ import annotations

import hashlib
import json
import operator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import InputNotFoundError, UnknownNameError, UsageError
from ..sae import SparseAutoencoder
from ..sae.model import folded
from ..sae.io import atomic_write_bytes

CONCEPTSET_VERSION = 2  # 2: score 'linear' (weights, bias) and vocabularies


def sae_fingerprint(sae: SparseAutoencoder) -> str:
    """SHA-256 (first 16 hex digits) of the SAE's weights as they act on raw inputs."""
    h = hashlib.sha256()
    scale = float(sae.input_scale)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        # fingerprint the folded weights, so a saved-and-reloaded SAE matches its original
        t = folded(name, getattr(sae, name).detach().float().cpu(), scale)
        h.update(name.encode())
        h.update(t.contiguous().numpy().round(5).tobytes())
    return h.hexdigest()[:16]


@dataclass
class Concept:
    """One concept: its features and how prompts are classified as carrying it."""

    name: str
    """The concept's name (e.g. 'sneaker', 'Van Gogh')."""
    features: list[int]
    """SAE latent ids that carry the concept."""
    scores: list[float]
    """Selection score of each feature (same order)."""
    threshold: float | None = None
    """Classifier threshold on the concept score (None: not calibrated)."""
    calibration: dict[str, Any] = field(default_factory=dict)
    """How the threshold was set: target recall, measured recall / FPR, prompt counts."""
    selection: dict[str, Any] = field(default_factory=dict)
    """How the features were selected (method and its parameters)."""
    edit_features: list[int] | None = None
    """Latent ids to deactivate when the concept is erased (None: ``features``). May be broader
    than the classifier's features: features the concept shares with related concepts carry it
    too ("footwear" for sneaker), although they cannot tell the concepts apart."""
    weights: list[float] | None = None
    """Score ``linear``: the weight of each of ``features`` (same order; negative weights are
    features that speak against the concept)."""
    bias: float = 0.0
    """Score ``linear``: the bias of the concept's score."""
    vocabulary: list[str] = field(default_factory=list)
    """Words that mark the concept's prompts; the eraser reads misspellings of them as these
    words in a prompt's normal form (:mod:`visionsae.concepts.normalize`)."""

    @property
    def erased(self) -> list[int]:
        """The ids an edit of this concept changes."""
        return self.features if self.edit_features is None else self.edit_features


@dataclass
class ConceptSet:
    """Concepts of one SAE at one hook point."""

    hook: str | None
    """The hooked module (the SAE's hook)."""
    sae_fingerprint: str
    """:func:`sae_fingerprint` of the SAE the features index."""
    n_latents: int
    """Dictionary size of that SAE."""
    concepts: dict[str, Concept] = field(default_factory=dict)
    """Concepts by name."""
    score: str = "itd"
    """The classifier score these thresholds refer to (see visionsae.concepts.classifier.SCORES)."""
    skip_first: bool = True
    """Whether the scores leave out each prompt's first token: True for tokenizers that start
    every prompt with a special token (CLIP's start token, BERT's [CLS]), False for T5, whose
    first token is the prompt's first word (:func:`starts_with_special`)."""

    def __getitem__(self, name: str) -> Concept:
        if name not in self.concepts:
            raise UnknownNameError(f"unknown concept {name!r}; this set has {sorted(self.concepts)}")
        return self.concepts[name]

    def names(self) -> list[str]:
        return list(self.concepts)

    def check_sae(self, sae: SparseAutoencoder) -> None:
        """Raise if ``sae`` is not the SAE this set was built for, or a concept names a feature
        it does not have (such a concept would never be found nor erased)."""
        if sae.n_latents != self.n_latents:
            raise UsageError(f"the concept set indexes {self.n_latents} latents but the SAE has {sae.n_latents}")
        fp = sae_fingerprint(sae)
        if fp != self.sae_fingerprint:
            raise UsageError(
                f"the concept set was built for SAE {self.sae_fingerprint}, not for this SAE ({fp}); "
                "rebuild it with `visionsae concepts build`"
            )
        for name, c in self.concepts.items():
            for what, ids in (("features", c.features), ("edit_features", c.edit_features or [])):
                bad = [f for f in ids if not _latent_id(f, sae.n_latents)]
                if bad:
                    raise UsageError(f"concept {name!r} has {what} {bad[:5]} outside the SAE's latents 0 to "
                                     f"{sae.n_latents - 1}; the set does not fit this SAE (rebuild it)")

    def subset(self, names: list[str]) -> "ConceptSet":
        return ConceptSet(self.hook, self.sae_fingerprint, self.n_latents, {n: self[n] for n in names}, self.score,
                          self.skip_first)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["version"] = CONCEPTSET_VERSION
        return d

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_bytes(path, json.dumps(self.to_dict(), indent=2).encode())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ConceptSet":
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputNotFoundError(f"no concept set at {path}") from None
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path} is not valid JSON: {exc}") from exc
        if raw.get("version", 0) > CONCEPTSET_VERSION:
            raise UsageError(f"{path} has concept-set version {raw['version']}; this visionsae reads up to {CONCEPTSET_VERSION}")
        try:
            concepts = {name: Concept(**c) for name, c in raw["concepts"].items()}
            return cls(raw["hook"], raw["sae_fingerprint"], int(raw["n_latents"]), concepts, raw.get("score", "itd"),
                       bool(raw.get("skip_first", True)))
        except (KeyError, TypeError) as exc:
            raise UsageError(f"{path} is not a concept set: {exc}") from exc


def starts_with_special(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` starts every prompt with a special token (then a concept score
    leaves that token out: it carries no word). Without a tokenizer: True, as for CLIP."""
    if tokenizer is None:
        return True
    ids = tokenizer("a").input_ids
    first = ids[0] if ids else None
    return first is not None and first in set(getattr(tokenizer, "all_special_ids", []) or [])


def _latent_id(f: Any, n_latents: int) -> bool:
    """``f`` is an integer id of one of ``n_latents`` latents (ints of numpy and torch count)."""
    if isinstance(f, bool):
        return False
    try:
        return 0 <= operator.index(f) < n_latents
    except TypeError:
        return False


def feature_union(concepts: ConceptSet, names: list[str], edit: bool = False) -> torch.Tensor:
    """Sorted unique feature ids of the named concepts (their edit features with ``edit``)."""
    ids = sorted({f for n in names for f in (concepts[n].erased if edit else concepts[n].features)})
    return torch.tensor(ids, dtype=torch.long)
