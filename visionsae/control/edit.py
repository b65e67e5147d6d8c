"""The one mechanism that edits SAE features inside a live model.

A :class:`FeatureEdit` is a forward hook on one module. On every call it takes the
module's output activations ``h [B, T, d]`` (or ``[B, d]``), encodes them with the SAE,
asks its *gate* which of the chosen latents to treat on which tokens of which inputs (a
mask ``[B, T, F]``: ItD's classifier passes whole inputs for the concepts it flags, SAUCE
the image tokens of calls of its model), and changes only those:

* ``zero``  — deactivate them (ItD erasure, SAUCE);
* ``scale`` — multiply them by ``value`` (a negative value pushes the other way);
* ``clamp`` — set them to ``value`` wherever they fire (SAUCE's clamp);
* ``add``   — add ``value`` x the unit decoder direction, on every selected token (steering).

The edited activation is ``h + decode(edited code) - decode(code)``: the SAE's
reconstruction error is kept, so nothing but the chosen features moves
(``keep_error=False`` returns the bare reconstruction instead). Inputs the gate does not
flag, and tokens where no chosen feature fires, leave the module bit-identical.

ItD, SAUCE and steering are configurations of this class, not copies of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import UsageError
from ..sae import SparseAutoencoder, SparseCode
from ..sources.base import output_tensor, resolve_module

MODES = ("zero", "scale", "clamp", "add")
TOKEN_POLICIES = ("active", "all")

# gate(h [B, T, d], code [B, T, w]) -> which features to edit on which tokens: a bool tensor
# [B, T, F] over the edit's F features (sorted ids), or one with size-1 dimensions that
# broadcast to it: [B, 1, 1] whole inputs, [B, 1, F] features per input, [B, T, 1] tokens per
# input ([B] is read as [B, 1, 1]). May record decisions.
Gate = Callable[[torch.Tensor, SparseCode], torch.Tensor]


@dataclass
class EditSpec:
    """What to change: latents, how, and on which tokens."""

    features: Sequence[int]
    """Latent ids to edit."""
    mode: str = "zero"
    """zero, scale, clamp or add (see the module docstring)."""
    value: float = 0.0
    """Factor of ``scale``, value of ``clamp``, strength of ``add``."""
    tokens: str = "active"
    """Of the tokens the gate passes: active, those where a chosen latent fires; all, every one
    (for ``add``: steer tokens whether or not the features fire)."""
    keep_error: bool = True
    """Add the SAE's reconstruction error back (edit only the chosen features)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"unknown edit mode {self.mode!r}; expected one of {MODES}")
        if self.tokens not in TOKEN_POLICIES:
            raise UsageError(f"unknown token policy {self.tokens!r}; expected one of {TOKEN_POLICIES}")
        if len(self.features) == 0:
            raise UsageError("an edit needs at least one feature id")
        if not math.isfinite(self.value):
            raise UsageError(f"the edit's value must be a finite number, got {self.value!r} (a NaN or Inf edit gives a NaN image)")


@dataclass
class EditRecord:
    """What the last call of the hook did (for outputs and tests)."""

    flagged: torch.Tensor | None = None  # [B] bool: inputs the gate passed on some token
    edited_tokens: torch.Tensor | None = None  # [B, T] bool
    calls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class FeatureEdit:
    """A forward hook on ``model``'s module ``hook`` that edits ``sae`` features.

    Use as a context manager or call :meth:`attach` / :meth:`detach`; :attr:`enabled`
    switches it off without removing it. ``gate`` (default: everything) decides which features
    to edit on which tokens of each input (see :data:`Gate`).
    """

    def __init__(
        self,
        model: nn.Module,
        hook: str,
        sae: SparseAutoencoder,
        spec: EditSpec,
        gate: Gate | None = None,
    ) -> None:
        n = sae.n_latents
        bad = [f for f in spec.features if not 0 <= int(f) < n]
        if bad:
            raise UsageError(f"feature ids {bad[:5]} are out of range for an SAE of {n} latents")
        self.module = resolve_module(model, hook)
        self.hook = hook
        self.sae = sae
        self.spec = spec
        self.gate = gate
        self.enabled = True
        self.record = EditRecord()
        self._handle = None
        self._feature_ids = torch.tensor(sorted({int(f) for f in spec.features}), dtype=torch.long)

    # ---------------------------------------------------------------- lifecycle
    def attach(self) -> "FeatureEdit":
        if self._handle is None:
            self._handle = self.module.register_forward_hook(self._hook)
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> "FeatureEdit":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    # --------------------------------------------------------------------- hook
    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        if not self.enabled:
            return None
        h = output_tensor(output)
        new = self.apply(h)
        if new is h:
            return None  # nothing flagged: the module's own output object goes on
        return _replace_output(output, new)

    def apply(self, h: torch.Tensor) -> torch.Tensor:
        """The edited activations (``h`` itself when nothing is edited).

        Differentiable where autograd is on: the edited output's gradient reaches the model's
        layers below the hook (and the SAE), so models with an edit attached can be attributed
        through and fine-tuned. The gate's decisions are discrete and carry no gradient."""
        self.record.calls += 1
        squeeze = h.ndim == 2
        h3 = h[:, None, :] if squeeze else h  # [B, T, d]
        code = self.sae.encode(h3.to(self.sae.W_enc.dtype))
        mask = self._gate_mask(h3, code)  # [B, T, F]
        flagged = mask.flatten(1).any(-1)
        self.record.flagged = flagged
        self.record.edited_tokens = torch.zeros(h3.shape[:2], dtype=torch.bool, device=h.device)
        if not bool(flagged.any()):
            return h
        rows = flagged.nonzero().squeeze(-1)
        sub, mask = SparseCode(code.values[rows], code.indices[rows]), mask[rows]  # [b, T, w], [b, T, F]
        current = self._current(sub) * mask  # each passed latent's value (0 where silent or not passed)
        tokens = (current != 0).any(-1) if self.spec.tokens == "active" else mask.any(-1)
        if not bool(tokens.any()):
            return h
        if self.spec.mode == "add":
            delta = self._steer(h3[rows], mask)
        else:
            delta = self._suppress(h3[rows], sub, current)
        out = h3.clone()
        edited = out[rows]
        edited[tokens] = (edited[tokens].to(delta.dtype) + delta[tokens]).to(h.dtype)
        out[rows] = edited
        self.record.edited_tokens[rows] = tokens
        return out[:, 0, :] if squeeze else out

    def _gate_mask(self, h3: torch.Tensor, code: SparseCode) -> torch.Tensor:
        """The gate's decision as a bool ``[B, T, F]`` (a broadcast view)."""
        shape = (*h3.shape[:2], self._feature_ids.numel())
        if self.gate is None:
            return torch.ones(1, 1, 1, dtype=torch.bool, device=h3.device).expand(shape)
        decision = self.gate(h3, code).to(h3.device, torch.bool)
        if decision.ndim == 1:
            decision = decision[:, None, None]
        if decision.ndim != 3 or decision.shape[0] != shape[0] or any(d not in (1, s) for d, s in zip(decision.shape[1:], shape[1:])):
            raise UsageError(f"the gate returned shape {tuple(decision.shape)}; expected [{shape[0]}, {shape[1]} or 1, "
                             f"{shape[2]} or 1] (inputs, tokens, the edit's features) or [{shape[0]}]")
        return decision.expand(shape)

    def _current(self, code: SparseCode) -> torch.Tensor:
        """Each chosen latent's value on each token ``[b, T, F]`` (0 where it is silent)."""
        ids = self._feature_ids.to(code.indices.device)
        match = code.indices.unsqueeze(-2) == ids[:, None]  # [b, T, F, w]
        return (code.values.unsqueeze(-2) * match).sum(-1)

    def _suppress(self, h: torch.Tensor, code: SparseCode, current: torch.Tensor) -> torch.Tensor:
        """zero / scale / clamp: the change of the activations ``[b, T, d]`` that moves the
        passed latents from ``current`` to their edited values."""
        spec, sae = self.spec, self.sae
        W = sae.W_dec[self._feature_ids.to(sae.W_dec.device)]  # [F, d]
        if spec.mode == "zero":
            target = torch.zeros_like(current)
        elif spec.mode == "scale":
            target = current * spec.value
        else:  # clamp where the latent fires
            target = torch.where(current != 0, torch.full_like(current, spec.value), current)
        delta = ((target - current).to(W.dtype) @ W) / sae.input_scale.to(W.dtype)
        if not spec.keep_error:
            delta = sae.decode(code).to(W.dtype) - h.to(W.dtype) + delta  # bare reconstruction, edited
        return delta

    def _steer(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """add: ``value`` x the features' unit decoder direction, in units of each input's mean
        token norm (so tiers mean the same on any layer and no input's edit depends on the
        rest of its batch), ``[b, T, d]``."""
        if not bool((mask == mask[..., :1]).all()):
            raise UsageError("mode 'add' steers all of its features; the gate must pass whole tokens or inputs")
        W = self.sae.W_dec[self._feature_ids.to(self.sae.W_dec.device)]
        direction = W.sum(0)
        direction = direction / direction.norm().clamp_min(1e-12)
        size = h.float().norm(dim=-1).mean(dim=1)[:, None, None]  # [b, 1, 1]
        return (self.spec.value * size * direction).to(W.dtype).expand(*h.shape[:2], -1)


def _replace_output(output: Any, new: torch.Tensor) -> Any:
    """The module's output with its activation tensor replaced by ``new``."""
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    if hasattr(output, "to_tuple"):
        key = next(iter(output.keys()))
        output[key] = new
        return output
    raise TypeError(f"cannot replace the activations in a {type(output).__name__} output")
