"""The reconstruction measure every evaluation and benchmark reports, in one place."""

from __future__ import annotations

import torch


class FVU:
    """Fraction of variance unexplained over a stream of batches:
    ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``, the mean taken over *all* rows seen (not per
    batch), summed in float64 so the figure does not depend on how the rows were batched.

    >>> fvu = FVU()
    >>> for x in batches:
    ...     fvu.update(x, sae(x).x_hat)
    >>> fvu.value
    """

    def __init__(self) -> None:
        self.rows = 0
        self.sq_err = 0.0
        self.sum_sq = 0.0
        self.sum_x: torch.Tensor | None = None

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        """Add rows ``x [B, d]`` and their reconstructions ``x_hat [B, d]``."""
        x64 = x.detach().double()
        self.sq_err += float((x64 - x_hat.detach().double()).pow(2).sum())
        self.sum_sq += float(x64.pow(2).sum())
        s = x64.sum(0).cpu()
        self.sum_x = s if self.sum_x is None else self.sum_x + s
        self.rows += x.shape[0]

    @property
    def total_variance(self) -> float:
        """``sum ||x - mean(x)||^2`` of the rows seen."""
        if self.rows == 0:
            return 0.0
        return self.sum_sq - float(self.sum_x.pow(2).sum()) / self.rows

    @property
    def value(self) -> float:
        """The FVU of the rows seen (0 rows or 0 variance: the error over a tiny floor)."""
        return self.sq_err / max(self.total_variance, 1e-30)
