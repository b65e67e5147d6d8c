"""The audit's self-contained HTML report: images embedded as base64 PNGs, plots as inline
SVG (delta histogram, energy scatter), the top suppressed and exaggerated concepts with their
bootstrap intervals and example grids (real and generated images with the concept's patch
heatmap), memorisation candidates side by side, and the correlation of deltas across
generators. Nothing is fetched when the file is opened.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..sae import SparseAutoencoder
from ..sae.io import atomic_write_bytes
from ..store import ActivationStore


def _png(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _thumb(item, size: int = 96) -> np.ndarray | None:
    from PIL import Image

    from ..sources.image import load_image

    try:
        img = load_image(item) if isinstance(item, (str, os.PathLike)) else item.convert("RGB")
    except Exception:  # noqa: BLE001 - a missing thumbnail must not stop the report
        return None
    w, h = img.size
    s = size / max(w, h)
    img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.NEAREST if max(w, h) < size else Image.BILINEAR)
    return np.asarray(img.convert("RGB"))


def _overlay(rgb: np.ndarray, heat: np.ndarray | None) -> np.ndarray:
    """``rgb`` with a red overlay of ``heat`` (a small grid, upsampled), max-normalised."""
    if heat is None or heat.size == 0 or float(heat.max()) <= 0:
        return rgb
    from PIL import Image

    h = np.asarray(Image.fromarray((heat / heat.max() * 255).astype(np.uint8)).resize(rgb.shape[1::-1], Image.BILINEAR)) / 255.0
    out = rgb.astype(np.float32)
    out = out * (1 - 0.55 * h[..., None]) + np.array([255, 40, 40]) * 0.55 * h[..., None]
    return out.clip(0, 255).astype(np.uint8)


class _Heatmaps:
    """Per-token activation of one concept in one image, read back from the set's store."""

    def __init__(self, store: ActivationStore, sae: SparseAutoencoder):
        self.store, self.sae = store, sae
        self.spans = [(s["input_start"], s["input_end"]) for s in store.manifest["shards"]]
        self._cache: tuple[int, object, dict] | None = None

    def __call__(self, input_id: int, concept: int) -> np.ndarray | None:
        shard = next((i for i, (a, b) in enumerate(self.spans) if a <= input_id < b), None)
        if shard is None:
            return None
        if self._cache is None or self._cache[0] != shard:
            self._cache = (shard, self.store.read_shard(shard), {r["input_id"]: r for r in self.store.records(shard)})
        _, batch, records = self._cache
        rows = batch.input_id == input_id
        rec = records.get(input_id, {})
        grid, prefix = rec.get("grid"), rec.get("prefix", 0)
        if not grid or grid[0] * grid[1] <= 1:
            return None
        with torch.no_grad():
            code = self.sae.encode(batch.acts[rows].float())
        act = (code.values * (code.indices == concept)).sum(-1).clamp_min(0)  # [tokens]
        pos = batch.position[rows].long() - prefix
        heat = torch.zeros(grid[0] * grid[1])
        ok = (pos >= 0) & (pos < heat.numel())
        heat[pos[ok]] = act[ok]
        return heat.reshape(grid).numpy()


def _svg_histogram(values: Sequence[float], t_low: float, t_high: float, bins: int = 40, w: int = 420, h: int = 180) -> str:
    counts, edges = np.histogram([v for v in values if v is not None], bins=bins, range=(0, 1))
    top = max(1, counts.max())
    bar_w = (w - 40) / bins
    parts = [f'<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg" font-size="10">']
    for i, c in enumerate(counts):
        x0 = 30 + i * bar_w
        bh = (h - 30) * c / top
        mid = (edges[i] + edges[i + 1]) / 2
        color = "#3a7bd5" if t_low <= mid <= t_high else "#d9534f"
        parts.append(f'<rect x="{x0:.1f}" y="{h - 20 - bh:.1f}" width="{bar_w - 1:.1f}" height="{bh:.1f}" fill="{color}"><title>{c} concepts</title></rect>')
    for t in (t_low, 0.5, t_high):
        x = 30 + t * (w - 40)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="5" y2="{h - 20}" stroke="#555" stroke-dasharray="3,3"/>')
    parts.append(f'<text x="30" y="{h - 5}">0</text><text x="{w - 20}" y="{h - 5}">1</text>'
                 f'<text x="{w / 2 - 40:.0f}" y="{h - 5}">delta = E_gen / (E_gen + E_real)</text>'
                 f'<text x="0" y="12">{top}</text></svg>')
    return "".join(parts)


def _svg_scatter(e_real, e_gen, delta, supported, t_low, t_high, w: int = 420, h: int = 300) -> str:
    pts = [(r, g, d) for r, g, d, s in zip(e_real, e_gen, delta, supported) if s and r > 0 and g > 0]
    parts = [f'<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg" font-size="10">']
    if pts:
        lo = math.log10(min(min(p[0] for p in pts), min(p[1] for p in pts)))
        hi = math.log10(max(max(p[0] for p in pts), max(p[1] for p in pts)))
        span = max(hi - lo, 1e-6)

        def xy(r, g):
            return 40 + (math.log10(r) - lo) / span * (w - 50), h - 30 - (math.log10(g) - lo) / span * (h - 40)

        x0, y0 = xy(10**lo, 10**lo)
        x1, y1 = xy(10**hi, 10**hi)
        parts.append(f'<line x1="{x0:.1f}" y1="{y0:.1f}" x2="{x1:.1f}" y2="{y1:.1f}" stroke="#999" stroke-dasharray="4,3"/>')
        for r, g, d in pts:
            x, y = xy(r, g)
            color = "#d9534f" if d < t_low else ("#f0ad4e" if d > t_high else "#3a7bd5")
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}" fill-opacity="0.7"/>')
    parts.append(f'<text x="{w / 2 - 50:.0f}" y="{h - 5}">E_real (log)</text>'
                 f'<text x="2" y="12">E_gen (log)</text></svg>')
    return "".join(parts)


def _tile(item, heat, caption: str) -> str:
    t = _thumb(item)
    if t is None:
        return f'<figure><div class="missing">no image</div><figcaption>{html.escape(caption)}</figcaption></figure>'
    return (f'<figure><img src="{_png(t)}"><img src="{_png(_overlay(t, heat))}">'
            f'<figcaption>{html.escape(caption)}</figcaption></figure>')


def _group_summary(table: dict, side: str, order: Sequence[int], result, real) -> str:
    """One sentence naming the groups whose captions miss (or gain) the top concepts, with a
    caption of each ("concepts of captions like 'a photo of a sneaker' (group sneaker) are missing")."""
    where = table.get(f"group_{side}")
    if not where or not order:
        return ""
    by_group: dict[str, list[int]] = {}
    for rank, k in enumerate(order, 1):
        by_group.setdefault(str(where[k]), []).append(rank)
    parts = []
    for g, ranks in sorted(by_group.items(), key=lambda kv: kv[1][0])[:3]:
        example = ""
        if real.captions and real.groups:
            cap = next((c for c, gr in zip(real.captions, real.groups) if str(gr) == g and c), "")
            example = f"like &ldquo;{html.escape(cap)}&rdquo; " if cap else ""
        parts.append(f"concepts of captions {example}(group <b>{html.escape(g)}</b>; ranks "
                     f"{', '.join(f'#{r}' for r in ranks)})")
    verb = "are missing or weaker in the generated images" if side == "suppressed" else "are over-represented"
    return "Ranked by the group whose captions lose (gain) the most energy: " + "; ".join(parts) + f" {verb}."


def write_report(result, path: str | os.PathLike, *, real, generated, sae: SparseAutoencoder | None = None) -> Path:
    """Write the HTML report of ``result`` (an :class:`~visionsae.audit.AuditResult`) to ``path``.

    ``real`` and ``generated`` are the :class:`~visionsae.audit.ImageSet` s audited (for the
    thumbnails); the SAE is read from the audit's folder when not given (for the heatmaps).
    """
    path = Path(path)
    cfg = result.config
    sets = {s.name: s for s in [real, *generated]}
    if sae is None:
        sae_dir = Path(result.sets[real.name]["store"]).parents[1] / "sae-train" / "sae"
        sae = SparseAutoencoder.from_pretrained(sae_dir) if (sae_dir / "cfg.json").exists() else None
    heat = {n: _Heatmaps(ActivationStore.open(info["store"]), sae) if sae is not None else (lambda *_: None)
            for n, info in result.sets.items()}
    body = [f"<h1>Blindspot audit</h1><p>Real set <b>{html.escape(real.name)}</b> ({len(real.items)} images) against "
            + ", ".join(f"<b>{html.escape(g.name)}</b> ({len(g.items)})" for g in generated)
            + f". Concepts: the {result.sae.get('n_latents')} latents of an SAE ({html.escape(str(result.sae.get('dictionary')))} "
            f"dictionary, k={result.sae.get('k')}, hook {html.escape(str(result.sae.get('hook')))}). "
            f"delta = E_gen / (E_gen + E_real); suppressed below {cfg['t_low']}, exaggerated above {cfg['t_high']}; "
            f"{int(cfg['confidence'] * 100)}% bootstrap intervals ({cfg['bootstrap']} replicates, paired by caption); "
            f"concepts firing in fewer than {cfg['min_support']} images are not ranked.</p>"]
    for g in generated:
        t = result.concepts[g.name]
        paired: dict[str, list[int]] = {}  # caption key -> generated images of it
        if g.keys is not None and real.keys is not None:
            for j, key in enumerate(g.keys):
                paired.setdefault(key, []).append(j)
        deltas = [d for d, s in zip(t["delta"], t["supported"]) if s]
        body.append(f"<h2>{html.escape(g.name)}</h2><p>{len(deltas)} ranked concepts; {len(t['suppressed'])} suppressed, "
                    f"{len(t['exaggerated'])} exaggerated.</p><div class='plots'>"
                    f"{_svg_histogram(deltas, cfg['t_low'], cfg['t_high'])}"
                    f"{_svg_scatter(t['energy_real'], t['energy_generated'], [d if d is not None else 0.5 for d in t['delta']], t['supported'], cfg['t_low'], cfg['t_high'])}</div>")
        for side, order in (("suppressed", t["rank_suppressed"]), ("exaggerated", t["rank_exaggerated"])):
            body.append(f"<h3>Top {side} concepts</h3>")
            summary = _group_summary(t, side, order[: cfg["report_concepts"]], result, real)
            if summary:
                body.append(f"<p class='summary'>{summary}</p>")
            for rank, k in enumerate(order[: cfg["report_concepts"]], 1):
                body.append(_concept_section(result, t, side, rank, k, real, g, sets, heat, paired))
        body.append(_memorisation_section(result.memorisation[g.name], real, g))
    if result.correlations:
        body.append(_correlations_section(result.correlations))
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}figure{display:inline-block;margin:3px;"
             "text-align:center;font-size:10px;max-width:200px}figure img{image-rendering:pixelated;margin:1px}"
             ".grid{display:flex;flex-wrap:wrap}.concept{border-top:1px solid #ddd;margin-top:6px}.plots svg{margin-right:20px}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}")
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Blindspot audit</title><style>{style}</style></head>"
           f"<body>{''.join(body)}</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, doc.encode("utf-8"))
    return path


def _concept_section(result, t: dict, side: str, rank: int, k: int, real, g, sets: dict, heat: dict, paired: dict) -> str:
    """One ranked concept: its figures and its top images in both sets (for a suppressed concept,
    beside each real image what the generator drew for the same caption)."""
    cfg, m = result.config, result.config["top_images"]
    tiles = []
    for set_name in (real.name, g.name):
        ids = [i for i, e in zip(result.top_images[set_name]["ids"][k], result.top_images[set_name]["energy"][k]) if i >= 0 and e > 0][:m]
        for i in ids:
            s = sets[set_name]
            cap = f"{set_name} #{i}" + (f": {s.captions[i]}" if s.captions else "")
            tiles.append(_tile(s.items[i], heat[set_name](i, k), cap))
            if set_name == real.name and side == "suppressed" and paired:
                # what the generator drew for the same caption
                for j in paired.get(real.keys[i], [])[:1]:
                    tiles.append(_tile(g.items[j], heat[g.name](j, k), f"{g.name} #{j}, same caption"))
    flag = "flagged" if (t["delta"][k] is not None and ((side == "suppressed" and t["delta"][k] < cfg["t_low"]) or (side == "exaggerated" and t["delta"][k] > cfg["t_high"]))) else "not flagged"
    group = ""
    if real.name in result.groups:
        gr = result.groups[real.name]
        tot = sum(v[k] for v in gr.values()) or 1
        best = max(gr, key=lambda n: gr[n][k])
        group = f"; real energy {gr[best][k] / tot:.0%} in group <b>{html.escape(best)}</b>"
    where = (t.get(f"group_{side}") or [None] * (k + 1))[k]
    if where is not None:
        group += (f"; {'missed' if side == 'suppressed' else 'added'} mostly for captions of group "
                  f"<b>{html.escape(str(where))}</b>")
    return (f"<div class='concept'><p>#{rank} concept {k}: delta {t['delta'][k]:.3f} "
            f"[{t['delta_low'][k]:.3f}, {t['delta_high'][k]:.3f}] ({flag}); E_real {t['energy_real'][k]:.3g}, "
            f"E_gen {t['energy_generated'][k]:.3g}; support {t['support'][k]} images{group}</p>"
            f"<div class='grid'>{''.join(tiles) or '<i>no image where it fires</i>'}</div></div>")


def _memorisation_section(mem: dict, real, g) -> str:
    """The memorisation candidates of generator ``g``: each beside the real image it nearly copies."""
    pixels = mem.get("pixel_ratio")
    views = (f"feature distance ratio at most {mem['ratio']} ({mem.get('flagged_by_features', mem['flagged'])} images)"
             + (f" or pixel distance ratio at most {pixels} ({mem['flagged_by_pixels']} images)" if pixels else ""))
    out = [f"<h3>Memorisation candidates</h3><p>{mem['flagged']} generated images far closer to one real image "
           f"than to the next {mem['neighbours']}: {views}; median feature ratio {(mem['ratio_median'] or 0):.2f}"
           + (f", median pixel ratio {(mem['pixel_ratio_median'] or 0):.2f}" if pixels else "")
           + f", median nearest-real cosine {(mem['nearest_similarity_median'] or 0):.3f}.</p><div class='grid'>"]
    for c in mem["candidates"][: max(3, mem["flagged"])]:
        mark = "MEMORISED? " if c["flagged"] else ""
        px = f", pixel ratio {c['pixel_ratio']:.2f}" if "pixel_ratio" in c else ""
        out.append(_tile(g.items[c["generated"]], None,
                         f"{mark}{g.name} #{c['generated']} (cos {c['similarity']:.3f}, ratio {c['ratio']:.2f}{px})"))
        out.append(_tile(real.items[c["real"]], None, f"nearest {real.name} #{c['real']}"))
    out.append("</div>")
    return "".join(out)


def _correlations_section(correlations: dict) -> str:
    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v['concepts']}</td><td>{fmt(v['pearson'])}</td>"
                   f"<td>{fmt(v['spearman'])}</td></tr>" for k, v in correlations.items())
    return f"<h2>Deltas across generators</h2><table><tr><th>pair</th><th>concepts</th><th>Pearson</th><th>Spearman</th></tr>{rows}</table>"
