"""Sparsity rules: how pre-activations become a code.

A rule is one small ``nn.Module`` registered in ``RULES``. A *sparse* rule (the TopK
family) implements ``select(pre_acts) -> (values, indices)``, used both by the fused
sparse encoder in training and by inference; a *dense* rule implements
``dense(pre_acts) -> code`` and is trained through a dense decode. Every rule may add named
terms to the loss (``losses``: its penalty, e.g. L1 or L0) and says how to ``merge`` candidates
found in chunks of latents, so inference never needs the whole ``[tokens x n_latents]`` matrix
at once.

The contract: ``select`` / ``dense`` / ``infer`` / ``merge`` / ``losses`` are pure (calling them
changes nothing, in training mode too); state a rule keeps by rule rather than by gradient
(BatchTopK's and Feature Choice's inference thresholds, usage statistics, GBA's biases) changes
only in ``after_step``, which the trainer calls once per optimizer step with the step's output.
"""

from __future__ import annotations

import torch
from torch import nn

from .kernels import row_topk

RULES: dict[str, type["SparsityRule"]] = {}


def register(name: str):
    def wrap(cls):
        cls.name = name
        RULES[name] = cls
        return cls

    return wrap


def _pack_nonzero(values: torch.Tensor, indices: torch.Tensor):
    """Keep the non-zero entries of each row, width = the largest count in the batch."""
    width = max(int((values != 0).sum(-1).max()), 1) if values.numel() else 1
    _, order = values.abs().topk(min(width, values.shape[-1]), dim=-1, sorted=False)
    return values.gather(-1, order), indices.gather(-1, order)


class SparsityRule(nn.Module):
    name: str = ""
    sparse: bool = True  # selects (values, indices) natively
    uses_k: bool = False
    # False for rules that set the encoder bias themselves (in ``after_step``) instead of
    # letting the optimizer learn it: the SAE then creates b_enc without a gradient.
    learns_encoder_bias: bool = True
    # True for rules whose select() chooses latents by the order of their pre-activations
    # and keeps the chosen ones as they are (up to a ReLU): training may then choose from
    # a lower-precision matmul and compute the chosen values exactly (kernels.sparse_encode).
    rough_select: bool = False
    # The SAE's tensors (state-dict keys) this rule sets by rule rather than by gradient (in
    # after_step, from the step's code); data-parallel training averages them across
    # processes after every step so that every replica keeps the same state.
    adaptive_state: tuple[str, ...] = ()
    # True where merge() of the choices made on chunks of latents is the choice over all of
    # them (per-row rules): a large training step then chooses chunk by chunk (kernels).
    exact_merge: bool = False

    def __init__(self, cfg) -> None:
        super().__init__()
        self.k = cfg.k

    def select(self, pre_acts: torch.Tensor):  # [B, n] -> ([B, w], [B, w])
        raise NotImplementedError

    def dense(self, pre_acts: torch.Tensor) -> torch.Tensor:  # [B, n] -> [B, n]
        raise NotImplementedError

    def infer(self, pre_acts: torch.Tensor, start: int = 0):
        """Inference code of the chunk of latents ``[start, start + pre_acts.shape[-1])``
        as (values, indices), indices local to the chunk."""
        if self.sparse:
            return self.select(pre_acts)
        code = self.dense(pre_acts)
        return _pack_nonzero(code, torch.arange(code.shape[-1], device=code.device).expand_as(code))

    def merge(self, values: torch.Tensor, indices: torch.Tensor):
        """Reduce candidates gathered from several chunks of latents to the final code."""
        return _pack_nonzero(values, indices)

    # ------------------------------------------------ extension points (variants)
    def bind(self, sae, x_in: torch.Tensor) -> "SparsityRule":
        """The rule as applied to one call on the centred, scaled inputs ``x_in [B, d_in]``.

        The SAE calls ``bind`` once per ``encode`` / ``forward`` and uses what it returns for
        ``select`` / ``dense`` / ``infer`` / ``merge`` / ``losses``. Rules whose
        code depends on the input itself and not only on its pre-activations (top-AFA
        matches the code's norm to the input's) return a per-call object remembering it;
        the others return themselves.
        """
        return self

    def losses(self, inputs) -> dict[str, torch.Tensor]:
        """Named extra loss terms of a training pass, already weighted (see
        :class:`visionsae.sae.losses.LossInputs`): the rule's penalty (L1, L0) and its own terms,
        the one list of them the trainer sums into the loss and logs by name."""
        return {}

    def after_step(self, sae, out) -> None:
        """Called by the trainer under ``no_grad`` after each optimizer step (and decoder
        renormalisation) with the step's :class:`SAEOutput`: a place for state that is
        updated by rule rather than by gradient (bias adaptation, usage statistics)."""
        return None


@register("topk")
class TopK(SparsityRule):
    """The k largest pre-activations, passed through ReLU (Gao et al. 2024)."""

    uses_k = True
    rough_select = True
    exact_merge = True

    def select(self, pre_acts):
        values, indices = row_topk(pre_acts, self.k)
        return values.relu(), indices

    def merge(self, values, indices):
        top, order = values.topk(min(self.k, values.shape[-1]), dim=-1, sorted=False)
        return top, indices.gather(-1, order)


@register("abstopk")
class AbsTopK(SparsityRule):
    """The k pre-activations of largest magnitude, sign kept (for signed features)."""

    uses_k = True
    rough_select = True
    exact_merge = True

    def select(self, pre_acts):
        _, indices = row_topk(pre_acts.abs(), self.k)
        return pre_acts.gather(-1, indices), indices

    def merge(self, values, indices):
        _, order = values.abs().topk(min(self.k, values.shape[-1]), dim=-1, sorted=False)
        return values.gather(-1, order), indices.gather(-1, order)


@register("batchtopk")
class BatchTopK(SparsityRule):
    """The k*B largest pre-activations of the whole batch in training (Bussmann et al. 2024).

    Training also tracks a threshold (running mean of the smallest kept activation, in
    ``after_step``); at
    inference a latent is active where its pre-activation exceeds it, so one input's code
    never depends on the rest of its batch.
    """

    uses_k = True
    rough_select = True
    momentum = 0.01
    adaptive_state = ("rule.threshold",)

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.register_buffer("threshold", torch.tensor(float("nan")))

    def select(self, pre_acts):
        if not self.training:
            if torch.isnan(self.threshold):
                raise RuntimeError("this batchtopk SAE has no inference threshold yet; train it first")
            kept = pre_acts > self.threshold
            width = max(int(kept.sum(-1).max()), 1)
            values, indices = pre_acts.topk(min(width, pre_acts.shape[-1]), dim=-1, sorted=False)
            return values * (values > self.threshold), indices
        relu = pre_acts.relu()
        n = relu.shape[-1]
        budget = min(self.k * relu.shape[0], relu.numel())
        # The batch's top k*B lie in the rows' top candidates unless one row holds more
        # than `width` of them; a flat top-k over B*width candidates is far cheaper than
        # over all B*n pre-activations. Widen until no row is saturated (exact).
        width = min(n, 4 * self.k)
        while True:
            cand, cand_idx = row_topk(relu, width)
            flat_top = cand.flatten().topk(budget, sorted=False).values
            cut = flat_top.min()
            if width == n or not bool((cand.min(-1).values >= cut).any()):
                break
            width = min(n, width * 2)
        kept = cand >= cut
        keep_width = max(int(kept.sum(-1).max()), 1)
        values, order = (cand * kept).topk(keep_width, dim=-1, sorted=False)
        indices = cand_idx.gather(-1, order)
        return values * (values > 0), indices

    def after_step(self, sae, out):
        """The inference threshold follows the smallest activation the step's code kept
        (a running mean), in the precision the code's values are computed in."""
        values = out.code.values
        positive = values[values > 0]
        if positive.numel():
            low = positive.min().to(self.threshold.dtype)
            if torch.isnan(self.threshold):
                self.threshold.copy_(low)
            else:
                self.threshold.lerp_(low, self.momentum)


class _StepSTE(torch.autograd.Function):
    """Heaviside step with a rectangle-kernel pseudo-gradient for the threshold."""

    @staticmethod
    def forward(ctx, x, threshold, bandwidth):
        ctx.save_for_backward(x, threshold)
        ctx.bandwidth = bandwidth
        return (x > threshold).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        near = ((x - threshold).abs() < bw / 2).to(x.dtype)
        grad_threshold = -(near / bw * grad).sum(0)
        return torch.zeros_like(x), grad_threshold, None


class _JumpReLUSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, threshold, bandwidth):
        ctx.save_for_backward(x, threshold)
        ctx.bandwidth = bandwidth
        return x * (x > threshold)

    @staticmethod
    def backward(ctx, grad):
        x, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        near = ((x - threshold).abs() < bw / 2).to(x.dtype)
        grad_x = (x > threshold).to(x.dtype) * grad
        grad_threshold = -(threshold / bw * near * grad).sum(0)
        return grad_x, grad_threshold, None


@register("jumprelu")
class JumpReLU(SparsityRule):
    """Learned per-latent thresholds, trained with a straight-through estimator and an L0
    penalty (Rajamanoharan et al. 2024)."""

    sparse = False

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.log_threshold = nn.Parameter(torch.full((cfg.n_latents,), float(cfg.jumprelu_threshold)).log())
        self.bandwidth = cfg.jumprelu_bandwidth
        self.l0_coefficient = cfg.l0_coefficient

    def dense(self, pre_acts):
        return _JumpReLUSTE.apply(pre_acts, self.log_threshold.exp(), self.bandwidth)

    def infer(self, pre_acts, start: int = 0):
        threshold = self.log_threshold.exp()[start : start + pre_acts.shape[-1]]
        code = pre_acts * (pre_acts > threshold)
        return _pack_nonzero(code, torch.arange(code.shape[-1], device=code.device).expand_as(code))

    def losses(self, inputs):
        l0 = _StepSTE.apply(inputs.pre_acts, self.log_threshold.exp(), self.bandwidth).sum(-1).mean()
        return {"l0": self.l0_coefficient * l0}


@register("relu")
class ReLUL1(SparsityRule):
    """ReLU with an L1 penalty on the code (decoder rows are unit norm, so plain L1)."""

    sparse = False

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.l1_coefficient = cfg.l1_coefficient

    def dense(self, pre_acts):
        return pre_acts.relu()

    def losses(self, inputs):
        code = self.dense(inputs.pre_acts)  # the code as forward made it (decoder rows are unit norm)
        return {"l1": self.l1_coefficient * code.abs().sum(-1).mean()}
