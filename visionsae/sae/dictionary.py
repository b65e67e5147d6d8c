"""The archetypal dictionary of RA-SAE (Fel et al. 2025, "Archetypal SAE: Adaptive and Stable
Dictionary Learning for Concept Extraction in Large Vision Models").

Each atom is a convex (row-stochastic) mix of *candidate* points of the data -- here the
k-means centroids of the SAE's centred training activations, computed by :func:`kmeans` --
plus a relaxation whose rows have norm at most ``delta``, times an optional learned scale::

    atoms [n, d] = exp(log_scale) * (mix [n, C] @ candidates [C, d] + relaxation [n, d])

Atoms that must stay near the data's hull cannot drift to arbitrary directions, so two
dictionaries trained from independent initialisations agree far more than linear ones
(the paper's stability argument). :class:`~visionsae.sae.SparseAutoencoder` keeps the fused
matrix in its ordinary ``W_dec`` (inference, saving and every reader of ``W_dec`` see one
plain matrix) and these parameters beside it, so a saved RA-SAE reloads and trains further.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm
from ..errors import UsageError


@torch.no_grad()
def kmeans(points: torch.Tensor, k: int, *, iters: int = 25, seed: int = 0, progress: bool = False) -> torch.Tensor:
    """Centroids ``[k, d]`` of ``points [N, d]``: k-means++ seeding, then Lloyd iterations.

    A cluster that empties is re-seeded at the point farthest from its centroid. The same
    ``seed`` gives the same centroids.
    """
    n = points.shape[0]
    if n < k:
        raise UsageError(
            f"k-means for {k} archetypal candidates needs at least {k} rows, got {n} "
            "(initialise from a larger batch or lower archetypal_candidates)"
        )
    x = points.float()
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    sq = (x * x).sum(1)  # [N]
    # k-means++ (Arthur & Vassilvitskii 2007): next centre drawn with probability ~ squared distance
    first = int(torch.randint(n, (1,), generator=gen))
    centres = [first]
    dist = (sq - 2 * x @ x[first] + sq[first]).clamp_min(0)  # [N]
    for _ in range(1, k):
        total = float(dist.sum())
        if total <= 0:  # every point is already a centre
            nxt = int(torch.randint(n, (1,), generator=gen))
        else:
            nxt = int(torch.multinomial((dist / total).cpu(), 1, generator=gen))
        centres.append(nxt)
        dist = torch.minimum(dist, (sq - 2 * x @ x[nxt] + sq[nxt]).clamp_min(0))
    c = x[torch.tensor(centres, device=x.device)].clone()
    for _ in tqdm(range(iters), desc="k-means candidates", disable=not progress, leave=False):
        d2 = sq[:, None] - 2 * x @ c.T + (c * c).sum(1)[None, :]  # [N, k]
        assign = d2.argmin(1)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        empty = counts == 0
        new = sums / counts.clamp_min(1)[:, None]
        if bool(empty.any()):
            far = d2.gather(1, assign[:, None]).squeeze(1).topk(int(empty.sum())).indices
            new[empty] = x[far]
        if torch.allclose(new, c):
            c = new
            break
        c = new
    return c


class ArchetypalDictionary(nn.Module):
    """``atoms() = exp(log_scale) * (mix @ candidates + relaxation)`` (see the module doc).

    Tensors: ``candidates [C, d_in]`` (buffer, from :meth:`set_candidates_`), ``mix
    [n_latents, C]`` (row-stochastic after :meth:`project_`), ``relaxation [n_latents, d_in]``
    (rows of norm <= ``delta`` after :meth:`project_`), ``log_scale []`` (a parameter when
    learned, else a zero buffer) and ``reference_scale []``: the SAE's input scale when the
    candidates were set, so that the atoms can be expressed in the SAE's current units after
    its input scale is folded into the weights.
    """

    def __init__(self, n_latents: int, d_in: int, n_candidates: int, delta: float, learn_scale: bool,
                 device=None, dtype=torch.float32) -> None:
        super().__init__()
        if n_candidates < n_latents:
            raise UsageError(
                f"archetypal_candidates={n_candidates} is smaller than n_latents={n_latents}; every atom starts "
                "at its own candidate, so at least n_latents candidates are needed"
            )
        self.delta = float(delta)
        self.register_buffer("candidates", torch.zeros(n_candidates, d_in, device=device, dtype=dtype))
        self.mix = nn.Parameter(torch.eye(n_latents, n_candidates, device=device, dtype=dtype))
        self.relaxation = nn.Parameter(torch.zeros(n_latents, d_in, device=device, dtype=dtype))
        if learn_scale:
            self.log_scale = nn.Parameter(torch.zeros((), device=device, dtype=dtype))
        else:
            self.register_buffer("log_scale", torch.zeros((), device=device, dtype=dtype))
        self.register_buffer("reference_scale", torch.ones((), device=device, dtype=torch.float32))

    def atoms(self) -> torch.Tensor:
        """The dictionary ``[n_latents, d_in]`` in the units of the candidates (differentiable)."""
        return torch.exp(self.log_scale) * (self.mix @ self.candidates + self.relaxation)

    @torch.no_grad()
    def project_(self) -> None:
        """Enforce the constraints after an optimizer step: ``mix`` non-negative with rows
        summing to one, relaxation rows of norm at most ``delta``."""
        mix = self.mix.clamp_min(0)
        sums = mix.sum(1, keepdim=True)
        # a row the step drove entirely negative falls back to its largest entry
        dead = sums.squeeze(1) <= 0
        if bool(dead.any()):
            mix[dead] = nn.functional.one_hot(self.mix[dead].argmax(1), mix.shape[1]).to(mix.dtype)
            sums = mix.sum(1, keepdim=True)
        self.mix.copy_(mix / sums)
        norms = self.relaxation.norm(dim=1, keepdim=True)
        self.relaxation.mul_((self.delta / norms.clamp_min(1e-12)).clamp(max=1.0))

    @torch.no_grad()
    def set_candidates_(self, points: torch.Tensor, reference_scale: float, *, seed: int, iters: int = 25) -> None:
        """Candidates = k-means centroids of ``points [N, d_in]`` (centred, scaled activations);
        atom ``i`` starts as candidate ``i`` (``mix`` = identity), with no relaxation."""
        c = kmeans(points, self.candidates.shape[0], iters=iters, seed=seed)
        self.candidates.copy_(c.to(self.candidates.dtype))
        self.mix.copy_(torch.eye(*self.mix.shape, dtype=self.mix.dtype, device=self.mix.device))
        self.relaxation.zero_()
        self.log_scale.zero_()
        self.reference_scale.fill_(float(reference_scale))
