"""Sparsity rules from the literature beyond the TopK family's core, registered in ``RULES``.

* ``topafa`` -- per input, as many latents as make the code's norm match the input's
  (Lee et al. 2025, "Evaluating and Designing Sparse Autoencoders by Approximating
  Quasi-Orthogonality"); ``k`` is only a cap.
* ``featurechoice`` -- each latent takes its top-m inputs of the batch; ``mutualchoice`` --
  one global top k*B over the batch; both with the ``aux_zipf`` loss (Ayonrinde 2024,
  "Adaptive Sparse Allocation with Mutual Choice & Feature Choice Sparse Autoencoders").
* ``gba`` -- a ReLU SAE with no sparsity penalty whose encoder biases are adapted per group
  of latents toward each group's target activation frequency (Chen et al. 2025, "Taming
  Polysemanticity in LLMs").
* ``variational`` -- Gaussian sampling of the pre-activations before TopK, with a KL term.

Matryoshka and the AFA loss are loss terms that work with any rule (``visionsae.sae.losses``).
Every rule here trains through the one :class:`SparseAutoencoder` and Trainer via the
hooks of :class:`SparsityRule`: ``bind`` (input-aware selection), ``losses`` (named
terms) and ``after_step`` (state updated by rule, not gradient).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .losses import LossInputs, fvu
from .sparsity import BatchTopK, SparsityRule, TopK, _pack_nonzero, register


# ------------------------------------------------------------------------------ top-AFA
@register("topafa")
class TopAFA(SparsityRule):
    """The k of each input is chosen so that the norm of the kept latents' decoded
    contribution, ``sqrt(sum_j (f_j |d_j|)^2)``, best matches the centred input's norm
    ``|x - b_dec|`` (the "approximate feature activation" that quasi-orthogonal decoder rows
    imply). Latents are taken largest contribution first; ``k`` caps the count (and bounds
    the candidates each chunk of latents passes on at inference, so chunking is exact).
    Both norms scale alike when the input scale is folded into the weights, so the code of
    a saved SAE is the code it had in training.

    The code depends on the input, not only on its pre-activations: :meth:`bind` returns this
    rule for one call (a shallow copy sharing its tensors) knowing each input's norm and the
    decoder's row norms; the rule itself, unbound, cannot select.
    """

    uses_k = True
    _target: torch.Tensor | None = None  # [B] norm of each centred input (set by bind)
    _row_norms: torch.Tensor | None = None  # [n_latents] decoder row norms (1 while training)

    def bind(self, sae, x_in):
        call = copy.copy(self)
        call._target, call._row_norms = x_in.norm(dim=-1), sae.W_dec.detach().norm(dim=1)
        return call

    def _candidates(self, pre: torch.Tensor, start: int):
        """The ``k`` largest decoded contributions of a chunk: raw values, local indices."""
        if self._target is None:
            raise RuntimeError("topafa needs the input's norm: use it through SparseAutoencoder, which binds it")
        relu = pre.relu()
        scaled = relu * self._row_norms[start : start + pre.shape[-1]]
        _, indices = scaled.topk(min(self.k, pre.shape[-1]), dim=-1, sorted=False)
        return relu.gather(-1, indices), indices

    def _choose(self, values: torch.Tensor, indices: torch.Tensor):
        """Keep, per row, the largest-contribution prefix whose norm is closest to the target."""
        scaled = values * self._row_norms[indices]
        scaled, order = scaled.sort(-1, descending=True)
        width = min(self.k, order.shape[-1])
        scaled, order = scaled[:, :width], order[:, :width]
        norms = scaled.pow(2).cumsum(-1).sqrt()  # norm of the code keeping 1, 2, ... latents
        count = (norms - self._target[:, None]).abs().argmin(-1) + 1  # [B], at least one
        keep = torch.arange(width, device=values.device)[None, :] < count[:, None]
        return values.gather(-1, order) * keep, indices.gather(-1, order)

    def select(self, pre_acts):
        return self._choose(*self._candidates(pre_acts, 0))

    def infer(self, pre_acts, start: int = 0):
        values, indices = self._candidates(pre_acts, start)
        if pre_acts.shape[-1] == self._row_norms.shape[0]:  # one chunk holds every latent: decide now
            return self._choose(values, indices)
        return values, indices  # candidates; merge decides once every chunk is seen

    def merge(self, values, indices):
        return self._choose(values, indices)


# ----------------------------------------------------------- Feature / Mutual Choice
def zipf_target(usage: torch.Tensor, exponent: float | None = None) -> torch.Tensor:
    """The Zipf-shaped usage ``c * rank ** -exponent`` each latent is measured against.

    Latents are ranked by ``usage [n]`` (1 = most used). With ``exponent`` None, c and the
    exponent are fitted by least squares to log usage against log rank over the more-used
    half of the latents (the data's own power law, measured where it holds, so that a tail
    of starved latents does not bend the law it is judged by); with an exponent given, c
    keeps the total usage.
    """
    n = usage.numel()
    ranks = torch.empty(n, device=usage.device, dtype=torch.float32)
    ranks[usage.argsort(descending=True)] = torch.arange(1, n + 1, device=usage.device, dtype=torch.float32)
    log_rank = ranks.log()
    if exponent is None:
        head = (ranks <= max(2, n // 2)) & (usage > 0)
        if int(head.sum()) < 2:
            return torch.full_like(usage, float(usage.mean()))
        lr, lu = log_rank[head], usage[head].float().log()
        slope = ((lr - lr.mean()) * (lu - lu.mean())).sum() / (lr - lr.mean()).pow(2).sum().clamp_min(1e-12)
        return (lu.mean() + slope * (log_rank - lr.mean())).exp().to(usage.dtype)
    target = ranks.pow(-exponent)
    return (target * (usage.sum() / target.sum()).clamp_min(1e-12)).to(usage.dtype)


def aux_zipf_loss(inputs: LossInputs, usage: torch.Tensor, exponent: float | None, aux_k: int) -> torch.Tensor:
    """Under-used latents reconstruct the residual, AuxK-style (Ayonrinde 2024).

    ``usage [n]`` is each latent's firing rate. A latent below its :func:`zipf_target` is
    under-used by ``deficit = 1 - usage / target`` (1 for a dead one); per input, the
    ``aux_k`` under-used latents of largest ``deficit * relu(pre-activation)`` are asked to
    reconstruct the main code's residual. A latent already in an input's main code is left
    out of that input's auxiliary code (it has had its say there; asking it to also fit the
    residual would pull its decoder row off its feature). With every latent dead this is AuxK.
    """
    sae = inputs.sae
    deficit = (1 - usage / zipf_target(usage, exponent).clamp_min(1e-12)).clamp(0, 1)
    under = (deficit > 0).nonzero().squeeze(-1)
    if under.numel() == 0:
        return inputs.x.new_zeros(())
    pre = F.linear(inputs.x_in, sae.W_enc[under], sae.b_enc[under])  # [B, n_under]
    with torch.no_grad():
        position = torch.full((usage.numel(),), -1, dtype=torch.long, device=usage.device)
        position[under] = torch.arange(under.numel(), device=usage.device)
        local = position[inputs.indices]  # [B, width]: column in `pre`, -1 if not under-used
        in_code = (local >= 0) & (inputs.values.detach() != 0)
        taken = torch.zeros_like(pre, dtype=torch.bool)
        taken[torch.arange(pre.shape[0], device=pre.device)[:, None].expand_as(local)[in_code], local[in_code]] = True
    pre = pre.masked_fill(taken, 0.0)
    _, local = (pre.relu() * deficit[under]).topk(min(aux_k, under.numel()), dim=-1, sorted=False)
    values = pre.gather(-1, local).relu()
    residual = inputs.x - inputs.x_hat.detach()
    residual_hat = F.embedding_bag(local, inputs.W_dec[under], per_sample_weights=values, mode="sum")
    return fvu(residual, residual_hat)


class _AuxZipf:
    """Firing-rate tracking and the aux_zipf loss (a mixin of sparsity rules)."""

    usage_momentum = 0.01

    def _init_zipf(self, cfg) -> None:
        # Start from the uniform rate k / n; the running mean takes over within ~1/momentum steps.
        self.register_buffer("usage", torch.full((cfg.n_latents,), cfg.k / cfg.n_latents))
        self.aux_zipf_coefficient = cfg.aux_zipf_coefficient
        self.aux_zipf_exponent = cfg.aux_zipf_exponent
        self.aux_k = max(1, cfg.d_in // 2)

    def losses(self, inputs):
        if self.aux_zipf_coefficient == 0:
            return {}
        loss = aux_zipf_loss(inputs, self.usage, self.aux_zipf_exponent, self.aux_k)
        return {"aux_zipf": self.aux_zipf_coefficient * loss}

    def after_step(self, sae, out):
        super().after_step(sae, out)  # the rule it is mixed into (Mutual Choice: BatchTopK's threshold)
        values, indices = out.code
        fired = torch.zeros_like(self.usage)
        fired.index_add_(0, indices[values != 0], torch.ones_like(values[values != 0], dtype=fired.dtype))
        self.usage.lerp_(fired / values.shape[0], self.usage_momentum)


@register("featurechoice")
class FeatureChoice(SparsityRule):
    """Each latent takes its top ``m = round(k * B / n_latents)`` inputs of the batch, so
    inputs get as many latents as choose them (the batch total is m * n_latents, about k * B).

    Training tracks a per-latent threshold (running mean of the smallest value each latent
    kept); at inference a latent fires where its pre-activation exceeds it, so a code never
    depends on the rest of its batch. No latent can die in training (each takes m inputs,
    so every latent's usage is m / B), which is why aux_zipf, whose job is to revive
    under-used latents, belongs to Mutual Choice and not to this rule.
    """

    uses_k = True
    # Faster than BatchTopK's 0.01: each latent's threshold follows one noisy m-th value
    # per batch, and must forget the untrained first batches within a few dozen steps.
    momentum = 0.05
    adaptive_state = ("rule.threshold",)

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.n_latents = cfg.n_latents
        self.register_buffer("threshold", torch.full((cfg.n_latents,), float("nan")))

    def capacity(self, batch: int) -> int:
        """Inputs each latent takes from a batch of ``batch``."""
        return min(batch, max(1, round(self.k * batch / self.n_latents)))

    def _thresholded(self, pre_acts, start: int = 0):
        if torch.isnan(self.threshold).all():
            raise RuntimeError("this featurechoice SAE has no inference thresholds yet; train it first")
        threshold = self.threshold[start : start + pre_acts.shape[-1]]
        code = pre_acts.relu() * (pre_acts > threshold)
        return _pack_nonzero(code, torch.arange(code.shape[-1], device=code.device).expand_as(code))

    def select(self, pre_acts):
        if not self.training:
            return self._thresholded(pre_acts)
        m = self.capacity(pre_acts.shape[0])
        _, rows = pre_acts.topk(m, dim=0, sorted=False)  # [m, n]: each latent's chosen inputs
        chosen = torch.zeros_like(pre_acts, dtype=torch.bool).scatter_(0, rows, True)
        width = max(int(chosen.sum(-1).max()), 1)
        key = pre_acts.masked_fill(~chosen, float("-inf"))
        _, indices = key.topk(min(width, pre_acts.shape[-1]), dim=-1, sorted=False)
        return pre_acts.gather(-1, indices).relu() * chosen.gather(-1, indices), indices

    def after_step(self, sae, out):
        """Each latent's threshold follows the smallest value it took in the step's code (a
        running mean). A latent's non-zero entries are its chosen inputs with a positive
        pre-activation; with fewer than ``m`` of them it chose a non-positive one, and its
        smallest is 0 (a negative threshold would fire on any positive input)."""
        values, indices = out.code
        m = self.capacity(values.shape[0])
        positive = values > 0
        ids, kept = indices[positive], values[positive].to(self.threshold.dtype)
        low = torch.full_like(self.threshold, math.inf).scatter_reduce_(0, ids, kept, "amin")
        count = torch.zeros_like(self.threshold).index_add_(0, ids, torch.ones_like(kept))
        low = torch.where(count >= m, low, torch.zeros_like(low))
        if torch.isnan(self.threshold).any():
            self.threshold.copy_(low)
        else:
            self.threshold.lerp_(low, self.momentum)

    def infer(self, pre_acts, start: int = 0):
        return self._thresholded(pre_acts, start)


@register("mutualchoice")
class MutualChoice(_AuxZipf, BatchTopK):
    """One global top ``k * B`` over the batch's pre-activations: inputs and latents share
    the budget freely (the allocation of BatchTopK, with its inference threshold), trained
    with aux_zipf so that latents below a Zipf-shaped usage are pulled back into use."""

    adaptive_state = ("rule.threshold", "rule.usage")

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self._init_zipf(cfg)


# --------------------------------------------------------------------------------- GBA
@register("gba")
class GroupBiasAdaptation(SparsityRule):
    """ReLU code with no sparsity penalty; the encoder biases are not learned by gradient but
    adapted, per group of latents, toward each group's target activation frequency.

    Latents form ``gba_groups`` contiguous groups whose targets fall geometrically from
    ``gba_max_frequency`` to ``gba_min_frequency``. After each optimizer step, for every
    latent, the bias that would make it fire on exactly its target share of the step's
    batch under the updated weights (its pre-activation's ``round(p * B)``-th largest value
    moved to 0) is computed, and the bias moves ``gba_rate`` of the way there. (The paper
    steps each bias by a fixed rule every T steps; this is the same adaptation as a running
    quantile, with one rate to set. Measuring under the updated weights matters: encoder
    rows grow while training, and a bias that trails them lets a latent's frequency run away.)
    """

    sparse = False
    learns_encoder_bias = False
    adaptive_state = ("b_enc",)

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        groups = cfg.gba_groups
        ratio = cfg.gba_min_frequency / cfg.gba_max_frequency
        targets = torch.tensor([cfg.gba_max_frequency * ratio ** (g / max(1, groups - 1)) for g in range(groups)])
        # Derived from the config, so not saved with the weights.
        self.register_buffer("group", torch.arange(cfg.n_latents) * groups // cfg.n_latents, persistent=False)  # [n]
        self.register_buffer("target_frequency", targets[self.group].float(), persistent=False)  # [n]
        self.rate = cfg.gba_rate

    def dense(self, pre_acts):
        return pre_acts.relu()

    def after_step(self, sae, out):
        if out.x_in is None:
            return
        pre = F.linear(out.x_in, sae.W_enc, sae.b_enc)  # [B, n] under the updated weights
        batch = pre.shape[0]
        count = (self.target_frequency * batch).round().clamp(1, batch).long()  # [n]
        top = pre.topk(int(count.max()), dim=0).values  # [max count, n], sorted
        shift = -top.gather(0, (count - 1)[None]).squeeze(0)
        sae.b_enc.add_(self.rate * shift.to(sae.b_enc.dtype))


# ------------------------------------------------------------------------- variational
@register("variational")
class Variational(TopK):
    """TopK on Gaussian samples of the pre-activations while training, with a KL term.

    The pre-activation is the posterior mean mu; each latent has one learned log-variance
    (input-independent: a cheaper posterior than a second encoder). Training samples
    ``z = mu + sigma * eps`` (reparameterised, from torch's global generator, which the
    trainer seeds), keeps the k largest and decodes them; the loss adds ``kl_coefficient``
    times the mean over latents of ``KL(N(mu, sigma^2) || N(0, 1))``. Inference is TopK on
    mu: deterministic.
    """

    sparse = False

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        # Start with little noise (sigma = 0.1 in units of a unit-norm input direction);
        # the KL term lets it grow where reconstruction does not suffer.
        self.log_var = nn.Parameter(torch.full((cfg.n_latents,), 2 * math.log(0.1)))
        self.kl_coefficient = cfg.kl_coefficient

    def dense(self, pre_acts):
        z = pre_acts
        if self.training:
            z = pre_acts + (0.5 * self.log_var).exp() * torch.randn_like(pre_acts)
        values, indices = z.topk(min(self.k, z.shape[-1]), dim=-1, sorted=False)
        return torch.zeros_like(z).scatter(-1, indices, values.relu())

    def infer(self, pre_acts, start: int = 0):
        return self.select(pre_acts)  # TopK's, on mu

    def losses(self, inputs):
        mu, log_var = inputs.pre_acts, self.log_var
        kl = 0.5 * (mu.pow(2) + log_var.exp() - log_var - 1).mean()
        return {"kl": self.kl_coefficient * kl}
