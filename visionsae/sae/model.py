"""The one sparse autoencoder: a linear encoder, a sparsity rule, a linear dictionary."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .code import SparseCode
from .config import SAEConfig
from .dictionary import ArchetypalDictionary
from .kernels import LatentBags, Scratch, sparse_decode, sparse_encode
from .losses import LossInputs, afa_loss, matryoshka_loss, matryoshka_widths
from .losses import fvu as _fvu
from .sparsity import RULES, SparsityRule
from ..errors import UsageError

# Inference encodes at most this many pre-activations at once (16 MB in fp32): a
# 2^19-latent SAE on 77 tokens (40M pre-activations, 160 MB) is encoded in chunks.
_MAX_PRE_ACTS = 1 << 22


def folded(name: str, tensor: torch.Tensor, scale: float) -> torch.Tensor:
    """The SAE parameter ``name`` as it acts on raw inputs, ``scale`` being the input scale s
    (the one place the folding is written): ``W_enc (s x - b_dec) = (s W_enc)(x - b_dec / s)``
    and the decode divides by s, so ``W_enc * s``, ``W_dec / s``, ``b_dec / s``; codes are
    unchanged. Other tensors come back as they are."""
    if name == "W_enc":
        return tensor * scale
    if name in ("W_dec", "b_dec"):
        return tensor / scale
    return tensor


@dataclass
class SAEOutput:
    """What a training forward pass returns."""

    x_hat: torch.Tensor
    """Reconstruction, in the units of the input: [B, d_in]."""
    code: SparseCode
    """The sparse code: [B, width]."""
    fvu: torch.Tensor
    """Fraction of variance unexplained over the batch (the reconstruction loss)."""
    aux_loss: torch.Tensor | None
    """AuxK loss: how well the dead latents predict the residual, if any are dead."""
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    """Further named loss terms, already weighted: the rule's penalty (``l1``, ``l0``) and own
    terms, AFA, Matryoshka."""
    x_in: torch.Tensor | None = None
    """The centred, scaled input the encoder read ``[B, d_in]`` (detached): what a rule's
    ``after_step`` adapts its state to (GBA's biases)."""


class SparseAutoencoder(nn.Module):
    """``encode(x) -> SparseCode``, ``decode(code) -> x_hat``.

    Parameters (in the units of the scaled input ``x * input_scale``):
    ``W_enc [n_latents, d_in]``, ``b_enc [n_latents]``, ``W_dec [n_latents, d_in]`` (unit
    rows while training), ``b_dec [d_in]``. ``input_scale`` is 1 after
    :meth:`fold_input_scale`, which :meth:`save_pretrained` applies.

    With ``cfg.dictionary == "archetypal"`` (RA-SAE) the decoder is computed from
    ``self.dictionary`` (:class:`~visionsae.sae.dictionary.ArchetypalDictionary`); ``W_dec``
    then holds the fused matrix, is not trained itself, and is refreshed after every step
    (:meth:`normalize_decoder_`), so inference and files see one plain decoder matrix.
    """

    def __init__(self, cfg: SAEConfig, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        dtype = getattr(torch, cfg.dtype)
        n, d = cfg.n_latents, cfg.d_in
        W_dec = torch.randn(n, d, device=device, dtype=torch.float32)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec.to(dtype))
        # Tied init: the encoder starts as the decoder's transpose.
        self.W_enc = nn.Parameter(W_dec.clone().to(dtype))
        self.b_enc = nn.Parameter(torch.zeros(n, device=device, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d, device=device, dtype=dtype))
        self.register_buffer("input_scale", torch.ones((), device=device, dtype=torch.float32))
        self.rule: SparsityRule = RULES[cfg.sparsity](cfg).to(device)
        if not self.rule.learns_encoder_bias:
            self.b_enc.requires_grad_(False)  # the rule sets it (after_step), not the optimizer
        self.dictionary: ArchetypalDictionary | None = None
        self._scratch = Scratch()  # the choosing matmul's buffers, kept between training steps
        # W_dec's gradient as a sparse COO tensor of the rows a pass used (a trainer's setting,
        # see visionsae.train.sparse_adam); the gradient is dense wherever a loss reads W_dec densely
        self.sparse_decoder_grad = False
        if cfg.dictionary == "archetypal":
            self.dictionary = ArchetypalDictionary(
                n, d, cfg.archetypal_candidates or n, cfg.archetypal_delta, cfg.archetypal_learn_scale,
                device=device, dtype=dtype,
            )
            self.W_dec.requires_grad_(False)  # computed from self.dictionary

    def train(self, mode: bool = True) -> "SparseAutoencoder":
        if not mode:
            self._scratch.clear()  # training buffers are not kept by an SAE in inference
        return super().train(mode)

    # ----------------------------------------------------------------- shapes
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def n_latents(self) -> int:
        return self.cfg.n_latents

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.cfg.d_in:
            where = f" (hook {self.cfg.hook!r})" if self.cfg.hook else ""
            raise UsageError(
                f"activations have {x.shape[-1]} features but the SAE expects {self.cfg.d_in}{where}"
            )
        return x.reshape(-1, self.cfg.d_in).to(self.W_enc.dtype)

    def _centered(self, x_flat: torch.Tensor) -> torch.Tensor:
        return x_flat * self.input_scale.to(x_flat.dtype) - self.b_dec

    # ---------------------------------------------------------------- inference
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Dense pre-activations ``[..., n_latents]`` (allocates the full matrix)."""
        lead = x.shape[:-1]
        pre = F.linear(self._centered(self._flat(x)), self.W_enc, self.b_enc)
        return pre.reshape(*lead, self.cfg.n_latents)

    def encode(self, x: torch.Tensor) -> SparseCode:
        """Sparse code of ``x [..., d_in]``: values and indices ``[..., width]``.

        Pre-activations are computed in chunks of latents when the full matrix would be
        large, so memory stays bounded whatever the dictionary size.
        """
        lead = x.shape[:-1]
        x_in = self._centered(self._flat(x))
        n = self.cfg.n_latents
        rule = self.rule.bind(self, x_in)
        chunk = max(1, min(n, _MAX_PRE_ACTS // max(1, x_in.shape[0])))
        values_parts, index_parts = [], []
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            pre = torch.addmm(self.b_enc[start:stop], x_in, self.W_enc[start:stop].t())
            values, indices = rule.infer(pre, start)
            values_parts.append(values)
            index_parts.append(indices + start)
        values, indices = torch.cat(values_parts, -1), torch.cat(index_parts, -1)
        if len(values_parts) > 1:
            values, indices = rule.merge(values, indices)
        width = values.shape[-1]
        return SparseCode(values.reshape(*lead, width), indices.reshape(*lead, width))

    def encode_dense(self, x: torch.Tensor) -> torch.Tensor:
        """The code as a dense ``[..., n_latents]`` tensor."""
        return self.encode(x).to_dense(self.cfg.n_latents)

    def decode(self, code: SparseCode) -> torch.Tensor:
        """Reconstruction ``[..., d_in]`` in the units of the input."""
        values, indices = code
        lead = values.shape[:-1]
        flat = F.embedding_bag(
            indices.reshape(-1, indices.shape[-1]),
            self.W_dec,
            per_sample_weights=values.reshape(-1, values.shape[-1]).to(self.W_dec.dtype),
            mode="sum",
        )
        x_hat = (flat + self.b_dec) / self.input_scale.to(flat.dtype)
        return x_hat.reshape(*lead, self.cfg.d_in)

    # ----------------------------------------------------------------- training
    def forward(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None, aux_k: int | None = None,
                select_dtype: torch.dtype | None = None) -> SAEOutput:
        """Training pass on ``x [B, d_in]``: reconstruction, code and loss terms.

        ``dead_mask [n_latents]`` marks latents that have not fired for a while; when
        given (and the rule is sparse), the AuxK loss asks the ``aux_k`` largest dead
        pre-activations to reconstruct the residual (Gao et al. 2024, appendix A.2).
        ``select_dtype`` (a trainer's setting, e.g. bfloat16): the precision of the matmul that
        only chooses the active latents, for rules that allow it; None: the SAE's own dtype.
        """
        # The decoder weight of this pass, computed once: for RA-SAE the atoms of the dictionary's
        # parameters (with their gradient; W_dec holds the same values, refreshed after every
        # step by normalize_decoder_), else W_dec. Every reader below takes it from here.
        W_dec = self.dictionary_atoms() if self.dictionary is not None and torch.is_grad_enabled() else self.W_dec
        x_flat = self._flat(x)
        xs = x_flat * self.input_scale.to(x_flat.dtype)
        x_in = xs - self.b_dec
        rule = self.rule.bind(self, x_in)
        pre = None
        if rule.sparse:
            cheap = select_dtype if getattr(rule, "rough_select", False) and torch.is_grad_enabled() else None
            bags = LatentBags()  # the sampled dots and weight gradients share one sort of the indices
            merge = rule.merge if getattr(rule, "exact_merge", False) and torch.is_grad_enabled() else None
            values, indices = sparse_encode(xs, self.W_enc, self.b_enc, rule.select, cheap, bags, center=self.b_dec,
                                            scratch=self._scratch, merge=merge)
            xs_hat = sparse_decode(values, indices, W_dec, bags, self._sparse_decoder_grad_on) + self.b_dec
            code = SparseCode(values, indices)
        else:
            pre = F.linear(x_in, self.W_enc, self.b_enc)
            dense = rule.dense(pre)
            xs_hat = dense @ W_dec + self.b_dec
            code = SparseCode.from_dense(dense.detach())
            values, indices = dense.gather(-1, code.indices), code.indices  # with gradient, for the loss terms
        fvu = _fvu(xs, xs_hat)
        aux_loss = None
        if dead_mask is not None and rule.sparse and bool(dead_mask.any()):
            aux_loss = self._aux_loss(x_in, xs - xs_hat.detach(), dead_mask, aux_k or self.cfg.d_in // 2, W_dec)
        inputs = LossInputs(self, xs, x_in, xs_hat, values, indices, pre, W_dec)
        losses = dict(rule.losses(inputs))
        if self.cfg.afa_coefficient > 0:
            losses["afa"] = self.cfg.afa_coefficient * afa_loss(inputs)
        if self.cfg.matryoshka_widths:
            losses["matryoshka"] = matryoshka_loss(inputs, matryoshka_widths(self.cfg))
        return SAEOutput(xs_hat / self.input_scale, code, fvu, aux_loss, losses, x_in.detach())

    @property
    def _sparse_decoder_grad_on(self) -> bool:
        """Whether this pass gives W_dec a sparse gradient (RA-SAE's W_dec is computed, not trained)."""
        return self.sparse_decoder_grad and self.dictionary is None

    def _aux_loss(self, x_in, residual, dead_mask, aux_k, W_dec) -> torch.Tensor:
        dead = dead_mask.nonzero().squeeze(-1)
        pre = F.linear(x_in, self.W_enc[dead], self.b_enc[dead])  # [B, n_dead]
        values, local = pre.topk(min(aux_k, dead.numel()), dim=-1, sorted=False)
        if self._sparse_decoder_grad_on:  # the dead rows' gradient, sparse
            residual_hat = F.embedding_bag(dead[local], W_dec, per_sample_weights=values.relu(), mode="sum", sparse=True)
        else:
            residual_hat = F.embedding_bag(local, W_dec[dead], per_sample_weights=values.relu(), mode="sum")
        # Normalised like the FVU so its scale does not depend on the data's.
        return _fvu(residual, residual_hat)

    # ------------------------------------------------------ decoder constraints
    def dictionary_atoms(self) -> torch.Tensor:
        """The archetypal dictionary's atoms in this SAE's current units ``[n_latents, d_in]``
        (differentiable; folding the input scale divides them as it divides ``W_dec``)."""
        if self.dictionary is None:
            raise UsageError("this SAE has a linear dictionary; dictionary_atoms needs dictionary='archetypal'")
        factor = (self.input_scale / self.dictionary.reference_scale).to(self.W_dec.dtype)
        return self.dictionary.atoms() * factor

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Scale every decoder row to unit norm; for an archetypal dictionary, project its
        parameters onto their constraints instead and refresh the fused ``W_dec``."""
        if self.dictionary is not None:
            self.dictionary.project_()
            self.W_dec.copy_(self.dictionary_atoms())
            return
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(torch.finfo(self.W_dec.dtype).eps)

    @torch.no_grad()
    def remove_parallel_grads_(self) -> None:
        """Drop the gradient component along each (unit) decoder row, so a step does not
        change the row's norm to first order before :meth:`normalize_decoder_`."""
        g = self.W_dec.grad
        if g is not None and g.is_sparse:  # the rows a pass used: the same projection on those rows
            g = g.coalesce()
            rows, v = g.indices()[0], g.values()
            for start in range(0, len(rows), 4096):  # blocks: no gathered copy of all the rows' weights
                w = self.W_dec.detach()[rows[start : start + 4096]]
                block = v[start : start + 4096]
                block.addcmul_(torch.linalg.vecdot(block, w, dim=1).unsqueeze(1), w, value=-1)
            self.W_dec.grad = g
        elif g is not None:
            # Row-wise dots, then one in-place update. vecdot multiplies into a temporary the
            # size of its inputs and sums it; over 256-row blocks that temporary stays in
            # cache (at 4096 x 512 in a training step: ~1 ms against ~2.9 for one vecdot of
            # the whole matrix, which writes and re-reads a fresh 8 MB product).
            dots = g.new_empty(g.shape[0])
            for start in range(0, g.shape[0], 256):
                torch.linalg.vecdot(g[start : start + 256], self.W_dec[start : start + 256], dim=1,
                                    out=dots[start : start + 256])
            g.addcmul_(dots.unsqueeze(1), self.W_dec, value=-1)

    @torch.no_grad()
    def init_from_data_(self, x: torch.Tensor, method: str = "geometric_median") -> None:
        """Set ``input_scale`` (mean norm -> sqrt(d_in)) and ``b_dec`` from a sample."""
        x = self._flat(x).float()
        if self.cfg.normalize_input:
            mean_norm = x.norm(dim=1).mean().clamp_min(1e-12)
            self.input_scale.fill_(math.sqrt(self.cfg.d_in) / float(mean_norm))
        xs = x * self.input_scale
        if method == "geometric_median":
            center = geometric_median(xs)
        elif method == "mean":
            center = xs.mean(0)
        elif method == "zeros":
            center = torch.zeros_like(xs[0])
        else:
            raise UsageError(f"unknown b_dec init {method!r}; expected geometric_median, mean or zeros")
        self.b_dec.copy_(center.to(self.b_dec.dtype))
        if self.dictionary is not None:
            # Candidates from the centred sample; the k-means seed is drawn from torch's global
            # generator, so SAEs initialised under different seeds get independent candidates.
            seed = int(torch.randint(0, 2**62, ()))
            self.dictionary.set_candidates_(xs - center, float(self.input_scale), seed=seed)
            self.W_dec.copy_(self.dictionary_atoms())
            # tied init: encoder rows along the atoms, scaled so that a point at an atom codes ~1
            atoms = self.W_dec.float()
            self.W_enc.copy_((atoms / atoms.pow(2).sum(1, keepdim=True).clamp_min(1e-12)).to(self.W_enc.dtype))

    @torch.no_grad()
    def fold_input_scale(self) -> None:
        """Fold ``input_scale`` into the weights so raw inputs need no scaling.

        With s the scale, ``W_enc (s x - b_dec) = (s W_enc)(x - b_dec / s)`` and the decode
        divides by s, so: ``W_enc *= s``, ``W_dec /= s``, ``b_dec /= s``. Codes are unchanged.
        """
        s = float(self.input_scale)
        if s == 1.0:
            return
        for name in ("W_enc", "W_dec", "b_dec"):
            param = getattr(self, name)
            param.copy_(folded(name, param, s))
        self.input_scale.fill_(1.0)

    # ------------------------------------------------------------------- files
    def save_pretrained(self, path: str | Path, fold_input_scale: bool = True, format: str = "visionsae") -> Path:
        """Write ``cfg.json`` + weights to ``path``; ``format="saelens"`` or ``"sparsify"``
        writes a folder those libraries load (see :mod:`visionsae.sae.io`)."""
        from .io import save_sae

        return save_sae(self, path, fold_input_scale=fold_input_scale, format=format)

    @classmethod
    def from_pretrained(cls, path_or_repo: str | Path, device: torch.device | str | None = None, **hub_kwargs) -> "SparseAutoencoder":
        """Load a directory written by :meth:`save_pretrained` (or an SAELens / sparsify
        directory) from a path or a Hugging Face repo id."""
        from .io import load_sae

        return load_sae(path_or_repo, device=device, **hub_kwargs)


@torch.no_grad()
def geometric_median(points: torch.Tensor, max_iter: int = 100, tol: float = 1e-5) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of distances to ``points [N, d]``."""
    guess = points.mean(0)
    for _ in range(max_iter):
        prev = guess
        weights = 1.0 / (points - guess).norm(dim=1).clamp_min(1e-8)
        guess = (weights[:, None] * points).sum(0) / weights.sum()
        if (guess - prev).norm() < tol * (1 + prev.norm()):
            break
    return guess
