"""Planted-feature activations: synthetic data whose true features are known.

Each sample is a sparse, non-negative (or signed) mix of ``n_true`` unit directions with
power-law feature frequencies and heavy-tailed magnitudes, plus a shared mean offset and
small isotropic noise. Because the generator knows the directions, an SAE trained on its
output can be scored by how many of them its decoder recovers.

Batch ``i`` is a pure function of ``(seed, i)``, so any batch can be produced (or skipped)
without generating the ones before it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from .errors import UsageError


@dataclass(frozen=True)
class PlantedConfig:
    """A planted-feature data set."""

    d_in: int = 256
    """Width of the activations."""
    n_true: int = 1024
    """Number of true feature directions."""
    mean_active: float = 8.0
    """Mean number of active true features per sample."""
    zipf_exponent: float = 0.5
    """Feature i fires with probability proportional to (i + 1) ** -zipf_exponent."""
    magnitude_shape: float = 2.0
    """Gamma shape of the magnitudes (mean 1): smaller is more heavy-tailed."""
    noise_std: float = 0.02
    """Std of isotropic Gaussian noise, relative to a unit feature."""
    offset_norm: float = 1.0
    """Norm of a mean offset shared by every sample."""
    signed: bool = False
    """Give each active feature a random sign (data for AbsTopK)."""
    seed: int = 0
    """Seed of the directions, frequencies and every batch."""

    def __post_init__(self) -> None:
        from .errors import UsageError
        from .sae.config import check_field_types

        check_field_types(self)
        for name in ("d_in", "n_true"):
            if getattr(self, name) < 1:
                raise UsageError(f"PlantedConfig.{name} must be a positive integer, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


class PlantedData:
    """Generates batches of planted activations; ``directions`` is the ground truth."""

    def __init__(self, cfg: PlantedConfig = PlantedConfig()) -> None:
        if cfg.mean_active <= 0 or cfg.mean_active > cfg.n_true:
            raise UsageError(f"mean_active must be in (0, n_true={cfg.n_true}], got {cfg.mean_active}")
        self.cfg = cfg
        # The directions get a stream of their own: an SAE under test is initialised from
        # torch's global generator, usually seeded with the same small integer, and with a
        # shared stream its decoder would start exactly at the answer. (The CPU generator
        # keeps only the low 32 bits of a seed, so the offset must stay below 2**32.)
        g = torch.Generator().manual_seed((0x5EED_0000 + cfg.seed) % 2**32)
        self.directions = F.normalize(torch.randn(cfg.n_true, cfg.d_in, generator=g), dim=1)  # [n_true, d_in]
        weights = (torch.arange(cfg.n_true, dtype=torch.float64) + 1).pow(-cfg.zipf_exponent)
        # Firing probabilities with the requested mean count, each at most 1.
        probs = weights / weights.sum() * cfg.mean_active
        self.probs = probs.clamp(max=1.0).float()  # [n_true]
        self.offset = F.normalize(torch.randn(cfg.d_in, generator=g), dim=0) * cfg.offset_norm
        # Enough slots that dropping the excess is a rare event (mean + 6 sigma).
        self._slots = min(cfg.n_true, int(cfg.mean_active + 6 * math.sqrt(cfg.mean_active) + 4))

    def batch(self, index: int, batch_size: int) -> torch.Tensor:
        """Batch number ``index`` (deterministic): ``[batch_size, d_in]`` float32."""
        return self.batch_with_truth(index, batch_size)[0]

    def batch_with_truth(self, index: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch ``index`` with its ground truth: ``(x [B, d_in], features [B, slots],
        magnitudes [B, slots])``; sample b is ``sum_j magnitudes[b, j] * directions[features[b, j]]``
        plus the offset and noise (a magnitude of 0 is an unused slot)."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + index + 1)
        # Draw which features fire by sampling slots from the frequency distribution
        # (a sparse Poisson-like draw that never allocates [batch, n_true] booleans).
        counts = torch.poisson(torch.full((batch_size,), float(cfg.mean_active)), generator=g).clamp(max=self._slots).long()
        idx = torch.multinomial(self.probs, batch_size * self._slots, replacement=True, generator=g)
        idx = idx.view(batch_size, self._slots)
        mags = torch._standard_gamma(torch.full((batch_size, self._slots), float(cfg.magnitude_shape)), generator=g)
        mags = mags / cfg.magnitude_shape
        mags = mags * (torch.arange(self._slots)[None, :] < counts[:, None])
        if cfg.signed:
            mags = mags * (torch.randint(0, 2, mags.shape, generator=g) * 2 - 1)
        x = F.embedding_bag(idx, self.directions, per_sample_weights=mags, mode="sum")
        x += cfg.noise_std * torch.randn(batch_size, cfg.d_in, generator=g)
        return x + self.offset, idx, mags

    def batches(self, batch_size: int, n_batches: int | None = None, start: int = 0) -> Iterator[torch.Tensor]:
        """Batches ``start, start + 1, ...`` (forever when ``n_batches`` is None)."""
        i = start
        while n_batches is None or i < start + n_batches:
            yield self.batch(i, batch_size)
            i += 1


@torch.no_grad()
def recovery(decoder: torch.Tensor, directions: torch.Tensor, threshold: float = 0.9) -> dict[str, float]:
    """How many true directions some decoder row matches.

    ``decoder [n_latents, d_in]``, ``directions [n_true, d_in]``. Returns the fraction of
    true directions whose best cosine with a decoder row exceeds ``threshold`` and the mean
    best cosine. For AbsTopK SAEs a row may match a direction up to sign; pass the rows as
    they are and read ``recovered_abs``.
    """
    dec = F.normalize(decoder.float(), dim=1)
    cos = directions.float() @ dec.t()  # [n_true, n_latents]
    best = cos.max(dim=1).values
    best_abs = cos.abs().max(dim=1).values
    return {
        "recovered": float((best > threshold).float().mean()),
        "recovered_abs": float((best_abs > threshold).float().mean()),
        "mean_best_cosine": float(best.mean()),
    }
