"""Look at a trained SAE: its statistics on an activation store, and the inputs that activate
each feature most (text with the token marked, or an image grid PNG with the patch boxed).

One pass over the store (in order, bounded memory) gives both: reconstruction (FVU, MSE), L0,
firing frequency per feature, dead features, and for every feature its ``n_top`` inputs with
the highest activation (one hit per input: the token where it peaks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from visionsae.store import ActivationStore, TokenKind
from .errors import UsageError
from .sae.metrics import FVU


@dataclass
class FeatureHits:
    """The top inputs of every feature, as parallel arrays sorted by (feature, -value)."""

    feature: np.ndarray  # [H] int64
    value: np.ndarray  # [H] float32: the feature's largest activation in that input
    input_id: np.ndarray  # [H] int64
    position: np.ndarray  # [H] int32: the token where it peaks
    kind: np.ndarray  # [H] uint8

    def of(self, f: int) -> list[dict]:
        lo, hi = np.searchsorted(self.feature, [f, f + 1])
        return [
            {"input_id": int(self.input_id[i]), "value": float(self.value[i]), "position": int(self.position[i]),
             "kind": TokenKind(int(self.kind[i])).name.lower()}
            for i in range(lo, hi)
        ]


@dataclass
class Inspection:
    """What one pass of an SAE over a store measured."""

    rows: int  # activation rows read
    fvu: float  # fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2
    mse: float  # mean over rows of ||x - x_hat||^2 / d_in
    l0: float  # mean number of active features per row
    frequency: np.ndarray  # [n_latents] fraction of rows where each feature is active
    max_value: np.ndarray  # [n_latents] largest activation of each feature
    hits: FeatureHits
    extra: dict = field(default_factory=dict)

    @property
    def dead_fraction(self) -> float:
        return float((self.frequency == 0).mean())

    def summary(self) -> dict:
        f = self.frequency[self.frequency > 0]
        log_hist, edges = np.histogram(np.log10(f), bins=np.arange(-7, 0.5, 0.5)) if f.size else (np.array([]), np.array([]))
        return {
            "rows": self.rows,
            "fvu": self.fvu,
            "mse": self.mse,
            "l0": self.l0,
            "dead_fraction": self.dead_fraction,
            "alive_features": int((self.frequency > 0).sum()),
            "frequency_log10_histogram": {"edges": edges.tolist(), "counts": log_hist.tolist()},
            **self.extra,
        }


def sae_summary(sae: Any) -> dict:
    """Static facts of an SAE: config, parameter count, decoder norms, encoder/decoder alignment."""
    W_dec = sae.W_dec.detach().float()
    W_enc = sae.W_enc.detach().float()
    norms = W_dec.norm(dim=1)
    cos = torch.nn.functional.cosine_similarity(W_enc, W_dec, dim=1)
    return {
        "config": sae.cfg.to_dict(),
        "parameters": int(sum(p.numel() for p in sae.parameters())),
        "decoder_norm": {"min": float(norms.min()), "mean": float(norms.mean()), "max": float(norms.max())},
        "encoder_decoder_cosine_mean": float(cos.mean()),
    }


def _merge_top(cand: list[np.ndarray], new: list[np.ndarray], n_top: int) -> list[np.ndarray]:
    """Keep, per feature, the ``n_top`` distinct inputs with the highest value."""
    f, v, i, p, k = (np.concatenate([a, b]) for a, b in zip(cand, new))
    order = np.lexsort((-v, i, f))  # by feature, then input, best value first
    f, v, i, p, k = f[order], v[order], i[order], p[order], k[order]
    first = np.ones(len(f), dtype=bool)
    first[1:] = (f[1:] != f[:-1]) | (i[1:] != i[:-1])  # one hit per (feature, input): its peak
    f, v, i, p, k = f[first], v[first], i[first], p[first], k[first]
    order = np.lexsort((-v, f))
    f, v, i, p, k = f[order], v[order], i[order], p[order], k[order]
    starts = np.r_[0, np.flatnonzero(f[1:] != f[:-1]) + 1]
    rank = np.arange(len(f)) - np.repeat(starts, np.diff(np.r_[starts, len(f)]))
    keep = rank < n_top
    return [f[keep], v[keep], i[keep], p[keep], k[keep]]


def _row_blocks(store: ActivationStore, keep: torch.Tensor | None, max_rows: int | None, batch_size: int):
    """(shard, start, end) of up to ``batch_size`` rows at a time, in store order, only rows of the
    kinds in ``keep``, ``max_rows`` in all."""
    rows = 0
    for shard in store.iter_shards():
        if max_rows is not None and rows >= max_rows:
            return
        if keep is not None:
            shard = shard.select(torch.isin(shard.kind, keep))
        for s in range(0, len(shard), batch_size):
            if max_rows is not None and rows >= max_rows:
                return
            e = min(s + batch_size, len(shard))
            if max_rows is not None:
                e = min(e, s + max_rows - rows)
            rows += e - s
            yield shard, s, e


@torch.no_grad()
def inspect_store(
    sae: Any,
    store: ActivationStore,
    *,
    n_top: int = 8,
    kinds: str | Sequence[str] | None = None,
    max_rows: int | None = None,
    batch_size: int = 4096,
    device: str = "cpu",
    progress: bool = True,
) -> Inspection:
    """Run ``sae`` over ``store`` (in store order) and measure it.

    Parameters
    ----------
    n_top:
        Top inputs kept per feature.
    kinds:
        Only rows of these token kinds (``"patch"``, ``"text,end"``); default all.
    max_rows:
        Stop after this many rows (default: the whole store).
    """
    from tqdm.auto import tqdm

    if store.d_in != sae.cfg.d_in:
        raise UsageError(
            f"the store at {store.path} holds {store.d_in}-wide activations (hook {store.hook!r}) "
            f"but the SAE expects {sae.cfg.d_in}"
        )
    keep = None if kinds is None else torch.tensor([int(k) for k in TokenKind.parse(kinds)], dtype=torch.uint8)
    n = sae.cfg.n_latents
    counts = torch.zeros(n, dtype=torch.float64)
    max_value = torch.zeros(n, dtype=torch.float32)
    fvu = FVU()
    l0_sum = 0.0
    rows = 0
    empty = [np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int32),
             np.zeros(0, np.uint8)]
    cand = empty
    total = len(store) if max_rows is None else min(max_rows, len(store))
    bar = tqdm(total=total, unit="row", desc="inspect", disable=not progress, dynamic_ncols=True)
    with bar:
        for shard, s, e in _row_blocks(store, keep, max_rows, batch_size):
            x = shard.acts[s:e].to(device, torch.float32)
            code = sae.encode(x)
            x_hat = sae.decode(code).float()
            fvu.update(x, x_hat)
            values, indices = code.values.float().cpu(), code.indices.cpu()
            active = values > 0
            l0_sum += float((code.values != 0).sum())
            feat = indices[active]
            val = values[active]
            counts += torch.bincount(feat, minlength=n).double()
            max_value = torch.maximum(max_value, torch.zeros(n).scatter_reduce(0, feat, val, "amax"))
            row = active.nonzero()[:, 0] + s
            new = [feat.numpy().astype(np.int64), val.numpy(), shard.input_id[row].numpy(),
                   shard.position[row].numpy(), shard.kind[row].numpy()]
            cand = _merge_top(cand, new, n_top)
            rows += e - s
            bar.update(e - s)
    if rows == 0:
        raise UsageError(f"no rows{'' if kinds is None else f' of kinds {kinds!r}'} in the store at {store.path}")
    return Inspection(
        rows=rows,
        fvu=fvu.value,
        mse=fvu.sq_err / rows / sae.cfg.d_in,
        l0=l0_sum / rows,
        frequency=(counts / rows).numpy(),
        max_value=max_value.numpy(),
        hits=FeatureHits(*cand),
    )


def pick_features(result: Inspection, n: int, features: Sequence[int] | None = None) -> list[int]:
    """The features to show: those given, else the ``n`` alive features that fire most often."""
    if features:
        return [int(f) for f in features]
    order = np.argsort(-result.frequency, kind="stable")
    return [int(f) for f in order[:n] if result.frequency[f] > 0]


def _token_text(tok: str) -> str:
    return tok.replace("</w>", "").replace("Ġ", "").replace("▁", "")


def describe_features(store: ActivationStore, result: Inspection, features: Sequence[int]) -> list[dict]:
    """JSON-able description of each feature's top inputs, with the inputs' records (text with
    the peak token marked ``[[like this]]``, image path and patch cell)."""
    wanted = [h["input_id"] for f in features for h in result.hits.of(f)]
    records = store.input_records(wanted)
    out = []
    for f in features:
        items = []
        for h in result.hits.of(f):
            rec = records.get(h["input_id"], {})
            item = dict(h)
            if "tokens" in rec:
                toks = [_token_text(t) for t in rec["tokens"]]
                pos = h["position"]
                item["token"] = toks[pos] if 0 <= pos < len(toks) else "<pad>"
                marked = [f"[[{t}]]" if j == pos else t for j, t in enumerate(toks)]
                if not 0 <= pos < len(toks):
                    marked.append("[[<pad>]]")
                item["context"] = " ".join(marked)
            if "text" in rec:
                item["text"] = rec["text"]
            if "question" in rec:
                item["question"] = rec["question"]
            if rec.get("image"):
                item["image"] = rec["image"]
            if rec.get("grid") and h["kind"] == "patch":
                gw = rec["grid"][1]
                idx = h["position"] - rec.get("prefix", 0)
                item["patch"] = [idx // gw, idx % gw]
                item["grid"] = rec["grid"]
            items.append(item)
        out.append({"feature": int(f), "frequency": float(result.frequency[f]),
                    "max_value": float(result.max_value[f]), "top": items})
    return out


def image_grid(described: list[dict], path: str | Path, *, thumb: int = 96, crop_fraction: float = 1.0) -> Path:
    """A PNG with one row per feature and its top images, the peak patch boxed in red.

    ``crop_fraction`` is the part of the shorter side the model saw (its preprocessing's
    crop / resize), so the thumbnail shows what the patch grid covers."""
    from PIL import Image, ImageDraw

    from visionsae.sources.image import ImageReadError, load_image

    cols = max((len(d["top"]) for d in described), default=1)
    label_w = 110
    pad = 4
    W = label_w + cols * (thumb + pad)
    H = max(1, len(described)) * (thumb + pad) + pad
    canvas = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(canvas)
    for r, d in enumerate(described):
        y = pad + r * (thumb + pad)
        draw.text((4, y + 4), f"feature {d['feature']}", fill="black")
        draw.text((4, y + 20), f"freq {d['frequency']:.2%}", fill="gray")
        draw.text((4, y + 36), f"max {d['max_value']:.3g}", fill="gray")
        for c, item in enumerate(d["top"]):
            x = label_w + c * (thumb + pad)
            if not item.get("image"):
                continue
            try:
                img = load_image(item["image"])
                side = min(img.size) * min(1.0, crop_fraction)
                left, top = (img.size[0] - side) / 2, (img.size[1] - side) / 2
                img = img.resize((thumb, thumb), Image.BICUBIC, box=(left, top, left + side, top + side))
            except ImageReadError:
                draw.rectangle([x, y, x + thumb, y + thumb], outline="gray")
                continue
            canvas.paste(img, (x, y))
            if "patch" in item:
                gh, gw = item["grid"]
                pr, pc = item["patch"]
                ch, cw = thumb / gh, thumb / gw
                draw.rectangle([x + pc * cw, y + pr * ch, x + (pc + 1) * cw - 1, y + (pr + 1) * ch - 1],
                               outline="red", width=2)
            draw.text((x + 3, y + thumb - 12), f"{item['value']:.2f}", fill="yellow")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    canvas.save(tmp)
    tmp.replace(out)
    return out


def crop_fraction(store: ActivationStore) -> float:
    """The part of an image's shorter side that the store's source fed the model."""
    pre = store.source.get("preprocess") or {}
    if pre.get("crop") and pre.get("resize"):
        return min(pre["crop"]) / pre["resize"]
    return 1.0


def format_text(described: list[dict], width: int = 100) -> str:
    """Human-readable lines: each feature and its top inputs."""
    lines = []
    for d in described:
        lines.append(f"feature {d['feature']}  freq {d['frequency']:.3%}  max {d['max_value']:.3g}")
        for item in d["top"]:
            what = item.get("context") or item.get("text") or item.get("image") or f"input {item['input_id']}"
            if "patch" in item:
                what += f"  patch {tuple(item['patch'])}"
            what = what if len(what) <= width else what[: width - 3] + "..."
            lines.append(f"  {item['value']:8.3f}  {what}")
    return "\n".join(lines)

