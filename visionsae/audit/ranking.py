"""The audit's ranking: per concept the delta of its energy between the real and the generated
images with a bootstrap interval, the flags, and the suppressed / exaggerated rankings (by the
most affected group where the images carry groups)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .core import AuditConfig, SetStats


def concept_table(real: "SetStats", gen: "SetStats", cfg: "AuditConfig") -> dict[str, Any]:
    """Per concept: energies, delta with its bootstrap interval, support, flags; and the rankings."""
    e_r, e_g = real.mean_energy, gen.mean_energy
    total = e_r + e_g
    delta = torch.where(total > 0, e_g / total.clamp_min(1e-30), torch.full_like(total, float("nan")))
    lo, hi = _interval(real, gen, cfg.confidence)
    support = real.fires + gen.fires
    ok = (support >= cfg.min_support) & (total > 0)
    idx = torch.nonzero(ok).squeeze(1)
    by_bound_suppressed = _order(idx, support, hi + 1e-6 * delta)
    by_bound_exaggerated = _order(idx, support, -(lo + 1e-6 * delta))
    # Without groups, the ranking: flagged concepts first, by the energy the generator misses
    # (suppressed) or adds (exaggerated) -- a strong, frequent concept that vanishes outranks a
    # rare texture that vanishes -- then the unflagged ones by their interval bound.
    gap = e_r - e_g
    low_flag, high_flag = delta < cfg.t_low, delta > cfg.t_high
    by_gap_suppressed = _flagged_first(by_bound_suppressed, low_flag, gap)
    by_gap_exaggerated = _flagged_first(by_bound_exaggerated, high_flag, -gap)
    missed = group_shifts(real, gen)
    if missed is None:  # no groups: the energy missed (added) by the whole set, flagged first
        suppressed_order, exaggerated_order = by_gap_suppressed, by_gap_exaggerated
        group_sup = group_exa = [None] * len(delta)
        score_sup = score_exa = None
    else:
        suppressed_order, exaggerated_order, score_sup, score_exa, group_sup, group_exa = _group_orders(
            missed, by_bound_suppressed, by_bound_exaggerated)
    return {
        "energy_real": e_r.tolist(),
        "energy_generated": e_g.tolist(),
        "delta": [None if math.isnan(v) else v for v in delta.tolist()],
        "delta_low": lo.tolist(),
        "delta_high": hi.tolist(),
        "support": support.tolist(),
        "supported": ok.tolist(),
        "suppressed": [int(k) for k in suppressed_order if low_flag[k]],
        "exaggerated": [int(k) for k in exaggerated_order if high_flag[k]],
        "ranking": "group" if missed is not None else "gap",
        "rank_suppressed": suppressed_order.tolist(),
        "rank_exaggerated": exaggerated_order.tolist(),
        "score_suppressed": score_sup.tolist() if score_sup is not None else None,
        "score_exaggerated": score_exa.tolist() if score_exa is not None else None,
        "group_suppressed": group_sup,
        "group_exaggerated": group_exa,
        "rank_suppressed_by_gap": by_gap_suppressed.tolist(),
        "rank_exaggerated_by_gap": by_gap_exaggerated.tolist(),
        "rank_suppressed_by_bound": by_bound_suppressed.tolist(),
        "rank_exaggerated_by_bound": by_bound_exaggerated.tolist(),
    }


def _interval(real: "SetStats", gen: "SetStats", confidence: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The bootstrap interval of each concept's delta at ``confidence`` (replicates share weights
    across the two sets where their images are paired by caption)."""
    br, bg = real.boot_mean(), gen.boot_mean()
    bt = br + bg
    boot = torch.where(bt > 0, bg / bt.clamp_min(1e-30), torch.full_like(bt, 0.5))
    alpha = (1 - confidence) / 2
    return torch.quantile(boot, alpha, dim=0), torch.quantile(boot, 1 - alpha, dim=0)


def _order(idx: torch.Tensor, support: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """The concepts ``idx`` by ``key``, ascending. The conservative ranking: suppressed by the
    interval's upper end, exaggerated by its lower end; ties (e.g. concepts never drawn at all,
    whose interval is [0, 0]) by the point estimate, then by support (more images, more evidence)."""
    o = idx[torch.argsort(-support[idx].double(), stable=True)]
    return o[torch.argsort(key[o].double(), stable=True)]


def _flagged_first(by_bound: torch.Tensor, flag: torch.Tensor, severity: torch.Tensor) -> torch.Tensor:
    f = by_bound[flag[by_bound]]
    f = f[torch.argsort(-severity[f], stable=True)]
    return torch.cat([f, by_bound[~flag[by_bound]]])


def _group_orders(missed, by_bound_suppressed: torch.Tensor, by_bound_exaggerated: torch.Tensor):
    """The rankings with groups: the energy the most affected group's captions miss (add), times
    how much of that group's energy is missed: 1 - the group's own delta (exaggerated: times the
    group's delta). A class the generator has lost puts all its concepts' energy into one group's
    deficit, at group delta ~0; a diffuse texture it does not render spreads its deficit over many
    groups. Chosen on the dev seed of `visionsae eval audit` (omitted classes in the top 3: 9 of 10
    against 7 discounted by the whole set's interval bound and 7 by the set's gap); the figures on
    the other seeds are in its JSON."""
    names, shift, group_delta = missed  # [G], [G, K] real minus generated contribution, [G, K]
    lost, lost_at = shift.max(0)
    added, added_at = (-shift).max(0)
    score_sup = lost.clamp_min(0) * (1 - group_delta.gather(0, lost_at[None])[0])
    score_exa = added.clamp_min(0) * group_delta.gather(0, added_at[None])[0]
    # ties (e.g. concepts nobody misses) keep the order by interval bound
    suppressed_order = by_bound_suppressed[torch.argsort(-score_sup[by_bound_suppressed], stable=True)]
    exaggerated_order = by_bound_exaggerated[torch.argsort(-score_exa[by_bound_exaggerated], stable=True)]
    return (suppressed_order, exaggerated_order, score_sup, score_exa,
            [names[int(i)] for i in lost_at], [names[int(i)] for i in added_at])


def group_shifts(real: "SetStats", gen: "SetStats") -> tuple[list[str], torch.Tensor, torch.Tensor] | None:
    """Per group (the caption's class, a record's ``group``): the group's contribution to the
    real set's mean energy minus its contribution to the generated set's, ``[G, K]`` (the
    shifts of all groups sum to ``E_real - E_gen``), and each group's own delta
    ``C_gen / (C_gen + C_real)`` of those contributions (0.5 where both are 0). None unless
    both sets carry groups."""
    if not real.group_names or not gen.group_names:
        return None
    names = sorted(set(real.group_names) | set(gen.group_names))
    contrib = torch.zeros(2, len(names), real.energy_sum.shape[0], dtype=torch.float64)
    for side, stats in enumerate((real, gen)):
        for i, g in enumerate(stats.group_names):
            contrib[side, names.index(g)] += stats.group_sum[i] / max(1, stats.n_images)
    total = contrib.sum(0)
    group_delta = torch.where(total > 0, contrib[1] / total.clamp_min(1e-300), torch.full_like(total, 0.5))
    return names, contrib[0] - contrib[1], group_delta


def delta_correlations(tables: dict[str, dict]) -> dict[str, Any]:
    """Pearson and Spearman correlation of the deltas of every pair of generators (concepts
    supported in both)."""
    names = sorted(tables)
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            keep = [k for k, (sa, sb) in enumerate(zip(tables[a]["supported"], tables[b]["supported"])) if sa and sb]
            if len(keep) < 3:
                out[f"{a}|{b}"] = {"concepts": len(keep), "pearson": None, "spearman": None}
                continue
            x = torch.tensor([tables[a]["delta"][k] for k in keep], dtype=torch.float64)
            y = torch.tensor([tables[b]["delta"][k] for k in keep], dtype=torch.float64)
            out[f"{a}|{b}"] = {"concepts": len(keep), "pearson": _pearson(x, y),
                               "spearman": _pearson(_ranks(x), _ranks(y))}
    return out


def _ranks(x: torch.Tensor) -> torch.Tensor:
    return torch.argsort(torch.argsort(x)).double()


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float | None:
    x, y = x - x.mean(), y - y.mean()
    den = float(x.norm() * y.norm())
    return float((x * y).sum()) / den if den > 0 else None
