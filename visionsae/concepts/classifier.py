"""The SAE as a zero-shot concept classifier of prompts.

A concept's score of a prompt is computed from the SAE code of the hooked activations
``h [B, T, d]`` (the first token left out):

* ``itd`` — how far the reconstruction moves when the concept's features are deactivated,
  relative to the token's norm: ``max_t ||sum_{f in F} z_tf W_dec[f]|| / ||h_t||``;
* ``share`` — the concept's share of the token's code mass: ``max_t sum_F z_tf / sum_all z_t``;
* ``linear`` — a sparse linear read-out of the features: ``b + sum_{f in F} w_f log(1 + max_t |z_tf|)``,
  the weights fitted on example prompts against other concepts', near misses and generic
  prompts (:mod:`visionsae.concepts.linear`); a weight may be negative (a feature that speaks
  against the concept, e.g. "heel" for sneaker).

A prompt carries the concept when its score reaches the concept's threshold, calibrated on
held-out concept prompts to a target recall (:func:`calibrate`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..sae import SparseAutoencoder, SparseCode
from .conceptset import ConceptSet, feature_union

SCORES = ("itd", "share", "linear")


def concept_scores(sae: SparseAutoencoder, h: torch.Tensor, code: SparseCode, features: Sequence[torch.Tensor],
                   kind: str = "itd", skip_first: bool = True, weights: Sequence[torch.Tensor] | None = None,
                   biases: Sequence[float] | None = None) -> torch.Tensor:
    """Scores ``[B, C]`` of ``C`` concepts (each a tensor of feature ids) for inputs ``h [B, T, d]``;
    ``kind="linear"`` also needs each concept's ``weights`` (one per id) and ``biases``."""
    if kind not in SCORES:
        raise UsageError(f"unknown concept score {kind!r}; expected one of {SCORES}")
    values, indices = code
    if skip_first and h.shape[1] > 1:
        h, values, indices = h[:, 1:], values[:, 1:], indices[:, 1:]
    B, T, w = values.shape
    out = torch.zeros(B, len(features))
    if kind == "linear":
        if weights is None or biases is None:
            raise UsageError("the linear concept score needs each concept's weights and bias")
        # each read latent's max |value| over the tokens: [B, U] (never a dense [B, n_latents])
        ids = torch.cat([f.reshape(-1) for f in features]).unique().to(indices.device)  # [U], sorted
        U = ids.numel()
        slot = torch.searchsorted(ids, indices.contiguous())  # where each code index sits among the ids
        hit = (slot < U) & (ids[slot.clamp_max(max(U - 1, 0))] == indices)
        slot = torch.where(hit, slot, torch.full_like(slot, U)).reshape(B, -1)  # misses into an extra column
        pooled = torch.zeros(B, U + 1, dtype=torch.float32, device=values.device)
        pooled.scatter_reduce_(1, slot, values.abs().float().reshape(B, -1), reduce="amax")
        pooled = torch.log1p(pooled[:, :U]).cpu()
        ids = ids.cpu()
        for c, (f, wt, b) in enumerate(zip(features, weights, biases)):
            out[:, c] = pooled[:, torch.searchsorted(ids, f.cpu())] @ wt.float().cpu() + float(b)
        return out
    for c, ids in enumerate(features):
        match = torch.isin(indices, ids.to(indices.device))
        chosen = values * match  # [B, T, w]
        if kind == "itd":
            moved = F.embedding_bag(indices.reshape(-1, w), sae.W_dec, per_sample_weights=chosen.reshape(-1, w).to(sae.W_dec.dtype), mode="sum")
            moved = moved.reshape(B, T, -1).norm(dim=-1) / sae.input_scale
            per_token = moved / h.float().norm(dim=-1).clamp_min(1e-12)
        else:
            per_token = chosen.abs().sum(-1) / values.abs().sum(-1).clamp_min(1e-12)
        out[:, c] = per_token.amax(dim=1).float().cpu()
    return out


def calibrate(positive: torch.Tensor, negative: torch.Tensor, target_recall: float = 0.95) -> dict[str, Any]:
    """The highest threshold that flags at least ``target_recall`` of ``positive`` scores,
    with the recall, false-positive rate on ``negative`` and AUROC it gives."""
    if positive.numel() == 0:
        raise UsageError("calibration needs at least one held-out concept prompt")
    if not 0 < target_recall <= 1:
        raise UsageError(f"target_recall must be in (0, 1], got {target_recall}")
    pos = positive.double().sort().values
    # flag >= threshold; allow at most floor((1 - recall) * n) misses
    misses = int(math.floor((1 - target_recall) * pos.numel() + 1e-9))
    threshold = float(pos[misses])
    if threshold <= 0:
        # A prompt scoring 0 carries none of the features: a threshold of 0 would flag every
        # prompt. Settle for the recall the features can give.
        nonzero = pos[pos > 0]
        threshold = float(nonzero.min()) if nonzero.numel() else float("inf")
    return {"threshold": threshold, "target_recall": target_recall, **metrics(positive, negative, threshold)}


def metrics(positive: torch.Tensor, negative: torch.Tensor, threshold: float) -> dict[str, float]:
    """Recall, false-positive rate, precision and AUROC of ``score >= threshold``."""
    tp = int((positive >= threshold).sum())
    fp = int((negative >= threshold).sum())
    recall = tp / max(1, positive.numel())
    fpr = fp / max(1, negative.numel())
    precision = tp / max(1, tp + fp)
    if negative.numel() and positive.numel():
        auroc = float((positive[:, None] > negative[None, :]).double().mean() + 0.5 * (positive[:, None] == negative[None, :]).double().mean())
    else:
        auroc = float("nan")
    return {"recall": recall, "fpr": fpr, "precision": precision, "auroc": auroc,
            "n_positive": int(positive.numel()), "n_negative": int(negative.numel())}


class ConceptClassifier:
    """Classifies inputs by concept from the SAE code; doubles as a FeatureEdit gate.

    ``gate(h, code)`` returns ``[B, 1, F]`` (a :class:`~visionsae.control.FeatureEdit` gate's
    mask, on every token): for each input, which of the union's edit features
    (:attr:`feature_ids`; a concept's ``edit_features``, else its classifier features) belong
    to a concept the input was flagged for. Every call's decisions are kept in
    :attr:`decisions` (one dict per input).
    """

    def __init__(self, sae: SparseAutoencoder, concepts: ConceptSet, names: Sequence[str] | None = None,
                 skip_first: bool | None = None, check: bool = True) -> None:
        if check:
            concepts.check_sae(sae)
        self.sae = sae
        self.concepts = concepts
        self.names = list(names) if names is not None else concepts.names()
        if not self.names:
            raise UsageError("no concept given: pass the names of concepts of the set (or None for all of them, "
                             f"{concepts.names()})")
        for n in self.names:
            c = concepts[n]
            if c.threshold is None:
                raise UsageError(f"concept {n!r} has no calibrated threshold; run `visionsae concepts calibrate`")
            if not c.features:
                raise UsageError(f"concept {n!r} has no features")
        self.skip_first = concepts.skip_first if skip_first is None else skip_first
        self.feature_ids = feature_union(concepts, self.names, edit=True)  # [F]: what an edit changes
        self._groups = [torch.tensor(concepts[n].features, dtype=torch.long) for n in self.names]
        self._weights = [torch.tensor(concepts[n].weights or [], dtype=torch.float32) for n in self.names]
        self._biases = [float(concepts[n].bias) for n in self.names]
        self._thresholds = torch.tensor([concepts[n].threshold for n in self.names])
        # [C, F]: which edit features belong to each concept
        erased = [torch.tensor(concepts[n].erased, dtype=torch.long) for n in self.names]
        self._membership = torch.stack([torch.isin(self.feature_ids, g) for g in erased])
        self.decisions: list[dict[str, dict[str, float | bool]]] = []

    def scores(self, h: torch.Tensor, code: SparseCode) -> torch.Tensor:
        return concept_scores(self.sae, h, code, self._groups, self.concepts.score, self.skip_first,
                              self._weights, self._biases)

    @torch.no_grad()
    def classify(self, h: torch.Tensor, code: SparseCode | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [B, C], flagged [B, C]) for activations ``h [B, T, d]``."""
        if code is None:
            code = self.sae.encode(h)
        scores = self.scores(h, code)
        return scores, scores >= self._thresholds

    def gate(self, h: torch.Tensor, code: SparseCode, also: torch.Tensor | None = None) -> torch.Tensor:
        """The edit features to deactivate per input ``[B, 1, F]``; ``also [B, C]`` flags inputs for
        concepts whatever their scores (the eraser's name gate: such decisions say ``"named"``)."""
        scores, flagged = self.classify(h, code)
        named = also.to(flagged.device) & ~flagged if also is not None else torch.zeros_like(flagged)
        flagged = flagged | named
        for b in range(h.shape[0]):
            self.decisions.append({
                n: {"score": float(scores[b, c]), "threshold": float(self._thresholds[c]), "flagged": bool(flagged[b, c]),
                    **({"named": True} if named[b, c] else {})}
                for c, n in enumerate(self.names)
            })
        return (flagged.float() @ self._membership.float() > 0)[:, None, :]  # [B, 1, F]: every token
