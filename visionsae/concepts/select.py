"""Select a concept's SAE features from example prompts.

Two methods, both on the per-prompt *max over tokens* of each latent (the first token,
CLIP's start token or BERT's [CLS], left out):

* ``itd`` (Interpret then Deactivate): each concept prompt's top-``top_n`` latents, kept
  if at least ``min_frequency`` of the concept prompts have them and fewer than
  ``keep_tolerance`` of the keep prompts (the things that must not be erased) do.
* ``mean_diff``: the normalised mean-difference score, the concept prompts' mean share of
  activation on the latent minus the keep prompts'; latents above the ``percentile``-th
  percentile of positive scores are kept.

Prompts are encoded through any :class:`visionsae.sources.text.TextEncoderSource`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from ..sae import SparseAutoencoder, SparseCode
from ..errors import UsageError

METHODS = ("itd", "mean_diff")


def prompt_activations(source, prompts: Sequence[str], batch_size: int = 32, progress: bool = False) -> Iterator[torch.Tensor]:
    """Hooked activations ``[B, T, d]`` of ``prompts``, ``batch_size`` prompts at a time,
    tokenised exactly as the source's pipeline does (padded to its max length)."""
    if not prompts:
        raise UsageError("no prompts given")
    for start in tqdm(range(0, len(prompts), batch_size), desc="encode prompts", disable=not progress, unit="batch"):
        chunk = list(prompts[start : start + batch_size])
        batch = source.encode(chunk, 0)
        T = int(batch.position.max()) + 1
        acts = torch.zeros(len(chunk), T, batch.acts.shape[-1], dtype=torch.float32)
        acts[batch.input_id.long(), batch.position.long()] = batch.acts.float()
        yield acts


def prompt_maxes(code: SparseCode, n_latents: int, skip_first: bool = True) -> torch.Tensor:
    """Per prompt, each latent's max activation over tokens: ``[B, n_latents]``.

    ``code`` is ``[B, T, w]``. Negative values (AbsTopK) count by magnitude.
    """
    values, indices = code
    if skip_first:
        values, indices = values[:, 1:], indices[:, 1:]
    B = values.shape[0]
    out = torch.zeros(B, n_latents, dtype=torch.float32)
    out.scatter_reduce_(1, indices.reshape(B, -1), values.abs().reshape(B, -1).float(), reduce="amax")
    return out


@dataclass
class PromptStats:
    """Per-latent statistics of a group of prompts."""

    n_prompts: int
    top_counts: torch.Tensor  # [n] prompts whose top-n latents include this one
    share_sum: torch.Tensor  # [n] sum over prompts of max_act / sum(max_act)

    @property
    def frequency(self) -> torch.Tensor:
        return self.top_counts / max(1, self.n_prompts)

    @property
    def mean_share(self) -> torch.Tensor:
        return self.share_sum / max(1, self.n_prompts)


@torch.no_grad()
def prompt_stats(sae: SparseAutoencoder, source, prompts: Sequence[str], top_n: int = 10, batch_size: int = 32,
                 skip_first: bool = True, progress: bool = False) -> PromptStats:
    """Top-n counts and activation shares of every latent over ``prompts``."""
    n = sae.n_latents
    counts = torch.zeros(n)
    shares = torch.zeros(n)
    for acts in prompt_activations(source, prompts, batch_size, progress):
        batch = stats_of(prompt_maxes(sae.encode(acts), n, skip_first), top_n)
        counts += batch.top_counts
        shares += batch.share_sum
    return PromptStats(len(prompts), counts, shares)


def stats_of(maxes: torch.Tensor, top_n: int = 10) -> PromptStats:
    """:class:`PromptStats` (top-n counts, activation shares) of per-input latent maxes ``[N, n]``
    (prompts here, conversations in :mod:`visionsae.control.sauce`)."""
    top = maxes.topk(min(top_n, maxes.shape[1]), dim=1)
    counts = torch.zeros(maxes.shape[1])
    fired = top.values > 0
    counts.index_add_(0, top.indices[fired], torch.ones(int(fired.sum())))
    shares = (maxes / maxes.sum(1, keepdim=True).clamp_min(1e-12)).sum(0)
    return PromptStats(maxes.shape[0], counts, shares)


def select_features(
    concept: PromptStats,
    keep: PromptStats | Sequence[PromptStats] | None,
    method: str = "itd",
    min_frequency: float = 0.1,
    keep_tolerance: float = 0.05,
    percentile: float = 99.9,
    max_features: int | None = None,
) -> tuple[list[int], list[float]]:
    """The concept's latent ids and their scores, best first (see the module docstring).

    ``keep`` may be several groups (e.g. generic prompts and each other concept): a latent
    must pass against every one of them.
    """
    if method not in METHODS:
        raise UsageError(f"unknown selection method {method!r}; expected one of {METHODS}")
    keeps = [] if keep is None else [keep] if isinstance(keep, PromptStats) else list(keep)
    if method == "itd":
        score = concept.frequency.clone()
        ok = score >= min_frequency
        for k in keeps:
            ok &= k.frequency < keep_tolerance
    else:
        other = torch.stack([k.mean_share for k in keeps]).amax(0) if keeps else 0
        score = concept.mean_share - other
        positive = score[score > 0]
        if positive.numel() == 0:
            return [], []
        cut = torch.quantile(positive.double(), percentile / 100).float() if positive.numel() > 1 else positive[0] * 0
        ok = score >= cut
    ids = ok.nonzero().squeeze(-1)
    order = score[ids].argsort(descending=True)
    ids = ids[order]
    if max_features is not None:
        ids = ids[:max_features]
    return ids.tolist(), [float(score[i]) for i in ids]
