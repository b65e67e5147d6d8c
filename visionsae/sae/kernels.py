"""Sparse kernels for the TopK family: the encoder's backward and the decoder touch only
the selected latents, never a dense ``[batch x n_latents]`` gradient.

``sparse_encode`` and ``sparse_decode`` are autograd functions with hand-written sparse
backward passes; ``plain_encode`` / ``plain_decode`` compute the same values with stock
PyTorch ops and dense gradients. Tests compare the two.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn.functional as F


Selector = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


def _transpose_sparse(indices: torch.Tensor, weights: torch.Tensor, n_rows: int) -> torch.Tensor:
    """A CSR matrix ``[n_rows, batch]`` with ``weights[b, j]`` at ``(indices[b, j], b)``.

    Its product with a dense ``[batch, d]`` matrix is the sum, for each latent, of the rows
    that selected it, each weighted: the gradient of a weight matrix indexed by latent.
    Building it costs a sort of ``batch * k`` integers.
    """
    batch, width = indices.shape
    rows = indices.reshape(-1)
    order = torch.argsort(rows, stable=True)
    cols = torch.arange(batch, device=indices.device).repeat_interleave(width)[order]
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=indices.device)
    crow[1:] = torch.bincount(rows, minlength=n_rows).cumsum(0)
    with warnings.catch_warnings():
        # torch warns that sparse CSR is "beta" on every construction; this use is plain.
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            crow, cols, weights.reshape(-1)[order], size=(n_rows, batch), check_invariants=False
        )


def _sampled_dots(indices: torch.Tensor, grad: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``out[b, j] = <grad[b], table[indices[b, j]]>``: ``grad @ table.T`` computed only at the
    ``[batch, k]`` selected entries (a sampled dense-dense matmul on the CSR pattern), so the
    gathered ``[batch, k, d]`` rows are never materialised."""
    batch, width = indices.shape
    if indices.device.type != "cpu" or grad.dtype not in (torch.float32, torch.float64):
        # sampled_addmm covers CPU fp32/fp64; elsewhere gather the rows in bounded chunks
        out = torch.empty(batch, width, dtype=grad.dtype, device=grad.device)
        step = max(1, (1 << 22) // max(1, width * table.shape[1]))
        for s in range(0, batch, step):
            rows = table[indices[s : s + step]].to(grad.dtype)  # [chunk, k, d_in]
            out[s : s + step] = torch.bmm(rows, grad[s : s + step, :, None]).squeeze(-1)
        return out
    sorted_idx, perm = indices.sort(dim=1)  # CSR wants ordered columns within a row
    crow = torch.arange(0, batch * width + 1, width, device=indices.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(crow, sorted_idx.reshape(-1), torch.zeros(batch * width, dtype=grad.dtype,
                                          device=grad.device), size=(batch, table.shape[0]), check_invariants=False)
        dots = torch.sparse.sampled_addmm(pattern, grad, table.t().to(grad.dtype), beta=0.0).values().view(batch, width)
    return torch.empty_like(dots).scatter_(1, perm, dots)


def _rows_weighted_sum(indices: torch.Tensor, weights: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``out[b] = sum_j weights[b, j] * table[indices[b, j]]`` without materialising the gather."""
    return F.embedding_bag(indices, table, per_sample_weights=weights.to(table.dtype), mode="sum")


class _SparseEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, select: Selector, select_dtype):
        # x: [B, d_in]; weight: [n_latents, d_in]; bias: [n_latents]
        if select_dtype is None or select_dtype == x.dtype:
            pre_acts = torch.addmm(bias, x, weight.t())  # [B, n_latents]
            values, indices = select(pre_acts)  # [B, k] each; values are 0 where dropped
        else:
            # Choose the latents from a cheaper matmul, then compute their values exactly.
            rough = torch.addmm(bias.to(select_dtype), x.to(select_dtype), weight.to(select_dtype).t())
            rough_values, indices = select(rough)
            del rough
            exact = _sampled_dots(indices, x, weight) + bias[indices]
            # Keep what the rule kept, where the exact value agrees in sign (a ReLU rule
            # drops a latent whose exact pre-activation is not positive).
            kept = (rough_values != 0) & (torch.sign(exact) == torch.sign(rough_values.to(exact.dtype)))
            values = exact * kept
        ctx.save_for_backward(x, weight, values, indices)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values, _grad_indices):
        x, weight, values, indices = ctx.saved_tensors
        # A latent passes gradient only where the rule kept it (non-zero value).
        grad_values = grad_values * (values != 0)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _rows_weighted_sum(indices, grad_values, weight)
        if ctx.needs_input_grad[1]:
            gt = _transpose_sparse(indices, grad_values.to(x.dtype), weight.shape[0])
            grad_weight = (gt @ x).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = torch.zeros(weight.shape[0], dtype=grad_values.dtype, device=x.device)
            grad_bias.index_add_(0, indices.reshape(-1), grad_values.reshape(-1))
        return grad_x, grad_weight, grad_bias, None, None


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, indices, weight):
        # values, indices: [B, k]; weight (decoder): [n_latents, d_in]
        ctx.save_for_backward(values, indices, weight)
        return _rows_weighted_sum(indices, values, weight)

    @staticmethod
    def backward(ctx, grad_out):
        values, indices, weight = ctx.saved_tensors
        grad_values = grad_weight = None
        if ctx.needs_input_grad[0]:
            # <grad_out[b], weight[indices[b, j]]>
            grad_values = _sampled_dots(indices, grad_out, weight).to(values.dtype)
        if ctx.needs_input_grad[2]:
            gt = _transpose_sparse(indices, values.to(grad_out.dtype), weight.shape[0])
            grad_weight = (gt @ grad_out).to(weight.dtype)
        return grad_values, None, grad_weight


def sparse_encode(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, select: Selector,
                  select_dtype: torch.dtype | None = None):
    """Dense encoder matmul, then ``select`` (a TopK-family rule); sparse backward.

    With ``select_dtype`` (e.g. bfloat16) the dense matmul that only *chooses* the latents
    runs in that precision; the chosen latents' values, and every gradient, are computed in
    ``x``'s dtype. The choice can differ from the exact one only among latents whose
    pre-activations are within the cheap precision of the k-th largest.
    """
    return _SparseEncode.apply(x, weight, bias, select, select_dtype)


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum_j values[:, j] * weight[indices[:, j]]`` with a sparse backward."""
    return _SparseDecode.apply(values, indices, weight)


def plain_encode(x, weight, bias, select: Selector):
    """Reference for :func:`sparse_encode` with stock autograd (dense gradients)."""
    pre_acts = torch.addmm(bias, x, weight.t())
    with torch.no_grad():
        _, indices = select(pre_acts.detach())
    values = pre_acts.gather(1, indices)
    kept = select(pre_acts.detach())[0] != 0
    return values * kept, indices


def plain_decode(values, indices, weight):
    """Reference for :func:`sparse_decode`: gather the rows, weight them, sum."""
    return (values.unsqueeze(-1) * weight[indices]).sum(-2)
