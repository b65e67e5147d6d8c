"""The SAE's configuration: a frozen dataclass that round-trips through JSON."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ..errors import UsageError

# Bumped when the meaning of saved tensors or fields changes; readers check it.
FORMAT_VERSION = 1

DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class SAEConfig:
    """Shape, sparsity rule and provenance of a :class:`SparseAutoencoder`."""

    d_in: int
    """Width of the activations the SAE reads (e.g. 768 for CLIP ViT-L/14's text encoder)."""
    n_latents: int
    """Number of dictionary atoms (latents)."""
    sparsity: str = "topk"
    """Sparsity rule: one of ``visionsae.sae.sparsity.RULES`` (topk, batchtopk, abstopk, jumprelu, relu, topafa, featurechoice, mutualchoice, gba, variational)."""
    k: int = 32
    """Active latents per input for the TopK family (mean count for batchtopk, mutualchoice, featurechoice; the most topafa keeps)."""
    l1_coefficient: float = 5e-3
    """Weight of the L1 penalty of the ``relu`` rule."""
    l0_coefficient: float = 2e-3
    """Weight of the L0 penalty of the ``jumprelu`` rule."""
    jumprelu_threshold: float = 2.0
    """Initial threshold of every ``jumprelu`` latent (in units of the normalised input)."""
    jumprelu_bandwidth: float = 0.5
    """Width of the rectangle kernel of the straight-through estimator of ``jumprelu``."""
    afa_coefficient: float = 0.0
    """Weight of the AFA loss (code norm against input norm; any rule, 0: off)."""
    matryoshka_widths: str = ""
    """Comma-separated nested prefix widths (e.g. ``64,256``) each trained to reconstruct alone (Matryoshka; empty: off)."""
    matryoshka_samples: int = 0
    """If > 0, draw this many prefix widths per step (log-uniform from the smallest of matryoshka_widths to n_latents) instead of the fixed ones."""
    aux_zipf_coefficient: float = 1.0 / 32
    """Weight of the aux_zipf loss of ``mutualchoice`` (latents used less than a Zipf law predicts reconstruct the residual)."""
    aux_zipf_exponent: float | None = None
    """Exponent of that Zipf law (usage of the r-th most used latent ~ r ** -exponent); none: fitted to the usage each step."""
    gba_groups: int = 8
    """Number of latent groups of the ``gba`` rule, each with its own target activation frequency."""
    gba_max_frequency: float = 0.1
    """Target activation frequency of the first ``gba`` group (the targets fall geometrically from it)."""
    gba_min_frequency: float = 0.002
    """Target activation frequency of the last ``gba`` group."""
    gba_rate: float = 0.3
    """Per step, each ``gba`` bias moves this fraction of the way to the bias that gives its group's frequency on the batch."""
    kl_coefficient: float = 1e-3
    """Weight of the KL term (mean per latent) of the ``variational`` rule."""
    dictionary: str = "linear"
    """Decoder dictionary: ``linear`` (free unit-norm rows) or ``archetypal`` (RA-SAE: each atom a row-stochastic mix of k-means candidates of the data plus a bounded relaxation; see ``visionsae.sae.dictionary``)."""
    archetypal_candidates: int = 0
    """Number of k-means candidates of the ``archetypal`` dictionary (0: n_latents); computed from the sample the SAE is initialised on, which needs at least this many rows."""
    archetypal_delta: float = 1.0
    """Largest row norm of the ``archetypal`` relaxation (in units of the normalised input, whose mean norm is sqrt(d_in))."""
    archetypal_learn_scale: bool = True
    """Learn a scalar multiplier of the ``archetypal`` atoms (their cone, not only their hull)."""
    normalize_input: bool = True
    """Scale inputs to mean norm sqrt(d_in) during training; the scale is folded into the weights at save."""
    dtype: str = "float32"
    """Parameter dtype: float32, float16 or bfloat16."""
    hook: str | None = None
    """Where the activations come from (a module path such as ``text_model.encoder.layers.8``)."""
    model: str | None = None
    """Which model the activations come from (a Hugging Face id or a path)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance (dataset, token kinds, ...); not read by the model."""

    def __post_init__(self) -> None:
        from .sparsity import RULES  # local: sparsity imports nothing from here at module scope

        check_field_types(self)
        for name in ("d_in", "n_latents", "k"):
            value = getattr(self, name)
            if value < 1:
                raise UsageError(f"SAEConfig.{name} must be a positive integer, got {value!r}")
        if self.sparsity not in RULES:
            raise UsageError(
                f"unknown sparsity rule {self.sparsity!r}; expected one of {sorted(RULES)}"
            )
        if RULES[self.sparsity].uses_k and self.k > self.n_latents:
            raise UsageError(
                f"k={self.k} is larger than n_latents={self.n_latents}; "
                f"a {self.sparsity} SAE keeps at most n_latents latents"
            )
        self._check_variant_fields()
        if self.dictionary not in ("linear", "archetypal"):
            raise UsageError(f"unknown dictionary {self.dictionary!r}; expected 'linear' or 'archetypal'")
        if self.archetypal_candidates < 0 or (self.archetypal_candidates and self.archetypal_candidates < self.n_latents):
            raise UsageError(
                f"archetypal_candidates must be 0 (n_latents) or >= n_latents={self.n_latents}, "
                f"got {self.archetypal_candidates}"
            )
        if not self.archetypal_delta >= 0:
            raise UsageError(f"archetypal_delta must be >= 0, got {self.archetypal_delta!r}")
        if self.dtype not in DTYPES:
            raise UsageError(f"unknown dtype {self.dtype!r}; expected one of {DTYPES}")

    def _check_variant_fields(self) -> None:
        try:
            widths = [int(w) for w in self.matryoshka_widths.replace(" ", "").split(",") if w]
        except ValueError:
            widths = None
        if widths is None or widths != sorted(set(widths)) or any(not 0 < w < self.n_latents for w in widths):
            raise UsageError(
                f"matryoshka_widths must be increasing comma-separated integers in (0, n_latents={self.n_latents}), "
                f"e.g. '64,256'; got {self.matryoshka_widths!r}"
            )
        if self.matryoshka_samples < 0 or (self.matryoshka_samples and not widths):
            raise UsageError(
                f"matryoshka_samples={self.matryoshka_samples} needs to be >= 0, and > 0 only with matryoshka_widths "
                "(its smallest width is the smallest width drawn)"
            )
        if self.gba_groups < 1 or (self.sparsity == "gba" and self.gba_groups > self.n_latents):
            raise UsageError(f"gba_groups must be in [1, n_latents={self.n_latents}], got {self.gba_groups}")
        if not 0 < self.gba_min_frequency <= self.gba_max_frequency <= 1:
            raise UsageError(
                "gba frequencies must satisfy 0 < gba_min_frequency <= gba_max_frequency <= 1, got "
                f"{self.gba_min_frequency} and {self.gba_max_frequency}"
            )
        if not 0 < self.gba_rate <= 1:
            raise UsageError(f"gba_rate must be in (0, 1], got {self.gba_rate}")
        for name in ("afa_coefficient", "aux_zipf_coefficient", "aux_zipf_exponent", "kl_coefficient",
                     "l1_coefficient", "l0_coefficient"):
            if getattr(self, name) is not None and not getattr(self, name) >= 0:
                raise UsageError(f"SAEConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("jumprelu_threshold", "jumprelu_bandwidth"):
            if not getattr(self, name) > 0:
                raise UsageError(f"SAEConfig.{name} must be > 0, got {getattr(self, name)!r}")

    def replace(self, **changes: Any) -> "SAEConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SAEConfig":
        if not isinstance(data, dict):
            raise UsageError(f"an SAEConfig is a JSON object of settings, got a {type(data).__name__}")
        fields = dataclasses.fields(cls)
        known = {f.name for f in fields}
        unknown = sorted(set(data) - known - {"format_version"})
        if unknown:
            raise UsageError(f"unknown SAEConfig fields {unknown}; known fields are {sorted(known)}")
        required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise UsageError(f"SAEConfig fields {missing} are missing (required: {', '.join(required)})")
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps({"format_version": FORMAT_VERSION, **self.to_dict()}, indent=2)


# --------------------------------------------------------------------------- field checks


def check_field_types(obj: Any) -> None:
    """Raise a :class:`~visionsae.errors.UsageError` naming the first field of the dataclass
    ``obj`` whose value is not of its annotated type (``int`` excludes ``bool``; ``float``
    takes an ``int`` too and must be finite). The one check behind every config's
    ``__post_init__``: the command line, the Python API, a cfg.json and a resumed checkpoint
    all pass through it."""
    cls = type(obj)
    for f in dataclasses.fields(obj):
        allowed = _field_types(cls)[f.name]
        value = getattr(obj, f.name)
        if value is None and type(None) in allowed:
            continue
        ok = False
        for t in allowed:
            if t is bool:
                ok = isinstance(value, bool)
            elif t is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif t is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                if ok and not math.isfinite(value):
                    raise UsageError(f"{cls.__name__}.{f.name} must be a finite number, got {value!r}")
            elif t is not type(None):
                ok = isinstance(value, t)
            if ok:
                break
        if not ok:
            names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
            raise UsageError(f"{cls.__name__}.{f.name} must be {names}, got {value!r} ({type(value).__name__})")


@lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, tuple[type, ...]]:
    """Field name -> the plain types its annotation allows (``float | None`` -> (float, NoneType))."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        out[name] = tuple(typing.get_origin(a) or a for a in args)
    return out
