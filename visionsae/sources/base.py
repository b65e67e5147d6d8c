"""The one interface of activation sources, the hook that reads a module's output, and the
generic source (any ``nn.Module`` plus a hook point).

A source turns a list of inputs (prompts, image paths, image + question records, tensors) into
:class:`~visionsae.store.ActivationBatch` es: rows ``[N, d_in]`` taken at one hook point (a module
path such as ``text_model.encoder.layers.8``) with, per row, the index of its input, its token
position and its :class:`~visionsae.store.TokenKind`.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from visionsae.store import ActivationBatch, TokenKind
from ..errors import UsageError


class _StopForward(Exception):
    """Raised inside the hook to skip the layers after the hook point."""


def resolve_hook(model: nn.Module, hook: str) -> str:
    """The module path of ``hook`` in ``model``, or a ValueError that names close paths.

    Paths written for transformers 4 still resolve on transformers 5, where wrapper modules
    were folded away: ``text_model.encoder.layers.8`` of a ``CLIPTextModel`` is
    ``encoder.layers.8`` there (a leading component that is not a child is dropped; a path
    one wrapper deeper, ``model.<hook>``, is also tried).
    """
    names = {n for n, _ in model.named_modules() if n}
    if hook in names:
        return hook
    head, _, rest = hook.partition(".")
    candidates = []
    if rest and not hasattr(model, head):
        candidates.append(rest)
    candidates += [f"{child}.{hook}" for child, _ in model.named_children()]
    found = [c for c in candidates if c in names]
    if len(found) == 1:
        return found[0]
    close = difflib.get_close_matches(hook, sorted(names), n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else f"; e.g. {', '.join(sorted(names)[:5])}"
    raise UsageError(f"hook point {hook!r} is not a module of {type(model).__name__}{hint}")


def resolve_module(model: nn.Module, hook: str) -> nn.Module:
    """The submodule at ``hook`` (see :func:`resolve_hook`)."""
    return model.get_submodule(resolve_hook(model, hook))


def output_tensor(output: Any) -> torch.Tensor:
    """The activation tensor of a module's output (a tensor, a tuple whose first element is
    one, or a ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if hasattr(output, "to_tuple"):
        return output_tensor(output.to_tuple())
    raise UsageError(f"the hooked module returned {type(output).__name__}, not a tensor; hook a module that returns one")


class HookCapture:
    """A forward hook that keeps the output of one module.

    A module called several times in one forward keeps its last call's output. With
    ``stop=True`` the forward pass is cut short right after the hooked module (the layers
    after it are not run); use it only for modules called once per forward.
    """

    def __init__(self, model: nn.Module, hook: str):
        self.hook = resolve_hook(model, hook)
        self.module = model.get_submodule(self.hook)
        self.output: torch.Tensor | None = None
        self.calls = 0
        self.stop = False
        self._handle = None

    def _fn(self, _module, _inputs, output):
        out = output_tensor(output).detach()
        self.calls += 1
        if self.stop:
            self.output = out
            raise _StopForward
        # later layers could change the tensor in place (x += residual): keep a copy
        self.output = out.clone()

    def run(self, forward: Callable[[], Any], *, stop: bool) -> torch.Tensor:
        """Call ``forward()`` with the hook in place and return the captured output."""
        self.output, self.calls, self.stop = None, 0, stop
        handle = self.module.register_forward_hook(self._fn)
        try:
            with torch.no_grad():  # not inference_mode: its tensors cannot enter autograd later (SAE training)
                forward()
        except _StopForward:
            pass
        finally:
            handle.remove()
        if self.output is None:
            raise UsageError(f"hook point {self.hook!r} did not run in the forward pass (the model's forward does not use it)")
        return self.output


def tokens_of(output: torch.Tensor, *, channels_last: bool = False) -> torch.Tensor:
    """A hook output as ``[B, T, D]`` tokens.

    ``[B, T, D]`` stays; a feature map ``[B, C, H, W]`` becomes ``H*W`` tokens (position
    ``h * W + w``; ``channels_last`` reads it as ``[B, H, W, C]``); ``[B, D]`` is one token.
    """
    if output.ndim == 3:
        return output
    if output.ndim == 4:
        if channels_last:
            return output.flatten(1, 2)
        return output.flatten(2).transpose(1, 2)
    if output.ndim == 2:
        return output[:, None, :]
    raise UsageError(f"cannot read a hook output of shape {tuple(output.shape)} as tokens; expected 2, 3 or 4 dims")


class ActivationSource:
    """Base of all sources: a model, a hook point, and how inputs become model calls.

    Subclasses implement :meth:`encode`, which runs one batch of inputs; :meth:`batches`
    cuts an input list into batches. ``keep_kinds`` (a list of :class:`TokenKind`) leaves out
    rows of other kinds before they are stored.
    """

    #: "text", "image", "vlm" or "module": what the inputs are
    input_type = "module"
    #: :func:`extract` prepares the next batch in a thread while the model runs this one.
    #: Worth it where preparing is heavy (decoding images); where it is light (tokenising)
    #: the thread only disturbs the model's OpenMP threads, and it is off.
    prepare_in_thread = True

    def __init__(
        self,
        model: nn.Module,
        hook: str,
        *,
        device: str | torch.device | None = None,
        stop_early: bool = True,
        keep_kinds: Sequence[TokenKind | str] | None = None,
    ):
        self.model = model.eval()
        self.capture = HookCapture(model, hook)
        self.hook = self.capture.hook  # the resolved module path
        self.device = torch.device(device) if device is not None else _module_device(model)
        self.stop_early = stop_early
        self.keep_kinds = None if keep_kinds is None else TokenKind.parse(keep_kinds)
        self._stop_ok: bool | None = None  # the hooked module runs once per forward (checked once)

    # -- to implement ---------------------------------------------------------------------
    def encode(self, items: Sequence[Any], first_id: int) -> ActivationBatch:
        """Activations of ``items`` (inputs ``first_id, first_id + 1, ...``)."""
        raise NotImplementedError

    def prepare(self, items: Sequence[Any], first_id: int) -> Any:
        """The CPU work before the forward pass (tokenising, decoding images); :func:`extract`
        runs it for the next batch in a thread while the model runs the current one. Sources
        that split their work override this and :meth:`run`; ``run(prepare(...))`` is ``encode``."""
        return items, first_id

    def run(self, prepared: Any) -> ActivationBatch:
        """The forward pass (and rows) of what :meth:`prepare` returned."""
        return self.encode(*prepared)

    def describe(self) -> dict:
        """JSON-able facts about this source, kept in the store's manifest."""
        return {"type": type(self).__name__, "model": type(self.model).__name__, "hook": self.hook}

    # -- shared ---------------------------------------------------------------------------
    def _capture(self, forward: Callable[[], Any]) -> torch.Tensor:
        """Run ``forward`` and return the hooked output, cutting the forward short when the
        hooked module is known to run exactly once."""
        if not self.stop_early or self._stop_ok is False:
            return self.capture.run(forward, stop=False)
        if self._stop_ok is None:
            out = self.capture.run(forward, stop=False)
            self._stop_ok = self.capture.calls == 1
            return out
        return self.capture.run(forward, stop=True)

    def _keep(self, batch: ActivationBatch) -> ActivationBatch:
        if self.keep_kinds is None:
            return batch
        keep = torch.tensor([int(k) for k in self.keep_kinds], dtype=torch.uint8)
        return batch.select(torch.isin(batch.kind, keep))

    def batches(self, inputs: Sequence[Any], batch_size: int = 32, *, start: int = 0) -> Iterator[ActivationBatch]:
        """Encode ``inputs[start:]`` ``batch_size`` at a time (input ids are list indices)."""
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        for i in range(start, len(inputs), batch_size):
            yield self.encode(inputs[i : i + batch_size], i)

    def rows(self, inputs: Sequence[Any], batch_size: int = 32, *, seed: int = 0, shuffle: bool = True,
             loop: bool = False, out_batch: int | None = None) -> Iterator[torch.Tensor]:
        """Float32 activation rows ``[out_batch, d_in]`` straight from the model (no store).

        Inputs are visited in a seeded random order per pass (``shuffle``); rows of
        ``batch_size`` inputs are shuffled together and re-cut into batches of ``out_batch``
        rows (default: as they come). With ``loop`` passes repeat forever.
        """
        epoch = 0
        carry = None
        while True:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order = torch.randperm(len(inputs), generator=gen).tolist() if shuffle else list(range(len(inputs)))
            for i in range(0, len(order), batch_size):
                idx = order[i : i + batch_size]
                b = self.encode([inputs[j] for j in idx], 0)
                acts = b.acts.float()
                if shuffle:
                    acts = acts[torch.randperm(acts.shape[0], generator=gen)]
                if out_batch is None:
                    if acts.shape[0]:
                        yield acts
                    continue
                carry = acts if carry is None else torch.cat([carry, acts])
                while carry.shape[0] >= out_batch:
                    yield carry[:out_batch]
                    carry = carry[out_batch:]
            epoch += 1
            if not loop:
                if carry is not None and carry.shape[0]:
                    yield carry
                return


def _module_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def rows_from_tokens(
    tokens: torch.Tensor, kinds: torch.Tensor, first_id: int, positions: torch.Tensor | None = None
) -> ActivationBatch:
    """Flatten ``tokens`` [B, T, D] with ``kinds`` [B, T] (uint8) into rows; ``positions``
    [B, T] defaults to ``0..T-1``."""
    B, T, D = tokens.shape
    if kinds.shape != (B, T):
        raise UsageError(f"token kinds have shape {tuple(kinds.shape)} but the tokens are {B} x {T}")
    if positions is None:
        positions = torch.arange(T, dtype=torch.int32).expand(B, T)
    input_id = (torch.arange(B, dtype=torch.int64) + first_id)[:, None].expand(B, T)
    return ActivationBatch(
        tokens.reshape(B * T, D),
        input_id.reshape(-1),
        positions.reshape(-1).to(torch.int32),
        kinds.reshape(-1).to(torch.uint8),
    )


class ModuleSource(ActivationSource):
    """Any ``nn.Module`` plus a hook point.

    Inputs are whatever ``model`` takes: each item is one input (a tensor without the batch
    dimension, or a dict of such tensors passed as keyword arguments); items are stacked into a
    batch. A ``[B, T, D]`` output gives T token rows, ``[B, C, H, W]`` gives H*W rows (kind
    PATCH), ``[B, D]`` one POOLED row per input. ``prefix_kinds`` names the kinds of the first
    tokens of a sequence output (e.g. ``[TokenKind.CLS]``; the rest are PATCH).
    """

    def __init__(self, model: nn.Module, hook: str, *, prefix_kinds: Sequence[TokenKind] = (),
                 channels_last: bool = False, **kw):
        super().__init__(model, hook, **kw)
        self.prefix_kinds = list(prefix_kinds)
        self.channels_last = channels_last

    def describe(self) -> dict:
        return {**super().describe(), "prefix_kinds": [k.name.lower() for k in self.prefix_kinds]}

    def encode(self, items: Sequence[Any], first_id: int) -> ActivationBatch:
        if isinstance(items[0], dict):
            kwargs = {k: torch.stack([it[k] for it in items]).to(self.device) for k in items[0]}
            out = self._capture(lambda: self.model(**kwargs))
        else:
            x = torch.stack(list(items)).to(self.device)
            out = self._capture(lambda: self.model(x))
        batch = rows_from_output(out, first_id, self.prefix_kinds, channels_last=self.channels_last)
        batch.records = [{"input_id": first_id + i} for i in range(len(items))]
        return self._keep(batch)


def rows_from_output(out: torch.Tensor, first_id: int, prefix_kinds: Sequence[TokenKind] = (), *,
                     channels_last: bool = False) -> ActivationBatch:
    """Rows and kinds of a hook output: pooled ``[B, D]``, feature map, or tokens whose first
    ``len(prefix_kinds)`` are those kinds and the rest patches."""
    tokens = tokens_of(out, channels_last=channels_last)
    B, T, _ = tokens.shape
    if out.ndim == 2:
        kinds = torch.full((B, 1), int(TokenKind.POOLED), dtype=torch.uint8)
    else:
        kinds = torch.full((B, T), int(TokenKind.PATCH), dtype=torch.uint8)
        if out.ndim == 3 and prefix_kinds:
            if T <= len(prefix_kinds):
                raise UsageError(f"the hook output has {T} tokens, not more than its {len(prefix_kinds)} prefix tokens")
            kinds[:, : len(prefix_kinds)] = torch.tensor([int(k) for k in prefix_kinds], dtype=torch.uint8)
    return rows_from_tokens(tokens, kinds, first_id)
