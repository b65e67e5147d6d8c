"""Adam for a weight whose gradient comes as a sparse COO tensor of a few rows.

A TopK SAE's decoder gradient is non-zero only on the rows of the latents a batch used (at
most ``batch * k`` of ``n_latents``: 32,768 of 524,288 at ItD's size). Held dense it is one
more copy of the weight (1.5 GiB at 768 x 2^19); held as those rows it is a few percent of
it. The update is Adam's own, for every row, as if the other rows' gradient were zero (torch's
Adam kernel run chunk by chunk: both moments decay everywhere), not SparseAdam's lazy variant, which
leaves the untouched rows' moments and weights alone. The state lives in the optimizer's own
``state[param]`` under Adam's names, so checkpoints and resume read it as they read the rest.
"""

from __future__ import annotations

import torch
from torch.optim.adam import adam as adam_functional

CHUNK_ROWS = 8192  # rows per call of Adam's kernel: the only temporary is one chunk's dense gradient


def sparse_rows_grad(p: torch.nn.Parameter) -> bool:
    """Whether ``p`` holds a sparse gradient (which :func:`adam_step_sparse_rows_` applies)."""
    return p.grad is not None and p.grad.is_sparse


@torch.no_grad()
def adam_step_sparse_rows_(opt: torch.optim.Optimizer, p: torch.nn.Parameter) -> None:
    """One Adam step of ``p`` (a parameter of ``opt``) from its sparse gradient, which it clears.

    The update runs torch's own Adam kernel (fused where ``opt`` is) chunk by chunk over the
    rows, each chunk's gradient made dense in a small buffer: the same arithmetic as a dense
    step of ``opt``, with one chunk of dense gradient at a time instead of the whole matrix."""
    group = next(g for g in opt.param_groups if any(q is p for q in g["params"]))
    if group.get("amsgrad", False) or group.get("maximize", False) or group.get("decoupled_weight_decay", False):
        raise ValueError("the sparse-row Adam step supports plain Adam (no amsgrad, maximize or AdamW)")
    grad = p.grad.coalesce()
    p.grad = None
    state = opt.state[p]
    if not state:  # as torch.optim.Adam initialises it
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    rows, values = grad.indices()[0], grad.values().to(p.dtype)
    bounds = torch.searchsorted(rows, torch.arange(0, p.shape[0] + CHUNK_ROWS, CHUNK_ROWS, device=rows.device)).tolist()
    step_before = state["step"].clone()
    buffer = torch.empty((min(CHUNK_ROWS, p.shape[0]),) + tuple(p.shape[1:]), dtype=p.dtype, device=p.device)
    beta1, beta2 = group["betas"]
    fused = bool(group.get("fused"))
    for i, start in enumerate(range(0, p.shape[0], CHUNK_ROWS)):
        sl = slice(start, min(start + CHUNK_ROWS, p.shape[0]))
        g = buffer[: sl.stop - sl.start].zero_()
        lo, hi = bounds[i], bounds[i + 1]
        if hi > lo:
            g.index_copy_(0, rows[lo:hi] - start, values[lo:hi])
        step = step_before.clone()  # each chunk takes the same step (the kernel advances its copy)
        adam_functional([p[sl]], [g], [state["exp_avg"][sl]], [state["exp_avg_sq"][sl]], [], [step],
                         foreach=None if fused else False, fused=fused or None, amsgrad=False, beta1=beta1,
                         beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
                         maximize=False)
    state["step"] += 1
