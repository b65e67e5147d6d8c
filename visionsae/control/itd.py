"""ItD (Interpret then Deactivate): erase concepts from a text encoder's activations.

The SAE at one text-encoder layer classifies each prompt per concept (zero-shot, from the
same code); for a flagged prompt only, the flagged concepts' features are deactivated on
the tokens where they fire, the SAE's reconstruction error kept. A prompt that carries no
target concept passes through bit-identical. It is one :class:`FeatureEdit` gated by a
:class:`ConceptClassifier`.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ..concepts import ConceptClassifier, ConceptSet
from ..sae import SparseAutoencoder
from .edit import EditSpec, FeatureEdit


class ItDEraser:
    """Erase ``names`` (default: every concept of the set) from ``text_encoder``.

    ``mode`` / ``value``: how to deactivate (``zero``; ``scale`` by a negative ``value``
    pushes the features the other way). The hook point is ``hook``, else the concept set's,
    else the SAE's. Attach with :meth:`attach` or ``with eraser:``; ``enabled`` toggles it.
    """

    def __init__(
        self,
        text_encoder: nn.Module,
        sae: SparseAutoencoder,
        concepts: ConceptSet,
        names: Sequence[str] | None = None,
        hook: str | None = None,
        mode: str = "zero",
        value: float = 0.0,
        keep_error: bool = True,
    ) -> None:
        hook = hook or concepts.hook or sae.cfg.hook
        if not hook:
            raise ValueError("no hook point: pass hook=..., or use an SAE / concept set that records one")
        self.classifier = ConceptClassifier(sae, concepts, names)
        spec = EditSpec(self.classifier.feature_ids.tolist(), mode=mode, value=value, tokens="active", keep_error=keep_error)
        self.edit = FeatureEdit(text_encoder, hook, sae, spec, gate=self.classifier.gate)
        self._settings = {"names": list(self.classifier.names), "hook": hook, "mode": mode, "value": float(value),
                          "keep_error": bool(keep_error)}

    def settings(self) -> dict:
        """The constructor's settings as JSON-able values (names resolved, hook found), so that
        ``ItDEraser.from_settings(encoder, sae, concepts, eraser.settings())`` rebuilds it."""
        return dict(self._settings, names=list(self._settings["names"]))

    @classmethod
    def from_settings(cls, text_encoder: nn.Module, sae: SparseAutoencoder, concepts: ConceptSet, settings: dict) -> "ItDEraser":
        """The eraser that :meth:`settings` describes, on ``text_encoder`` with ``sae`` and ``concepts``."""
        return cls(text_encoder, sae, concepts, **settings)

    @property
    def names(self) -> list[str]:
        return self.classifier.names

    @property
    def enabled(self) -> bool:
        return self.edit.enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self.edit.enabled = value

    def attach(self) -> "ItDEraser":
        self.edit.attach()
        return self

    def detach(self) -> None:
        self.edit.detach()

    def __enter__(self) -> "ItDEraser":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def pop_decisions(self) -> list[dict]:
        """Decisions recorded since the last call (one dict per prompt encoded)."""
        out, self.classifier.decisions = self.classifier.decisions, []
        return out
