"""Loss terms beyond reconstruction, as plain functions of one shared signature.

Every term is ``term(inputs: LossInputs) -> Tensor`` (a scalar, unweighted): the SAE's
training pass builds one :class:`LossInputs` and passes it to the terms its config turns
on (AFA, Matryoshka) and to its sparsity rule's ``losses`` (KL, aux_zipf). A new loss is a
new function here, not a new model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .kernels import sparse_decode

if TYPE_CHECKING:
    from .model import SparseAutoencoder


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained over the batch ``[B, d]``."""
    total = (x - x.mean(0)).pow(2).sum()
    return (x - x_hat).pow(2).sum() / total.clamp_min(1e-12)


@dataclass
class LossInputs:
    """What a training pass knows, in the units of the scaled input."""

    sae: "SparseAutoencoder"
    x: torch.Tensor
    """Scaled input ``[B, d_in]``."""
    x_in: torch.Tensor
    """Centred input ``x - b_dec`` (what the encoder reads): ``[B, d_in]``."""
    x_hat: torch.Tensor
    """Reconstruction ``[B, d_in]`` (with gradient)."""
    values: torch.Tensor
    """Code values ``[B, width]`` with gradient (gathered from the dense code for dense rules)."""
    indices: torch.Tensor
    """Code indices ``[B, width]``."""
    pre_acts: torch.Tensor | None = None
    """Dense pre-activations ``[B, n_latents]`` of dense rules (None for the fused sparse path)."""
    W_dec: torch.Tensor | None = None
    """The pass's decoder weight ``[n_latents, d_in]`` (RA-SAE: the dictionary's atoms, with
    their gradient); read it here, not from ``sae.W_dec`` (None: the SAE's ``W_dec``)."""

    def __post_init__(self) -> None:
        if self.W_dec is None:
            self.W_dec = self.sae.W_dec


def decoded_norm(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """``sqrt(sum_j (values_j * |W_dec[indices_j]|)^2)`` per row: the norm the code's decoded
    contribution would have if the decoder rows it uses were orthogonal."""
    row_norms = W_dec.detach().norm(dim=1)[indices]
    return (values * row_norms).pow(2).sum(-1).clamp_min(1e-12).sqrt()


def afa_loss(inputs: LossInputs) -> torch.Tensor:
    """Approximate Feature Activation loss (Lee et al. 2025): the squared gap between the
    code's norm and the centred input's norm, over the mean squared input norm (so its
    scale does not depend on the data's). Under quasi-orthogonal decoder rows the two
    norms are equal for a faithful code."""
    target = inputs.x_in.norm(dim=-1)
    got = decoded_norm(inputs.values, inputs.indices, inputs.W_dec)
    return (got - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)


def matryoshka_widths(cfg, generator: torch.Generator | None = None) -> list[int]:
    """The prefix widths (each < n_latents) whose reconstructions a Matryoshka step trains.

    Fixed ``cfg.matryoshka_widths``, or with ``cfg.matryoshka_samples > 0`` that many widths
    drawn log-uniformly between the smallest fixed width and ``n_latents`` (from
    ``generator``, else torch's global generator, which the trainer seeds).
    """
    fixed = parse_widths(cfg.matryoshka_widths)
    if cfg.matryoshka_samples <= 0 or not fixed:
        return fixed
    lo, hi = math.log(fixed[0]), math.log(cfg.n_latents)
    u = torch.rand(cfg.matryoshka_samples, generator=generator)
    widths = (lo + u * (hi - lo)).exp().long().clamp(fixed[0], cfg.n_latents - 1)
    return sorted(set(int(w) for w in widths))


def parse_widths(text: str) -> list[int]:
    """``"64,256"`` -> ``[64, 256]`` (validation is SAEConfig's)."""
    return [int(w) for w in text.replace(" ", "").split(",") if w]


def matryoshka_loss(inputs: LossInputs, widths: list[int]) -> torch.Tensor:
    """Sum over prefix widths m of the FVU of the reconstruction from latents ``< m`` alone
    (Bussmann et al. 2025; Nabeshima 2024): early latents must reconstruct on their own, so
    they learn general features and later ones refine them. The full-width term is the
    main reconstruction loss and is not repeated here."""
    sae = inputs.sae
    total = inputs.x.new_zeros(())
    for m in widths:
        kept = inputs.values * (inputs.indices < m)
        x_hat_m = sparse_decode(kept, inputs.indices, inputs.W_dec) + sae.b_dec
        total = total + fvu(inputs.x, x_hat_m)
    return total
