"""The SAE's configuration: a frozen dataclass that round-trips through JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

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

        for name in ("d_in", "n_latents", "k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SAEConfig.{name} must be a positive integer, got {value!r}")
        if self.sparsity not in RULES:
            raise ValueError(
                f"unknown sparsity rule {self.sparsity!r}; expected one of {sorted(RULES)}"
            )
        if RULES[self.sparsity].uses_k and self.k > self.n_latents:
            raise ValueError(
                f"k={self.k} is larger than n_latents={self.n_latents}; "
                f"a {self.sparsity} SAE keeps at most n_latents latents"
            )
        self._check_variant_fields()
        if self.dictionary not in ("linear", "archetypal"):
            raise ValueError(f"unknown dictionary {self.dictionary!r}; expected 'linear' or 'archetypal'")
        if self.archetypal_candidates < 0 or (self.archetypal_candidates and self.archetypal_candidates < self.n_latents):
            raise ValueError(
                f"archetypal_candidates must be 0 (n_latents) or >= n_latents={self.n_latents}, "
                f"got {self.archetypal_candidates}"
            )
        if not self.archetypal_delta >= 0:
            raise ValueError(f"archetypal_delta must be >= 0, got {self.archetypal_delta!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; expected one of {DTYPES}")

    def _check_variant_fields(self) -> None:
        try:
            widths = [int(w) for w in self.matryoshka_widths.replace(" ", "").split(",") if w]
        except ValueError:
            widths = None
        if widths is None or widths != sorted(set(widths)) or any(not 0 < w < self.n_latents for w in widths):
            raise ValueError(
                f"matryoshka_widths must be increasing comma-separated integers in (0, n_latents={self.n_latents}), "
                f"e.g. '64,256'; got {self.matryoshka_widths!r}"
            )
        if self.matryoshka_samples < 0 or (self.matryoshka_samples and not widths):
            raise ValueError(
                f"matryoshka_samples={self.matryoshka_samples} needs to be >= 0, and > 0 only with matryoshka_widths "
                "(its smallest width is the smallest width drawn)"
            )
        if self.gba_groups < 1 or (self.sparsity == "gba" and self.gba_groups > self.n_latents):
            raise ValueError(f"gba_groups must be in [1, n_latents={self.n_latents}], got {self.gba_groups}")
        if not 0 < self.gba_min_frequency <= self.gba_max_frequency <= 1:
            raise ValueError(
                "gba frequencies must satisfy 0 < gba_min_frequency <= gba_max_frequency <= 1, got "
                f"{self.gba_min_frequency} and {self.gba_max_frequency}"
            )
        if not 0 < self.gba_rate <= 1:
            raise ValueError(f"gba_rate must be in (0, 1], got {self.gba_rate}")
        for name in ("afa_coefficient", "aux_zipf_coefficient", "aux_zipf_exponent", "kl_coefficient"):
            if getattr(self, name) is not None and not getattr(self, name) >= 0:
                raise ValueError(f"SAEConfig.{name} must be >= 0, got {getattr(self, name)!r}")

    def replace(self, **changes: Any) -> "SAEConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SAEConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"format_version"})
        if unknown:
            raise ValueError(f"unknown SAEConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps({"format_version": FORMAT_VERSION, **self.to_dict()}, indent=2)
