"""A concept as a sparse linear read-out of SAE features, fitted on example prompts.

Each prompt becomes its *pooled code*: for every latent, ``log(1 + max_t |z_t|)`` over its
tokens (the first token left out), kept sparse. A concept's score is ``b + w . pooled`` over
the few latents with a non-zero weight. The weights come from an L1-penalised logistic
regression (proximal gradient, classes balanced) of the concept's prompts against the
prompts it must not flag: other concepts', its near misses, generic prompts. The L1 penalty
keeps a few dozen to a few hundred latents per concept; the positive ones are the features
an erasure deactivates. This is still ItD's reading of the SAE (a concept is a set of
features, a prompt carries it when they fire), with the features' weights learnt instead of
set to one, which is what lets the score tell a sneaker from an oxford shoe.

The threshold is set on held-out prompts (:func:`calibrate_fpr`): the lowest that keeps the
false-positive rate of *each* group of negatives (other concepts, near misses, generic) at or
below ``max_fpr``.
"""

from __future__ import annotations

import warnings

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from ..sae import SparseAutoencoder
from ..errors import UsageError


def pooled_codes(sae: SparseAutoencoder, source, prompts: Sequence[str], batch_size: int = 32,
                 skip_first: bool = True) -> torch.Tensor:
    """Pooled codes ``[P, n_latents]`` (a sparse COO tensor) of ``prompts``."""
    from .select import prompt_activations

    rows, cols, vals = [], [], []
    start = 0
    with torch.no_grad():
        for acts in prompt_activations(source, prompts, batch_size):
            values, indices = sae.encode(acts)
            if skip_first and values.shape[1] > 1:
                values, indices = values[:, 1:], indices[:, 1:]
            for b in range(values.shape[0]):
                ids, inverse = indices[b].reshape(-1).unique(return_inverse=True)
                top = torch.zeros(ids.numel()).scatter_reduce_(0, inverse, values[b].reshape(-1).abs().float(), "amax")
                keep = top > 0
                rows.append(torch.full((int(keep.sum()),), start + b, dtype=torch.long))
                cols.append(ids[keep].long())
                vals.append(torch.log1p(top[keep]))
            start += values.shape[0]
    index = torch.stack([torch.cat(rows), torch.cat(cols)]) if rows else torch.zeros(2, 0, dtype=torch.long)
    return torch.sparse_coo_tensor(index, torch.cat(vals) if vals else torch.zeros(0), (len(prompts), sae.n_latents),
                                   check_invariants=False).coalesce()


@dataclass
class LinearConcept:
    """A fitted read-out: latent ids, their weights, the bias."""

    features: list[int]
    weights: list[float]
    bias: float

    def score(self, pooled: torch.Tensor) -> torch.Tensor:
        """Scores ``[P]`` of pooled codes ``[P, n_latents]`` (sparse or dense)."""
        dense = pooled.index_select(1, torch.tensor(self.features, dtype=torch.long))
        dense = dense.to_dense() if dense.is_sparse else dense
        return dense @ torch.tensor(self.weights, dtype=torch.float32) + self.bias

    @property
    def positive(self) -> list[int]:
        """The latents that speak for the concept (what an erasure deactivates)."""
        return [f for f, w in zip(self.features, self.weights) if w > 0]


def fit_linear(positive: torch.Tensor, negative: torch.Tensor | Sequence[torch.Tensor], l1: float = 3e-4,
               min_support: int = 2, steps: int = 600, lr: float = 0.5) -> LinearConcept:
    """L1-penalised, class-balanced logistic regression of pooled codes ``positive [P, n]``
    against ``negative [N, n]`` by proximal gradient (deterministic).

    ``negative`` may be a list of groups (generic prompts, near misses, other concepts): each
    non-empty group then weighs the same in the fit, however few its prompts, so that a handful
    of near misses is not drowned by thousands of generic prompts.
    Candidates are the latents active in at least ``min_support`` positive prompts.
    """
    groups = [negative] if isinstance(negative, torch.Tensor) else [g for g in negative if g.shape[0] > 0]
    negative = torch.cat([g.coalesce() if g.is_sparse else g.to_sparse() for g in groups]) if groups else torch.zeros(0, 0)
    if positive.shape[0] == 0 or negative.shape[0] == 0:
        raise UsageError("fitting a concept needs positive and negative prompts")
    support = (positive.to_dense() > 0).sum(0) if positive.is_sparse else (positive > 0).sum(0)
    candidates = (support >= min(min_support, positive.shape[0])).nonzero().squeeze(-1)
    if candidates.numel() == 0:
        raise UsageError("no SAE latent fires on the concept's prompts")

    def sparse(x):
        x = x.index_select(1, candidates).float()
        return x if x.is_sparse else x.to_sparse()

    # pooled codes are sparse (a few dozen latents a prompt): the products run on CSR matrices
    x = torch.cat([sparse(positive), sparse(negative)]).coalesce()  # [P + N, C]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        xt = x.t().coalesce().to_sparse_csr()
        x = x.to_sparse_csr()
    y = torch.cat([torch.ones(positive.shape[0]), torch.zeros(negative.shape[0])])
    neg_weight = torch.cat([torch.full((g.shape[0],), 0.5 / len(groups) / g.shape[0]) for g in groups])
    sample_weight = torch.cat([torch.full((positive.shape[0],), 0.5 / positive.shape[0]), neg_weight])
    w = torch.zeros(x.shape[1])
    b = torch.zeros(())
    for _ in range(steps):
        grad = (torch.sigmoid(torch.mv(x, w) + b) - y) * sample_weight
        w = w - lr * torch.mv(xt, grad)
        b = b - lr * grad.sum()
        w = torch.sign(w) * (w.abs() - lr * l1).clamp_min(0)  # the L1 proximal step
    keep = w != 0
    order = w[keep].abs().argsort(descending=True)
    ids = candidates[keep][order]
    return LinearConcept(ids.tolist(), w[keep][order].tolist(), float(b))


def calibrate_fpr(positive: torch.Tensor, negatives: Mapping[str, torch.Tensor], max_fpr: float = 0.005) -> dict:
    """The lowest threshold at which every group of ``negatives`` has a false-positive rate of
    at most ``max_fpr`` (flag ``score >= threshold``), with the recall on ``positive`` and each
    group's false-positive rate it gives."""
    if positive.numel() == 0:
        raise UsageError("calibration needs at least one held-out concept prompt")
    if not 0 <= max_fpr < 1:
        raise UsageError(f"max_fpr must be in [0, 1), got {max_fpr}")
    threshold = -math.inf
    for scores in negatives.values():
        if scores.numel() == 0:
            continue
        allowed = int(math.floor(max_fpr * scores.numel() + 1e-9))  # flags this group may have
        ranked = scores.float().sort(descending=True).values
        if allowed < ranked.numel():  # just above the first score this group may not reach (in float32)
            threshold = max(threshold, float(torch.nextafter(ranked[allowed], torch.tensor(math.inf))))
    out = {"threshold": threshold, "max_fpr": max_fpr, "recall": float((positive >= threshold).float().mean()),
           "n_positive": int(positive.numel())}
    for name, scores in negatives.items():
        out[f"fpr_{name}"] = float((scores >= threshold).float().mean()) if scores.numel() else None
        out[f"n_{name}"] = int(scores.numel())
    return out
