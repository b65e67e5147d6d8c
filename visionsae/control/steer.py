"""Steering: add SAE features' decoder direction to a live model's activations.

A steering edit is a :class:`FeatureEdit` in ``add`` mode: on the chosen tokens it adds
``strength x`` the features' (summed, unit) decoder direction scaled to the mean norm of
the hooked tokens, so a strength means the same on any layer. Three tiers, as in
"Breaking Bad Tokens" (gentle, medium, strong), or any float.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ..sae import SparseAutoencoder
from .edit import EditSpec, FeatureEdit
from ..errors import UsageError

# strength in units of the mean token norm of the hooked activations
TIERS: dict[str, float] = {"gentle": 0.1, "medium": 0.3, "strong": 1.0}


def strength_of(strength: str | float) -> float:
    if isinstance(strength, str):
        if strength not in TIERS:
            raise UsageError(f"unknown steering tier {strength!r}; expected one of {sorted(TIERS)} or a number")
        return TIERS[strength]
    return float(strength)


def steering_edit(model: nn.Module, hook: str, sae: SparseAutoencoder, features: Sequence[int],
                  strength: str | float = "medium", tokens: str = "all") -> FeatureEdit:
    """A FeatureEdit that steers ``model`` at ``hook`` along ``features`` (attach it, or use ``with``)."""
    return FeatureEdit(model, hook, sae, EditSpec(list(features), mode="add", value=strength_of(strength), tokens=tokens))
