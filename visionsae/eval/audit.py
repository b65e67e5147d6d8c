"""``visionsae eval audit``: the blindspot audit on the zoo, with planted blindspots.

Real = Fashion-MNIST test images (28x28 in the 2-pixel black frame the zoo generator was
trained on). Generated = the zoo text-to-image pipeline's images for the same captions
(held-out caption templates, paired by caption).

By default the plants **rotate** (:func:`rotation`), per seed: every class in turn

* **omitted**: its captions drawn as the next class (that class's second draws);
* **erased**: its captions answered by the ItD pipeline that erases it
  (``ItDStableDiffusionPipeline.wrap``);
* **exaggerated**: its captions drawn 3 times each;

and **copies**: the first caption of a few classes answered by its real image plus faint
noise. Each plant is one generator of a JSONL that ``visionsae audit --jsonl`` reads (the
eval reads it with the same reader, backbone and defaults), with the caption's class as its
``group``. Per plant: the rank (1 = top) of the planted class's first concept (a concept
belongs to the class holding at least half its energy: in the real images for suppression,
in the unplanted generated images for exaggeration), and per kind and seed the median and
worst rank; the copies' place among the memorisation candidates and the false flags per
1,000 generated images. Seed 0 chose the ranking statistic and the defaults (dev); the other
seeds test them. ``--single`` runs the earlier single plant (sneaker erased, trouser
exaggerated, a bag copy) with the RA-SAE's stability and a second generator.

Backbone: the real EfficientNet-Lite0 (block 15, a 4x4 grid of 320-d tokens at 128 px); the
concepts are an RA-SAE trained on the real images' tokens.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from ..errors import UsageError
from ..sae.io import atomic_write_bytes

HOOK = "_blocks.15"
RESOLUTION = 128


def efficientnet_source(resolution: int = RESOLUTION):
    """The real EfficientNet-Lite0 at :data:`HOOK`, images at ``resolution`` px: the source
    ``visionsae audit --model efficientnet-lite0`` builds with its defaults."""
    from ..audit.inputs import build_source

    return build_source("efficientnet-lite0", HOOK, None, "cpu", resolution)


def _framed(image28: np.ndarray) -> np.ndarray:
    """uint8 28x28 -> uint8 32x32x3 in the zoo's 2-pixel black frame."""
    out = np.zeros((32, 32, 3), dtype=np.uint8)
    out[2:30, 2:30] = image28[:, :, None]
    return out


def _save(rgb: np.ndarray, path: Path) -> str:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return str(path)


def _generate(pipe, prompts, seeds, settings, batch, desc, progress) -> np.ndarray:
    from tqdm.auto import tqdm

    out = []
    for i in tqdm(range(0, len(prompts), batch), desc=desc, disable=not progress):
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i : i + batch]]
        out.append(pipe(list(prompts[i : i + batch]), generator=gens, output_type="np", **settings).images)
    return (np.concatenate(out) * 255).round().clip(0, 255).astype(np.uint8)


def planted_sets(out_dir: Path, per_class: int, *, suppress: str = "sneaker", exaggerate: str = "trouser",
                 factor: int = 3, copy_class: str = "bag", second_generator: bool = False, seed: int = 0,
                 batch: int = 32, progress: bool = True):
    """Write the real and generated images (PNG) and return ``(real, [generated...], truth)``."""
    from visionsae.pipelines.itd import ItDStableDiffusionPipeline

    from ..audit import ImageSet
    from ..zoo import CLASS_NAMES, load_fashion_pipeline, zoo_dir
    from ..zoo.captions import sample_prompts
    from ..zoo.data import load_fashion_mnist
    from ..zoo.settings import ERASE_MODE, ERASE_VALUE, TEXT_SAE_DIR as SAE_DIR

    for name in (suppress, exaggerate, copy_class):
        if name not in CLASS_NAMES:
            raise UsageError(f"unknown class {name!r}; the zoo's classes are {list(CLASS_NAMES)}")
    if suppress == exaggerate:
        raise UsageError("the suppressed and the exaggerated class must differ")
    if factor < 2:
        raise UsageError(f"factor must be >= 2 (the exaggerated class is drawn factor times per caption), got {factor}")
    images, labels = load_fashion_mnist("test")
    gen = torch.Generator().manual_seed(seed)
    real_items, captions, keys, groups = [], [], [], []
    for c, name in enumerate(CLASS_NAMES):
        idx = torch.nonzero(labels == c).squeeze(1)
        pick = idx[torch.randperm(len(idx), generator=gen)[:per_class]].tolist()
        for j, (i, caption) in enumerate(zip(pick, sample_prompts(c, per_class, "heldout", seed))):
            key = f"{name}-{j}"
            real_items.append(_save(_framed(images[i].numpy()), out_dir / "images" / "real" / f"{key}.png"))
            captions.append(caption)
            keys.append(key)
            groups.append(name)
    real = ImageSet("real", real_items, keys, captions, groups)

    stock = load_fashion_pipeline()
    stock.set_progress_bar_config(disable=True)
    settings = dict(stock.zoo_settings)
    erased = ItDStableDiffusionPipeline.wrap(stock, zoo_dir() / SAE_DIR, zoo_dir() / SAE_DIR / "concepts.json",
                                             [suppress], mode=ERASE_MODE, value=ERASE_VALUE)
    # jobs: (key, caption, class, seed); the exaggerated class's captions are drawn `factor` times
    jobs = []
    for i, (k, cap, g) in enumerate(zip(keys, captions, groups)):
        for r in range(factor if g == exaggerate else 1):
            jobs.append((k if r == 0 else f"{k}~{r}", k, cap, g, seed * 1_000_003 + 7 * i + r))
    t0 = time.perf_counter()
    gen_rgb: dict[str, np.ndarray] = {}
    # images of an earlier run with the same setting are reused (the generation is deterministic)
    setting = {"per_class": per_class, "suppress": suppress, "exaggerate": exaggerate, "factor": factor,
               "copy_class": copy_class, "seed": seed, "second_generator": second_generator}
    stamp = out_dir / "images" / "setting.json"
    if stamp.exists() and json.loads(stamp.read_text()) == setting:
        return _reuse(out_dir, real, jobs, keys, captions, groups, copy_key_of(keys, groups, copy_class), setting, suppress,
                      exaggerate, factor, copy_class)
    stamp.unlink(missing_ok=True)
    for pipe, which in ((stock, [j for j in jobs if j[3] != suppress]), (erased, [j for j in jobs if j[3] == suppress])):
        if which:
            rgb = _generate(pipe, [j[2] for j in which], [j[4] for j in which], settings, batch,
                            "generate (ItD-erased)" if pipe is erased else "generate", progress)
            gen_rgb.update({j[0]: im for j, im in zip(which, rgb)})
    copy_key = copy_key_of(keys, groups, copy_class)
    noise = np.random.default_rng(seed).normal(0, 2.0, (32, 32, 1))  # faint noise, as a re-encoded copy would carry
    from PIL import Image

    real_rgb = np.asarray(Image.open(real_items[keys.index(copy_key)]).convert("RGB"))
    gen_rgb[copy_key] = (real_rgb + noise).round().clip(0, 255).astype(np.uint8)
    gen_items = [_save(gen_rgb[j[0]], out_dir / "images" / "zoo" / f"{j[0]}.png") for j in jobs]
    seconds = time.perf_counter() - t0
    generated = [ImageSet("zoo", gen_items, [j[1] for j in jobs], [j[2] for j in jobs], [j[3] for j in jobs])]
    if second_generator:
        plain_jobs = [(k, cap, g, seed * 1_000_003 + 500_009 + 7 * i) for i, (k, cap, g) in enumerate(zip(keys, captions, groups))]
        rgb = _generate(stock, [j[1] for j in plain_jobs], [j[3] for j in plain_jobs], settings, batch, "generate (plain)", progress)
        items = [_save(im, out_dir / "images" / "zoo-plain" / f"{j[0]}.png") for j, im in zip(plain_jobs, rgb)]
        generated.append(ImageSet("zoo-plain", items, [j[0] for j in plain_jobs], [j[1] for j in plain_jobs], [j[2] for j in plain_jobs]))
    atomic_write_bytes(stamp, json.dumps(setting).encode())
    truth = {"suppressed": suppress, "exaggerated": exaggerate, "factor": factor, "copy_generated_id": jobs.index(
        next(j for j in jobs if j[0] == copy_key)), "copy_real_id": keys.index(copy_key), "copy_class": copy_class,
        "generation_seconds": seconds, "generated_images": len(jobs)}
    return real, generated, truth


def copy_key_of(keys, groups, copy_class: str) -> str:
    """The caption key whose generated image is replaced by a copy of its real image."""
    return next(k for k, g in zip(keys, groups) if g == copy_class)


def _reuse(out_dir, real, jobs, keys, captions, groups, copy_key, setting, suppress, exaggerate, factor, copy_class):
    from ..audit import ImageSet

    items = [str(out_dir / "images" / "zoo" / f"{j[0]}.png") for j in jobs]
    generated = [ImageSet("zoo", items, [j[1] for j in jobs], [j[2] for j in jobs], [j[3] for j in jobs])]
    if setting["second_generator"]:
        generated.append(ImageSet("zoo-plain", [str(out_dir / "images" / "zoo-plain" / f"{k}.png") for k in keys],
                                  list(keys), list(captions), list(groups)))
    truth = {"suppressed": suppress, "exaggerated": exaggerate, "factor": factor,
             "copy_generated_id": [j[0] for j in jobs].index(copy_key), "copy_real_id": keys.index(copy_key),
             "copy_class": copy_class, "generation_seconds": None, "generated_images": len(jobs)}
    return real, generated, truth


def class_ranks(result, truth: dict, generator: str = "zoo", purity: float = 0.5, top: int = 5) -> dict[str, Any]:
    """Where the planted classes' concepts land in the rankings: the rank (1 = top) of the
    first concept owned by the suppressed class among the suppressed ranking, the same for the
    exaggerated class, and the owners of the top concepts of each ranking."""
    groups = result.groups["real"]
    names = sorted(groups)
    g = torch.tensor([groups[n] for n in names])  # [classes, K]: mean real energy per class
    share = g / g.sum(0).clamp_min(1e-12)
    owner_share, owner = share.max(0)

    def owner_of(k: int) -> str | None:
        return names[int(owner[k])] if float(owner_share[k]) >= purity else None

    table = result.concepts[generator]
    out: dict[str, Any] = {"purity": purity}
    for side, cls in (("suppressed", truth["suppressed"]), ("exaggerated", truth["exaggerated"])):
        order = table[f"rank_{side}"]
        owners = [owner_of(k) for k in order]
        rank = next((i + 1 for i, o in enumerate(owners) if o == cls), None)
        by_bound = [owner_of(k) for k in table[f"rank_{side}_by_bound"]]
        flagged = table[side]
        out[side] = {
            "class": cls,
            "rank_of_first_class_concept": rank,
            "rank_by_interval_bound_alone": next((i + 1 for i, o in enumerate(by_bound) if o == cls), None),
            "ranked_concepts": len(order),
            "class_concepts": sum(1 for k in range(len(owner)) if owner_of(k) == cls and table["supported"][k]),
            f"top{top}_owners": owners[:top],
            f"top{top}_share_of_class": sum(o == cls for o in owners[:top]) / max(1, min(top, len(owners))),
            "flagged": len(flagged),
            "flagged_of_class": sum(owner_of(k) == cls for k in flagged),
            "first_class_concept": None if rank is None else {
                "concept": order[rank - 1], "delta": table["delta"][order[rank - 1]],
                "interval": [table["delta_low"][order[rank - 1]], table["delta_high"][order[rank - 1]]]},
        }
    return out


def evaluate(out_dir: str | Path = "runs/eval-audit", per_class: int = 50, *, seed: int = 0, stability: bool = True,
             second_generator: bool = True, cfg=None, progress: bool = True, report: bool = True) -> dict[str, Any]:
    from ..audit import AuditConfig, run_audit
    from ..audit.core import train_audit_sae
    from ..audit.memorisation import ratios_of
    from ..store import ActivationStore

    out = Path(out_dir)
    cfg = cfg or AuditConfig(seed=seed, progress=progress)
    real, generated, truth = planted_sets(out, per_class, seed=seed, second_generator=second_generator, progress=progress)
    source = efficientnet_source()
    t0 = time.perf_counter()
    result = run_audit(source, real, generated, out / "audit", cfg=cfg)
    audit_seconds = time.perf_counter() - t0
    mem = result.memorisation["zoo"]
    copy = next((c for c in mem["candidates"] if c["generated"] == truth["copy_generated_id"]), None)
    others = [c["similarity"] for c in mem["candidates"] if c["generated"] != truth["copy_generated_id"]]
    report_json: dict[str, Any] = {
        "setting": {"per_class": per_class, "real_images": len(real.items), "backbone": f"efficientnet-lite0 {HOOK} @ {RESOLUTION}px",
                    "seed": seed, **{k: v for k, v in truth.items() if k != "generation_seconds"}},
        "ranks": class_ranks(result, truth),
        "memorisation": {
            "copy_flagged": bool(copy and copy["flagged"]),
            "copy_similarity": copy["similarity"] if copy else None,
            "copy_is_top_candidate": bool(mem["candidates"] and mem["candidates"][0]["generated"] == truth["copy_generated_id"]),
            "copy_matched_its_original": bool(copy and copy["real"] == truth["copy_real_id"]),
            "best_other_similarity": max(others) if others else None,
            "other_flagged": mem["flagged"] - int(bool(copy and copy["flagged"])),
            "ratios": ratios_of(mem, [truth["copy_generated_id"]]),
        },
        "correlations": result.correlations,
        "timing": {"generation_seconds": truth["generation_seconds"], "audit_seconds": audit_seconds},
        "sae": result.sae,
    }
    if stability:
        from .sae import stability as stability_of

        store = ActivationStore.open(out / "audit" / "stores" / "real")
        other = train_audit_sae(store, out / "audit" / f"sae-train-seed{cfg.seed + 1}",
                                AuditConfig(**{**cfg.to_dict(), "seed": cfg.seed + 1}))
        from ..sae import SparseAutoencoder

        first = SparseAutoencoder.from_pretrained(out / "audit" / "sae-train" / "sae")
        report_json["stability"] = {k: v for k, v in stability_of([first, other]).items() if k != "pairs"}
        # the same two seeds with a linear dictionary (plain TopK), for comparison
        linear = [train_audit_sae(store, out / "audit" / f"sae-train-linear-seed{s}", AuditConfig(**{**cfg.to_dict(), "seed": s}),
                                  dictionary="linear") for s in (cfg.seed, cfg.seed + 1)]
        report_json["stability_linear"] = {k: v for k, v in stability_of(linear).items() if k != "pairs"}
    if report:
        from ..audit.report import write_report

        write_report(result, out / "report.html", real=real, generated=generated)
        report_json["report"] = str(out / "report.html")
    atomic_write_bytes(out / "eval-audit.json", json.dumps(report_json, indent=2).encode())
    return report_json


# ----------------------------------------------------------------------------- rotation
def _pool(out_dir: Path, per_class: int, seed: int, factor: int, itd: bool, batch: int, progress: bool) -> dict:
    """Real images and the zoo generator's draws for one seed (PNG files, reused when present):
    per caption ``factor`` stock draws, and (``itd``) one draw by the ItD pipeline erasing the
    caption's own class. Returns the records (key, caption, group, real, draws, erased)."""
    from ..zoo import CLASS_NAMES, load_fashion_pipeline, zoo_dir
    from ..zoo.captions import sample_prompts
    from ..zoo.data import load_fashion_mnist

    setting = {"per_class": per_class, "seed": seed, "factor": factor, "itd": itd, "version": 1}
    stamp = out_dir / "pool.json"
    if stamp.exists():
        pool = json.loads(stamp.read_text())
        if pool["setting"] == setting:
            return pool
    images, labels = load_fashion_mnist("test")
    gen = torch.Generator().manual_seed(seed)
    recs = []
    for c, name in enumerate(CLASS_NAMES):
        idx = torch.nonzero(labels == c).squeeze(1)
        pick = idx[torch.randperm(len(idx), generator=gen)[:per_class]].tolist()
        for j, (i, caption) in enumerate(zip(pick, sample_prompts(c, per_class, "heldout", seed))):
            key = f"{name}-{j}"
            recs.append({"key": key, "caption": caption, "group": name,
                         "real": _save(_framed(images[i].numpy()), out_dir / "real" / f"{key}.png")})
    stock = load_fashion_pipeline()
    stock.set_progress_bar_config(disable=True)
    settings = dict(stock.zoo_settings)
    t0 = time.perf_counter()
    jobs = [(n, r, seed * 1_000_003 + 7 * n + r) for n in range(len(recs)) for r in range(factor)]
    rgb = _generate(stock, [recs[n]["caption"] for n, _, _ in jobs], [s for *_, s in jobs], settings, batch,
                    f"generate (seed {seed})", progress)
    for (n, r, _), im in zip(jobs, rgb):
        recs[n].setdefault("draws", []).append(_save(im, out_dir / "zoo" / f"{recs[n]['key']}~{r}.png"))
    if itd:
        from visionsae.pipelines.itd import ItDStableDiffusionPipeline

        from ..zoo.settings import ERASE_MODE, ERASE_VALUE, TEXT_SAE_DIR as SAE_DIR

        for name in CLASS_NAMES:  # each class's captions answered by the pipeline erasing that class
            erased = ItDStableDiffusionPipeline.wrap(stock, zoo_dir() / SAE_DIR, zoo_dir() / SAE_DIR / "concepts.json",
                                                     [name], mode=ERASE_MODE, value=ERASE_VALUE)
            which = [n for n, r in enumerate(recs) if r["group"] == name]
            rgb = _generate(erased, [recs[n]["caption"] for n in which], [seed * 1_000_003 + 7 * n for n in which],
                            settings, batch, f"generate (ItD-erased {name})", progress)
            for n, im in zip(which, rgb):
                recs[n]["erased"] = _save(im, out_dir / "zoo-itd" / f"{recs[n]['key']}.png")
    pool = {"setting": setting, "records": recs, "generation_seconds": time.perf_counter() - t0}
    atomic_write_bytes(stamp, json.dumps(pool).encode())
    return pool


def plant_records(pool: dict, copy_classes: Sequence[str], noise: float = 2.0, seed: int = 0) -> tuple[list[dict], dict]:
    """The JSONL records of ``visionsae audit`` for every plant of one seed's pool, one
    generator name per plant: ``plain`` (draw 0 of every caption), ``omit-C`` (class C's
    captions drawn as the next class: its images are that class's second draws), ``itd-C``
    (class C's captions answered by the pipeline erasing C), ``exag-C`` (class C's captions drawn
    ``factor`` times) and ``copies`` (plain, with the first caption of each class in
    ``copy_classes`` answered by its real image plus faint noise). Returns (records, truth)."""
    from PIL import Image

    recs = pool["records"]
    names = sorted({r["group"] for r in recs})
    by_key = {r["key"]: r for r in recs}
    rng = np.random.default_rng(seed)
    copies = {}
    for c in copy_classes:
        r = next(r for r in recs if r["group"] == c)
        real_rgb = np.asarray(Image.open(r["real"]).convert("RGB")).astype(np.float64)
        path = Path(r["real"]).parents[1] / "copies" / f"{r['key']}-noise{noise:g}-seed{seed}.png"
        rgb = (real_rgb + rng.normal(0, noise, real_rgb.shape[:2] + (1,))).round().clip(0, 255).astype(np.uint8)
        # written once: a rewrite (same pixels, new file) would make a resumed audit's store refuse it
        copies[r["key"]] = str(path) if path.exists() else _save(rgb, path)
    out = []
    for r in recs:
        g = r["group"]
        sub = names[(names.index(g) + 1) % len(names)]
        gen = {"plain": r["draws"][0], "copies": copies.get(r["key"], r["draws"][0])}
        for c in names:
            if g == c:
                gen[f"omit-{c}"] = by_key[f"{sub}-{r['key'].rsplit('-', 1)[1]}"]["draws"][1]
                gen[f"exag-{c}"] = list(r["draws"])
                if "erased" in r:
                    gen[f"itd-{c}"] = r["erased"]
            else:
                gen[f"omit-{c}"] = gen[f"exag-{c}"] = r["draws"][0]
                if "erased" in r:
                    gen[f"itd-{c}"] = r["draws"][0]
        out.append({"caption": r["caption"], "group": g, "real": r["real"], "generated": gen})
    copy_rows = [i for i, r in enumerate(recs) if r["key"] in copies]  # generated ids in `copies` (one image per caption)
    return out, {"classes": names, "copies_generated_ids": copy_rows, "copy_classes": list(copy_classes)}


def owners(group_energy: dict[str, list[float]], purity: float = 0.5) -> list[str | None]:
    """Per concept, the group holding at least ``purity`` of its energy (None: no such group)."""
    names = sorted(group_energy)
    g = torch.tensor([group_energy[n] for n in names])
    share = g / g.sum(0).clamp_min(1e-12)
    s, o = share.max(0)
    return [names[int(i)] if float(v) >= purity else None for v, i in zip(s, o)]


def plant_rank(order: Sequence[int], owner: Sequence[str | None], cls: str) -> int | None:
    """Rank (1 = top) of the first concept owned by ``cls`` in ``order``."""
    return next((i + 1 for i, k in enumerate(order) if owner[k] == cls), None)


def _summary(ranks: list[int | None], top: int = 3) -> dict:
    rs = [r if r is not None else math.inf for r in ranks]
    med = float(np.median(rs)) if rs else None
    return {"ranks": ranks, "median": med, "worst": None if not rs or math.isinf(max(rs)) else max(rs),
            f"in_top{top}": sum(r <= top for r in rs), "plants": len(rs)}


DEV_SEEDS = (0,)  # the seeds whose plants chose the ranking statistic and the audit's defaults


def pooled_ranks(seeds: dict[str, dict]) -> dict[str, dict]:
    """Per kind of plant, the summary over every seed and over the test seeds alone (not in
    :data:`DEV_SEEDS`)."""
    pooled = {}
    for kind in ("omit", "itd", "exag"):
        rs = {s: [p["rank"] for n, p in v["plants"].items() if n.startswith(kind + "-")] for s, v in seeds.items()}
        test = [r for s, v in rs.items() if int(s) not in DEV_SEEDS for r in v]
        if any(rs.values()):
            pooled[kind] = {"all_seeds": _summary([r for v in rs.values() for r in v]),
                            "test_seeds": _summary(test) if test else None}
    return pooled


def _plant_ranks(result, truth: dict) -> dict[str, dict]:
    """Per plant of one rotation seed: the rank of the planted class's first concept in the
    suppressed (omitted, ItD-erased) or exaggerated ranking, and by the whole set's gap."""
    from ..audit.inputs import _set_name

    own_real = owners(result.groups["real"])
    own_plain = owners(result.groups["plain"])  # what the generator's own images of each class hold
    plants: dict[str, dict] = {}
    class_of = {_set_name(c): c for c in truth["classes"]}  # set names spell "ankle boot" as ankle-boot
    for name, table in result.concepts.items():
        kind, _, cls = name.partition("-")
        cls = class_of.get(cls, cls)
        if kind in ("omit", "itd"):
            plants[name] = {"class": cls, "side": "suppressed",
                            "rank": plant_rank(table["rank_suppressed"], own_real, cls),
                            "rank_by_gap": plant_rank(table["rank_suppressed_by_gap"], own_real, cls),
                            "top3_groups": [table["group_suppressed"][k] for k in table["rank_suppressed"][:3]]}
        elif kind == "exag":
            plants[name] = {"class": cls, "side": "exaggerated",
                            "rank": plant_rank(table["rank_exaggerated"], own_plain, cls),
                            "rank_by_gap": plant_rank(table["rank_exaggerated_by_gap"], own_plain, cls),
                            "rank_owner_in_real": plant_rank(table["rank_exaggerated"], own_real, cls),
                            "top3_groups": [table["group_exaggerated"][k] for k in table["rank_exaggerated"][:3]]}
    return plants


def rotation(out_dir: str | Path = "runs/eval-audit-rotation", per_class: int = 20, seeds: Sequence[int] = (0, 1, 2),
             *, factor: int = 3, itd: bool = True, copy_classes: Sequence[str] | None = None,
             cfg=None, resolution: int = RESOLUTION, batch: int = 32, progress: bool = True) -> dict[str, Any]:
    """Every class in turn suppressed (by omission and, with ``itd``, by ItD erasure) and
    exaggerated, and copies of ``copy_classes`` (default: every class), per seed; the audit run as ``visionsae audit
    --jsonl`` runs it (the same reader and defaults) on the plants' JSONL. Returns (and writes
    to ``eval-audit-rotation.json``) per plant the rank of the planted class's first concept,
    and per kind of plant and seed the median and worst rank."""
    from ..audit import AuditConfig, run_audit
    from ..audit.inputs import read_jsonl, write_jsonl
    from ..audit.memorisation import ratios_of
    from ..zoo import CLASS_NAMES

    copy_classes = list(CLASS_NAMES) if copy_classes is None else list(copy_classes)
    out = Path(out_dir)
    cfg = cfg or AuditConfig(progress=progress)
    source = efficientnet_source(resolution)
    report: dict[str, Any] = {
        "split": "test: plants, classes and seeds chose nothing here; the ranking statistic and the defaults were "
                 "chosen on seed 0 at 20 images per class (dev), so only seeds other than 0 are out of sample",
        "setting": {"per_class": per_class, "seeds": list(seeds), "factor": factor, "itd": itd,
                    "copy_classes": list(copy_classes), "backbone": f"efficientnet-lite0 {HOOK} @ {resolution}px",
                    "audit": cfg.to_dict()},
        "seeds": {},
    }
    for seed in seeds:
        t0 = time.perf_counter()
        pool = _pool(out / f"seed{seed}" / "images", per_class, seed, factor, itd, batch, progress)
        records, truth = plant_records(pool, copy_classes, seed=seed)
        jsonl = write_jsonl(records, out / f"seed{seed}" / "pairs.jsonl")
        real, generated = read_jsonl(jsonl)
        t1 = time.perf_counter()
        result = run_audit(source, real, generated, out / f"seed{seed}" / "audit",
                           cfg=AuditConfig(**{**cfg.to_dict(), "seed": seed}))
        audit_seconds = time.perf_counter() - t1
        plants = _plant_ranks(result, truth)
        mem = result.memorisation["copies"]
        want = set(truth["copies_generated_ids"])
        top = [c["generated"] for c in mem["candidates"][: len(want)]]
        flagged = [c["generated"] for c in mem["candidates"] if c["flagged"]]
        # every generator's flags but the copies' (a plain image shared by several plants counts once per plant)
        false_flags = sum(m["flagged"] for m in result.memorisation.values()) - sum(g in want for g in flagged)
        gen_images = sum(len(g.items) for g in generated)
        kinds = {}
        for kind in ("omit", "itd", "exag"):
            rs = [p["rank"] for n, p in plants.items() if n.startswith(kind + "-")]
            if rs:
                kinds[kind] = {**_summary(rs), "by_gap": _summary([p["rank_by_gap"] for n, p in plants.items()
                                                                   if n.startswith(kind + "-")])}
        report["seeds"][str(seed)] = {
            "split": "dev" if seed in DEV_SEEDS else "test",
            "plants": plants,
            "summary": kinds,
            "copies": {"classes": truth["copy_classes"], "all_top_candidates": set(top) == want,
                       "flagged": sum(g in want for g in flagged), "of": len(want),
                       "false_flags": false_flags, "generated_images": gen_images,
                       "false_flags_per_1000": 1000 * false_flags / gen_images,
                       "ratios": ratios_of(mem, want)},
            "seconds": {"generation": pool.get("generation_seconds"), "audit": audit_seconds,
                        "total": time.perf_counter() - t0},
            "jsonl": str(jsonl),
            "command": f"visionsae audit --jsonl {jsonl} --model efficientnet-lite0 --seed {seed} "
                       f"--out-dir {out / f'seed{seed}' / 'audit'}",  # the same audit (with its report) from the CLI
        }
    report["pooled"] = pooled_ranks(report["seeds"])
    atomic_write_bytes(out / "eval-audit-rotation.json", json.dumps(report, indent=2).encode())
    return report
