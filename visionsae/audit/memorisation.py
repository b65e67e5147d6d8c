"""Memorisation candidates of the blindspot audit: generated images far closer to one real
image than to the others (the ratio test of Carlini et al. 2023, "Extracting Training Data
from Diffusion Models").

Two views of every image go to files beside its store while the audit streams it, each row
``(input id int64, vector float16)``:

- ``.descriptors``: the backbone's patch features pooled to a small grid, compared by the
  cosine of descriptors centred on the real set's mean. It sees a copy through changes of
  colour, blur or a small shift.
- ``.thumbnails``: the RGB image resized to a small square, compared by Euclidean distance in
  pixels (Carlini et al.'s own distance). It sees a near-exact copy that the pooled
  features can lose: on a plain background, faint noise moves a copy's descriptor half-way to
  the other real images of a dense class (``visionsae eval audit`` measured it on the zoo's
  sneakers: descriptor ratio 0.42, above every threshold free of false flags).

Per view, each generated image's distance ratio is its distance to the nearest real image over
its mean distance to the next ``neighbours``; an image is flagged when the ratio of either view
is at most that view's threshold. Candidates are ranked by ``score = min(ratio / threshold)``
over the views (flagged when ``score <= 1``). Both files are streamed block by block, so
memory stays flat in the number of images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..store import TokenKind


def descriptor(acts: torch.Tensor, kind: torch.Tensor, position: torch.Tensor, record: dict, grid_side: int) -> torch.Tensor:
    """Backbone patch features of one image pooled to at most ``grid_side`` x ``grid_side``, flattened."""
    patch = kind == int(TokenKind.PATCH)
    grid = record.get("grid")
    if bool(patch.any()) and grid and grid[0] * grid[1] == int(patch.sum()):
        order = torch.argsort(position[patch])
        x = acts[patch][order].float().T.reshape(1, -1, grid[0], grid[1])
        x = F.adaptive_avg_pool2d(x, (min(grid_side, grid[0]), min(grid_side, grid[1])))
        return x.flatten()
    return acts.float().mean(0)  # pooled or token-only models: the mean token


def thumbnail(image, side: int) -> torch.Tensor:
    """An RGB PIL image resized (bilinear) to ``side`` x ``side``, as ``[3 * side * side]`` values in [0, 1]."""
    from PIL import Image

    small = image.convert("RGB").resize((side, side), Image.BILINEAR)
    return torch.from_numpy(np.asarray(small, dtype=np.float32).copy()).flatten() / 255.0


class ThumbnailReader:
    """Thumbnails of ``items`` made ahead in a second thread (PIL decodes without the GIL), in
    input order, at most ``ahead`` of them waiting: ``take(ids)`` returns those of increasing
    ``ids`` (an item that cannot be read is skipped, as extraction skips it)."""

    def __init__(self, items, load, side: int, ahead: int = 1024):
        import queue
        import threading

        self._queue: "queue.Queue" = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._next = 0

        def produce() -> None:
            for i, item in enumerate(items):
                if self._stop.is_set():
                    return
                try:
                    value = thumbnail(load(item), side)
                except Exception:  # noqa: BLE001 - unreadable: not in the store either
                    value = None
                while not self._stop.is_set():
                    try:
                        self._queue.put((i, value), timeout=0.1)
                        break
                    except queue.Full:
                        continue

        self._thread = threading.Thread(target=produce, name="audit-thumbnails", daemon=True)
        self._thread.start()

    def take(self, ids) -> torch.Tensor:
        out = []
        for want in ids:
            while True:
                i, value = self._queue.get()
                if i == want:
                    break
                if i > want:
                    raise RuntimeError(f"thumbnail of input {want} asked after input {i}: ids must increase")
            if value is None:
                raise RuntimeError(f"input {want} is in the store but its image could not be read again")
            out.append(value)
        return torch.stack(out)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def write_vectors(f, ids: torch.Tensor, vectors: torch.Tensor) -> None:
    """Append rows ``(id int64, vector float16)`` to the open binary file ``f``."""
    np.concatenate([ids.numpy().astype(np.int64).view(np.uint8).reshape(-1, 8),
                    vectors.half().numpy().view(np.uint8).reshape(len(vectors), -1)], 1).tofile(f)


def read_vectors(path: Path, dim: int, block: int):
    """Yield ``(ids [n], vectors [n, dim] float32)`` blocks of a file written by :func:`write_vectors`."""
    row = 8 + 2 * dim
    with open(path, "rb") as f:
        while True:
            raw = np.fromfile(f, dtype=np.uint8, count=row * block)
            if raw.size == 0:
                return
            raw = raw.reshape(-1, row)
            ids = torch.from_numpy(raw[:, :8].copy().view(np.int64).reshape(-1))
            yield ids, torch.from_numpy(raw[:, 8:].copy().view(np.float16)).float()


def _cosine_distance(mean: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def dist(g: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return 1 - (F.normalize(g - mean, dim=1) @ F.normalize(r - mean, dim=1).T).clamp(-1, 1)
    return dist


def _euclidean(g: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return torch.cdist(g, r)


def nearest_ratios(real_file: Path, gen_file: Path, dim: int, distance, neighbours: int,
                   gen_block: int = 1024, real_block: int = 256):
    """Per generated image of ``gen_file``: ``(ids, ratio, nearest real id, nearest distance)``,
    the ratio being the nearest real image's distance over the mean of the next ``neighbours``
    (1 where the real set has a single image). The real file is read once per block of
    generated images, in smaller blocks."""
    m = neighbours + 1
    out_ids, ratios, nearest, dists = [], [], [], []
    for gids, g in read_vectors(gen_file, dim, gen_block):
        best = torch.full((len(gids), 0), float("inf"))
        arg = torch.full((len(gids),), -1, dtype=torch.int64)
        for rids, r in read_vectors(real_file, dim, real_block):
            d = distance(g, r)  # [gen block, real block]
            v, i = d.min(1)
            better = v < (best[:, 0] if best.shape[1] else torch.full_like(v, float("inf")))
            arg[better] = rids[i[better]]
            both = torch.cat([best, d], 1)
            best = both.topk(min(m, both.shape[1]), dim=1, largest=False).values
        if best.shape[1] > 1:
            ratio = best[:, 0] / best[:, 1:].mean(1).clamp_min(1e-12)
        else:
            ratio = torch.ones(len(gids))
        out_ids.append(gids)
        ratios.append(ratio)
        nearest.append(arg)
        dists.append(best[:, 0])
    return torch.cat(out_ids), torch.cat(ratios), torch.cat(nearest), torch.cat(dists)


def memorisation(stores: Path, real: str, gen: str, descriptor_dim: int, mean: torch.Tensor, cfg, keep: int = 20) -> dict:
    """Memorisation candidates of generated set ``gen`` against ``real`` from the files their
    streaming pass wrote to ``stores`` (``cfg``: an :class:`~visionsae.audit.core.AuditConfig`)."""
    gids, f_ratio, f_near, f_dist = nearest_ratios(stores / f"{real}.descriptors", stores / f"{gen}.descriptors",
                                                   descriptor_dim, _cosine_distance(mean), cfg.memorisation_neighbours)
    score = f_ratio / cfg.memorisation_ratio
    pixel = None
    if cfg.pixel_side:
        pids, p_ratio, p_near, _ = nearest_ratios(stores / f"{real}.thumbnails", stores / f"{gen}.thumbnails",
                                                  3 * cfg.pixel_side ** 2, _euclidean, cfg.memorisation_neighbours)
        if not torch.equal(pids, gids):
            raise RuntimeError(f"the descriptor and thumbnail files of {gen!r} list different images")  # written by one pass
        pixel = (p_ratio, p_near)
        score = torch.minimum(score, p_ratio / cfg.pixel_ratio)
    order = score.argsort()[:keep]

    def candidate(i: int) -> dict:
        c = {"generated": int(gids[i]), "real": int(f_near[i]), "similarity": float(1 - f_dist[i]),
             "ratio": float(f_ratio[i]), "score": float(score[i]), "flagged": bool(score[i] <= 1)}
        if pixel is not None:
            c.update(pixel_ratio=float(pixel[0][i]), pixel_real=int(pixel[1][i]))
            if c["pixel_ratio"] / cfg.pixel_ratio < c["ratio"] / cfg.memorisation_ratio:
                c["real"] = c["pixel_real"]  # the view that flags it names the real image
        return c

    return {
        "ratio": cfg.memorisation_ratio,
        "pixel_ratio": cfg.pixel_ratio if cfg.pixel_side else None,
        "neighbours": cfg.memorisation_neighbours,
        "flagged": int((score <= 1).sum()),
        "flagged_by_features": int((f_ratio <= cfg.memorisation_ratio).sum()),
        "flagged_by_pixels": int((pixel[0] <= cfg.pixel_ratio).sum()) if pixel is not None else 0,
        "nearest_similarity_median": float((1 - f_dist).median()) if len(f_dist) else None,
        "ratio_median": float(f_ratio.median()) if len(f_ratio) else None,
        "pixel_ratio_median": float(pixel[0].median()) if pixel is not None and len(pixel[0]) else None,
        "candidates": [candidate(i) for i in order.tolist()],
    }


def ratios_of(mem: dict, ids) -> dict:
    """The distance ratios (features, pixels) of the candidates of :func:`memorisation`'s result
    ``mem`` whose generated id is in ``ids``, and the lowest of the other candidates: how far a
    known copy sits from the nearest image that is not one."""
    ids = set(ids)

    def pair(c: dict) -> dict:
        return {"features": c["ratio"], "pixels": c.get("pixel_ratio")}

    others = [c for c in mem["candidates"] if c["generated"] not in ids]
    return {
        "of": {str(c["generated"]): pair(c) for c in mem["candidates"] if c["generated"] in ids},
        "lowest_other": {"features": min((c["ratio"] for c in others), default=None),
                         "pixels": min((c["pixel_ratio"] for c in others if "pixel_ratio" in c), default=None)},
        "thresholds": {"features": mem["ratio"], "pixels": mem.get("pixel_ratio")},
    }
