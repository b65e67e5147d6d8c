"""Sparse kernels for the TopK family: the encoder's backward and the decoder touch only
the selected latents, never a dense ``[batch x n_latents]`` gradient.

``sparse_encode`` and ``sparse_decode`` are autograd functions with hand-written sparse
backward passes; ``plain_encode`` / ``plain_decode`` compute the same values with stock
PyTorch ops and dense gradients. Tests compare the two.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
import torch.nn.functional as F


Selector = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


def row_topk(x: torch.Tensor, k: int):
    """``x.topk(k, dim=-1, sorted=False)``: the same values, faster on CPU for wide rows.

    torch's CPU top-k costs about the same per element whatever ``k`` is, so it first keeps,
    per row, the ``k`` best of ``n / s`` groups (group ``g`` holds columns ``g, g + n/s, ...``,
    ranked by their maxima: a vectorised reduction), then takes the top ``k`` of those
    groups' ``s * k`` members. Every top-``k`` element lies in one of the ``k`` groups with
    the largest maxima (else ``k`` group maxima, plus it, would all be larger), so the
    values are exactly the top ``k``; only which of several tied entries is returned may
    differ, as it may between torch's own kernels. The ``k`` best groups are found the same
    way while the maxima are still wide (``>= 16 k``), and ``s`` is ~sqrt(n / k), at most 8
    (measured fastest: bf16 ``[1024 x 4096]``, k 32: 7.5 ms for torch's top-k, 5.3 in one
    level of groups, 4.4 in two; ``[1024 x 16384]``: 12.5 in one, 8.7-10 in two).
    """
    *lead, n = x.shape
    k = min(k, n)
    # Narrower rows keep torch's kernel: little to gain there, and the order of the returned
    # indices (hence float rounding downstream) stays what the small SAEs' figures were made with.
    if (x.device.type != "cpu" or k == 0 or n < 64 * k
            or x.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16)):
        return x.topk(k, dim=-1, sorted=False)
    values, indices = _grouped_topk(x.reshape(-1, n).contiguous(), k)
    return values.view(*lead, k), indices.view(*lead, k)


def _grouped_topk(x: torch.Tensor, k: int):
    """:func:`row_topk` on ``[rows, n]`` (contiguous, ``n >= 16 k``)."""
    rows, n = x.shape
    s = min(8, 1 << max(1, int(math.log2(math.sqrt(n / k)))))
    if n % s:
        return x.topk(k, dim=-1, sorted=False)
    groups = n // s
    x = x.view(rows, s, groups)  # x[r, i, g] = column i * groups + g of row r
    maxima = x.amax(1)
    _, best = _grouped_topk(maxima, k) if groups >= 16 * k else maxima.topk(k, dim=-1, sorted=False)  # [rows, k]
    members = x.gather(2, best[:, None, :].expand(rows, s, k)).view(rows, s * k)
    values, pick = members.topk(k, dim=-1, sorted=False)
    # member i * k + j is column i * groups + best[j]
    indices = torch.div(pick, k, rounding_mode="floor") * groups + best.gather(1, pick % k)
    return values, indices


class Scratch:
    """Buffers a training step uses only inside the encoder's forward (the low-precision
    weight copy and pre-activations), kept from one step to the next.

    A fresh multi-megabyte buffer costs a page fault and a zero-fill per 4 KB page each
    step (the allocator hands such blocks back to the kernel when freed): on the default
    CPU setting that was 2-3 ms of a 40 ms step. Nothing read from these buffers outlives
    the forward call that fills them.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or tuple(buf.shape) != tuple(shape) or buf.dtype != dtype or buf.device != device:
            buf = None
            self._buffers.pop(name, None)  # free the old one before allocating its replacement
            self._buffers[name] = buf = torch.empty(shape, dtype=dtype, device=device)
        return buf

    def clear(self) -> None:
        self._buffers.clear()


class LatentBags:
    """For each latent, the batch rows that selected it: a sort of ``batch * k`` integers.

    One training pass needs it twice (the encoder's and the decoder's weight gradients
    over the same indices); pass one ``LatentBags`` to :func:`sparse_encode` and
    :func:`sparse_decode` and the sort runs once. It recomputes when given other indices.
    """

    def __init__(self) -> None:
        self._key = None
        self._bags = None

    def __call__(self, indices: torch.Tensor, n_latents: int):
        key = (indices.data_ptr(), indices.device, tuple(indices.shape), n_latents)
        if self._key != key:
            batch, width = indices.shape
            flat = indices.reshape(-1)
            # a stable sort gives the same order whatever the key dtype; int32 keys sort faster
            keys = flat.to(torch.int32) if n_latents < 2**31 else flat
            order = torch.argsort(keys, stable=True)
            members = torch.div(order, width, rounding_mode="floor")  # entry b * width + j is row b's
            counts = torch.bincount(flat, minlength=n_latents)
            offsets = counts.cumsum(0) - counts
            self._key, self._bags = key, (order, members, offsets)
        return self._bags


def _latent_sums(indices: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor, n_latents: int,
                 bags: LatentBags | None = None) -> torch.Tensor:
    """``out[l] = sum over (b, j) with indices[b, j] == l of weights[b, j] * rows[b]``: the
    gradient of a weight matrix indexed by latent, ``[n_latents, d]``.

    One bag per latent (:class:`LatentBags`) summed by ``embedding_bag`` over the small
    ``rows`` table: the output is written once, with no zero-filled accumulator and no
    sparse-matrix temporaries.
    """
    order, members, offsets = (bags or LatentBags())(indices, n_latents)
    return F.embedding_bag(members, rows, offsets, per_sample_weights=weights.reshape(-1)[order].to(rows.dtype),
                           mode="sum")


SPARSE_GRAD_MAX_SHARE = 1 / 8
"""A sparse decoder gradient only where at most this share of the rows is used: above it the
indices and per-row work cost more than they save (measured at 16k and 64k latents, batch
1024, k 32: steps 10-40% slower and no lower peak; at 2^19 a step uses 6-12% of the rows)."""


def _latent_rows(indices: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor,
                 present: torch.Tensor, bags: LatentBags | None = None) -> torch.Tensor:
    """:func:`_latent_sums` as a sparse COO tensor of the latents ``present`` (sorted: those
    that occur in ``indices``, at most ``batch * k`` rows of ``[n_latents, d]``): the same
    sums, without the zero rows."""
    order, members, offsets = (bags or LatentBags())(indices, weight.shape[0])
    # the bags of absent latents are empty, so the present latents' offsets delimit theirs
    sums = F.embedding_bag(members, rows, offsets[present], per_sample_weights=weights.reshape(-1)[order].to(rows.dtype),
                           mode="sum")
    return torch.sparse_coo_tensor(present.unsqueeze(0), sums.to(weight.dtype), weight.shape, is_coalesced=True,
                                   check_invariants=False)


def _sampled_dots(indices: torch.Tensor, grad: torch.Tensor, table: torch.Tensor,
                  bags: LatentBags | None = None) -> torch.Tensor:
    """``out[b, j] = <grad[b], table[indices[b, j]]>``: ``grad @ table.T`` computed only at the
    ``[batch, k]`` selected entries (a sampled dense-dense matmul), so the gathered
    ``[batch, k, d]`` rows are never materialised."""
    batch, width = indices.shape
    if indices.device.type != "cpu" or grad.dtype not in (torch.float32, torch.float64):
        # sampled_addmm covers CPU fp32/fp64; elsewhere gather the rows in bounded chunks
        out = torch.empty(batch, width, dtype=grad.dtype, device=grad.device)
        step = max(1, (1 << 22) // max(1, width * table.shape[1]))
        for s in range(0, batch, step):
            rows = table[indices[s : s + step]].to(grad.dtype)  # [chunk, k, d_in]
            out[s : s + step] = torch.bmm(rows, grad[s : s + step, :, None]).squeeze(-1)
        return out
    # Computed latent by latent ([n_latents x batch] pattern, one row per latent's bag): each
    # table row is read once and dotted with the batch rows that chose it (the small ``grad``
    # stays in cache), instead of re-reading a table row for every entry that names it; then
    # put back in [batch, k] order. The kernel computes each entry's dot on its own, so the
    # values are the same either way.
    order, members, offsets = (bags or LatentBags())(indices, table.shape[0])
    crow = torch.cat([offsets, offsets.new_full((1,), batch * width)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(crow, members, torch.zeros(batch * width, dtype=grad.dtype, device=grad.device),
                                          size=(table.shape[0], batch), check_invariants=False)
        by_latent = torch.sparse.sampled_addmm(pattern, table.to(grad.dtype), grad.t(), beta=0.0).values()
    out = torch.empty(batch * width, dtype=grad.dtype, device=grad.device)
    out[order] = by_latent
    return out.view(batch, width)


def _rows_weighted_sum(indices: torch.Tensor, weights: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``out[b] = sum_j weights[b, j] * table[indices[b, j]]`` without materialising the gather."""
    return F.embedding_bag(indices, table, per_sample_weights=weights.to(table.dtype), mode="sum")


# Above this many pre-activations a training step chooses its latents chunk by chunk of
# latents (for rules whose choice merges exactly): a 2^19-latent SAE at batch 1024 would
# otherwise hold a 1 GB bf16 (2 GB fp32) pre-activation matrix and a 0.8 GB bf16 weight copy.
CHUNKED_SELECT_ABOVE = 1 << 26


def _chunked_select(x, weight, bias, select: Selector, merge, dtype, scratch: "Scratch | None"):
    """The choice of ``select`` over all latents, made on chunks of latents (each chunk's
    candidates, then ``merge``): only one chunk's pre-activations (and, in ``dtype``, one
    chunk of the weight) exist at a time. Exact for rules whose ``merge`` of the chunks'
    choices is the choice over all of them (TopK, AbsTopK)."""
    n, batch = weight.shape[0], x.shape[0]
    chunk = min(n, max(1, CHUNKED_SELECT_ABOVE // max(1, batch)))
    xc = x.to(dtype)
    if scratch is not None:  # one chunk's buffers, kept between steps (see Scratch)
        pre_buf = scratch.get("pre_acts", (batch * chunk,), dtype, x.device)
        w_buf = scratch.get("weight", (chunk, weight.shape[1]), dtype, weight.device) if dtype != weight.dtype else None
    values, indices = [], []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        w = weight[start:stop]
        if dtype != weight.dtype:
            w = w_buf[: stop - start].copy_(w) if scratch is not None else w.to(dtype)
        b = bias[start:stop].to(dtype)
        if scratch is not None:
            pre = torch.addmm(b, xc, w.t(), out=pre_buf[: batch * (stop - start)].view(batch, stop - start))
        else:
            pre = torch.addmm(b, xc, w.t())
        v, i = select(pre)  # new tensors: nothing read from the buffers outlives this chunk
        values.append(v)
        indices.append(i + start)
    return merge(torch.cat(values, -1), torch.cat(indices, -1))


class _SparseEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, select: Selector, select_dtype, bags, center, scratch, merge):
        # x: [B, d_in]; weight: [n_latents, d_in]; bias: [n_latents]; center: [d_in] or None
        bags = bags or LatentBags()  # one sort of the indices for the exact values and the backward
        if center is not None:
            x = x - center
        chunked = merge is not None and x.shape[0] * weight.shape[0] > CHUNKED_SELECT_ABOVE
        if chunked:
            # choose chunk by chunk (in select_dtype if given), then the chosen values exactly
            rough_values, indices = _chunked_select(x, weight, bias, select, merge, select_dtype or x.dtype, scratch)
            exact = _sampled_dots(indices, x, weight, bags) + bias[indices]
            kept = (rough_values != 0) & (torch.sign(exact) == torch.sign(rough_values.to(exact.dtype)))
            values = exact * kept
        elif select_dtype is None or select_dtype == x.dtype:
            pre_acts = torch.addmm(bias, x, weight.t())  # [B, n_latents]
            values, indices = select(pre_acts)  # [B, k] each; values are 0 where dropped
        else:
            # Choose the latents from a cheaper matmul, then compute their values exactly.
            if scratch is None:
                rough = torch.addmm(bias.to(select_dtype), x.to(select_dtype), weight.to(select_dtype).t())
            else:
                cheap_weight = scratch.get("weight", weight.shape, select_dtype, weight.device).copy_(weight)
                out = scratch.get("pre_acts", (x.shape[0], weight.shape[0]), select_dtype, x.device)
                rough = torch.addmm(bias.to(select_dtype), x.to(select_dtype), cheap_weight.t(), out=out)
            rough_values, indices = select(rough)
            del rough
            exact = _sampled_dots(indices, x, weight, bags) + bias[indices]
            # Keep what the rule kept, where the exact value agrees in sign (a ReLU rule
            # drops a latent whose exact pre-activation is not positive).
            kept = (rough_values != 0) & (torch.sign(exact) == torch.sign(rough_values.to(exact.dtype)))
            values = exact * kept
        ctx.save_for_backward(x, weight, values, indices)
        ctx.bags = bags
        ctx.centered = center is not None
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values, _grad_indices):
        x, weight, values, indices = ctx.saved_tensors
        # A latent passes gradient only where the rule kept it (non-zero value).
        grad_values = grad_values * (values != 0)
        grad_x = grad_weight = grad_bias = grad_center = None
        if ctx.needs_input_grad[0]:
            grad_x = _rows_weighted_sum(indices, grad_values, weight)
        if ctx.needs_input_grad[1]:
            grad_weight = _latent_sums(indices, grad_values, x, weight.shape[0], ctx.bags).to(weight.dtype)
        needs_center = ctx.centered and ctx.needs_input_grad[6]
        if ctx.needs_input_grad[2] or needs_center:
            per_latent = torch.zeros(weight.shape[0], dtype=grad_values.dtype, device=x.device)
            per_latent.index_add_(0, indices.reshape(-1), grad_values.reshape(-1))
            if ctx.needs_input_grad[2]:
                grad_bias = per_latent
        if needs_center:
            # d/d center of sum_b <g_b, W (x_b - center)> = -(sum over rows of g) @ W: one
            # [n] x [n, d] product instead of the [B, d] input gradient summed over rows
            grad_center = -(per_latent.to(weight.dtype) @ weight)
        return grad_x, grad_weight, grad_bias, None, None, None, grad_center, None, None


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, indices, weight, bags, sparse_grad=False):
        # values, indices: [B, k]; weight (decoder): [n_latents, d_in]
        ctx.save_for_backward(values, indices, weight)
        ctx.bags = bags or LatentBags()
        ctx.sparse_grad = sparse_grad
        return _rows_weighted_sum(indices, values, weight)

    @staticmethod
    def backward(ctx, grad_out):
        values, indices, weight = ctx.saved_tensors
        grad_values = grad_weight = None
        if ctx.needs_input_grad[0]:
            # <grad_out[b], weight[indices[b, j]]>
            grad_values = _sampled_dots(indices, grad_out, weight, ctx.bags).to(values.dtype)
        if ctx.needs_input_grad[2]:
            present = None
            if ctx.sparse_grad:
                present = torch.bincount(indices.reshape(-1), minlength=weight.shape[0]).nonzero().squeeze(1)
            if present is not None and len(present) <= SPARSE_GRAD_MAX_SHARE * weight.shape[0]:
                grad_weight = _latent_rows(indices, values, grad_out, weight, present, ctx.bags)
            else:  # most rows used (or asked dense): the dense gradient is smaller and faster
                grad_weight = _latent_sums(indices, values, grad_out, weight.shape[0], ctx.bags).to(weight.dtype)
        return grad_values, None, grad_weight, None, None


def sparse_encode(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, select: Selector,
                  select_dtype: torch.dtype | None = None, bags: LatentBags | None = None,
                  center: torch.Tensor | None = None, scratch: Scratch | None = None, merge=None):
    """Dense encoder matmul, then ``select`` (a TopK-family rule); sparse backward.

    With ``select_dtype`` (e.g. bfloat16) the dense matmul that only *chooses* the latents
    runs in that precision; the chosen latents' values, and every gradient, are computed in
    ``x``'s dtype. The choice can differ from the exact one only among latents whose
    pre-activations are within the cheap precision of the k-th largest. ``bags``: see
    :class:`LatentBags`. With ``center`` the encoder reads ``x - center``; when ``x`` needs
    no gradient (training data), the centre's gradient then costs one matrix-vector product.
    ``scratch``: see :class:`Scratch` (used with ``select_dtype``). ``merge`` (the rule's
    exact merge of chunks' choices, or None) lets a large step choose chunk by chunk of latents
    (above ``CHUNKED_SELECT_ABOVE`` pre-activations); the chosen values are then computed
    exactly as with ``select_dtype``.
    """
    return _SparseEncode.apply(x, weight, bias, select, select_dtype, bags, center, scratch, merge)


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor,
                  bags: LatentBags | None = None, sparse_grad: bool = False) -> torch.Tensor:
    """``sum_j values[:, j] * weight[indices[:, j]]`` with a sparse backward; with
    ``sparse_grad`` the weight's gradient is a sparse COO tensor of the rows used."""
    return _SparseDecode.apply(values, indices, weight, bags, sparse_grad)


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
