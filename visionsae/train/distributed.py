"""Collectives of data-parallel training: what the trainer reduces across processes.

Under ``accelerate launch`` / ``torchrun`` DDP averages the gradients; everything else that
changes during training is reduced here, so every process holds the same SAE after every
step: the first batches the SAE is initialised from (gathered), the state a sparsity rule
sets by rule rather than by gradient (``SparsityRule.adaptive_state``: BatchTopK / Feature
Choice thresholds, Mutual Choice usage, Group Bias Adaptation's encoder biases; averaged),
which latents fired (the dead-latent counters; summed), the rows each step consumed and the
logged metrics. On one process every call returns its input.
"""

from __future__ import annotations

import torch


class Collectives:
    """Reductions across the ``world`` processes of a run (``torch.distributed``, as set up
    by accelerate); the identity when ``world == 1``."""

    def __init__(self, world: int) -> None:
        self.world = world
        if world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                raise RuntimeError(f"{world} processes but torch.distributed is not initialised")
            self._dist = dist

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over processes (a new tensor; ``t`` is left as it is)."""
        if self.world == 1:
            return t
        out = t.clone()
        self._dist.all_reduce(out)
        return out

    def all_true(self, flag: bool) -> bool:
        """True where every process says True (e.g. "I still have a batch")."""
        if self.world == 1:
            return flag
        return bool(self.sum(torch.tensor([int(flag)]))[0] == self.world)

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """The ``[rows, ...]`` tensors of all processes concatenated in rank order (they may
        hold different numbers of rows)."""
        if self.world == 1:
            return t
        counts = self.sum(torch.nn.functional.one_hot(torch.tensor(self._dist.get_rank()), self.world) * t.shape[0])
        most = int(counts.max())
        padded = t.new_zeros((most, *t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        self._dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[: int(n)] for p, n in zip(parts, counts)])

    def mean_state_(self, tensors: list[torch.Tensor]) -> None:
        """Replace each float tensor by its mean over processes, in place (one collective for
        all of them). NaN entries (a threshold not set yet) are left out of the mean; an entry
        NaN on every process stays NaN."""
        if self.world == 1 or not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
        known = ~torch.isnan(flat)
        both = self.sum(torch.cat([torch.where(known, flat, 0.0), known.double()]))
        total, count = both[: flat.numel()], both[flat.numel():]
        mean = torch.where(count > 0, total / count.clamp_min(1), float("nan"))
        start = 0
        for t in tensors:
            n = t.numel()
            t.copy_(mean[start : start + n].reshape(t.shape).to(t.dtype))
            start += n


def adaptive_tensors(sae) -> list[torch.Tensor]:
    """The SAE's tensors that its sparsity rule sets by rule, not by gradient (named in
    ``sae.rule.adaptive_state`` as state-dict keys)."""
    state = dict(sae.named_parameters()) | dict(sae.named_buffers())
    return [state[name] for name in sae.rule.adaptive_state]
