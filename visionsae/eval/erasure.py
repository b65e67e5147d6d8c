"""ItD erasure on the zoo, measured out of sample: ``visionsae eval erasure`` (JSON + PNG grids).

Every prompt comes from one family of ``visionsae.zoo.prompt_families`` (default
``evaluate``: the family that selected no feature, set no threshold and chose no strength;
``calibrate`` is where the zoo's edit strength was chosen). With the zoo's text SAE and class
concepts (``assets/zoo/fashion-text-sae``), erase one class, then three at once, and generate
every class's prompts of the family, and the erased classes' near misses, with the stock and
the ItD pipeline at the same seeds. The zoo's judge scores every image:

* the erased classes' prompts: flagged, drawn as the erased class by the stock and by the ItD
  pipeline (counted where the stock pipeline draws it), per kind of prompt (other names,
  basic forms, misspellings, descriptions without the class word, long scenes);
* the other classes' prompts and the near misses: falsely flagged, pixel-identical to the
  stock image, judge accuracy before and after;
* the classifier alone (no images) on all ten classes: recall per kind, false flags on other
  classes' prompts, near misses and generic prompts of the family;
* added latency per image (same run, alternating batches) and the SAE step's peak memory.

The JSON says which family each figure is from.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..zoo.t2i import draw as _generate, nchw  # noqa: F401 (the drawing helpers the evaluations share)
from ..errors import UsageError

DEFAULT_SETS = ("sneaker", "sneaker,bag,trouser")


def _grid(rows: list[tuple[np.ndarray, np.ndarray]], path: Path, scale: int = 3) -> None:
    from PIL import Image

    tiles = [np.concatenate([a, np.ones((a.shape[0], 2, 3)), b], axis=1) for a, b in rows]
    pad = [np.concatenate([t, np.ones((2, t.shape[1], 3))], axis=0) for t in tiles]
    img = (np.concatenate(pad, axis=0) * 255).clip(0, 255).astype(np.uint8)
    Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST).save(path)


def sae_memory_probe(n_latents: int = 1 << 19, tokens: int = 77, d_in: int = 64,
                     chunk_elements: int | None = None) -> dict[str, float]:
    """Extra memory of one ItD edit of ``tokens`` tokens with an ``n_latents`` SAE (the dense
    pre-activations would be ``tokens * n_latents * 4`` bytes), measured in a fresh process two ways:

    * ``peak_extra_mb``: the rise of the process's peak resident set during the edit (the
      kernel's high-water mark is reset just before; glibc is told to mmap every block over
      128 kB, so a large temporary shows up in the resident set instead of reusing freed heap);
    * ``largest_allocation_mb``: the largest single allocation of any op (torch profiler).

    ``chunk_elements`` overrides the SAE's inference chunk (pre-activations per chunk), e.g.
    to see what the dense path would cost.
    """
    code = f"""
import json, torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from visionsae.sae import SAEConfig, SparseAutoencoder
from visionsae.control import FeatureEdit, EditSpec
import visionsae.sae.model as model
if {chunk_elements!r} is not None:
    model._MAX_PRE_ACTS = {chunk_elements!r}

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
torch.manual_seed(0)
sae = SparseAutoencoder(SAEConfig(d_in={d_in}, n_latents={n_latents}, k=32)).eval()
m = nn.Sequential(nn.Identity())
x = torch.randn(1, {tokens}, {d_in})
edit = FeatureEdit(m, "0", sae, EditSpec(list(range(64)), tokens="all"))
with torch.no_grad(), edit:
    m(x)  # warm-up: lazily built buffers are not the edit's cost
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS high-water mark
    before = status("VmRSS:")
    m(x)
    peak = status("VmHWM:")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        m(x)
largest = max(e.self_cpu_memory_usage for e in prof.events()) / 2**20
print(json.dumps({{"peak_extra_mb": peak - before, "largest_allocation_mb": largest}}))
"""
    import os

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True, env=env)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    return {"n_latents": n_latents, "tokens": tokens, "dense_pre_acts_mb": tokens * n_latents * 4 / 2**20, **measured}


def _timed(pipe, prompts, seeds, settings) -> tuple[np.ndarray, list, float]:
    t0 = time.perf_counter()
    images, decisions = _generate(pipe, prompts, seeds, settings, batch=len(prompts))
    return images, decisions, time.perf_counter() - t0


def family_rows(family: str, per_kind: int | None = None, seed: int = 0) -> list[dict]:
    """Every positive prompt of every class in ``family`` and every near miss, as rows
    ``{"prompt", "label", "kind"}`` (near misses: ``kind="near_misses"``, ``label`` the class
    they are near). ``per_kind`` caps each class's prompts of a kind (a seeded sample)."""
    import random

    from ..zoo.captions import NUM_CLASSES
    from ..zoo.prompt_families import concept_prompts, near_miss_prompts

    rows = []
    for c in range(NUM_CLASSES):
        kinds = dict(concept_prompts(c, family), near_misses=near_miss_prompts(c, family))
        for kind, prompts in kinds.items():
            if per_kind is not None and len(prompts) > per_kind:
                prompts = random.Random(f"{seed}-{family}-{c}-{kind}").sample(prompts, per_kind)
            rows += [{"prompt": p, "label": c, "kind": kind} for p in prompts]
    return rows


def classifier_report(stock, sae, concepts, family: str, seed: int = 0, n_generic: int = 1000) -> dict:
    """The ItD classifier as the pipeline runs it (both gates), every class, no images."""
    from ..control.itd import ItDEraser
    from ..zoo.captions import CLASS_NAMES
    from ..zoo.prompt_families import KINDS, generic_prompts

    rows = family_rows(family, seed=seed)
    generic = generic_prompts(family, n_generic, seed=seed)
    prompts = [r["prompt"] for r in rows] + generic
    eraser = ItDEraser(stock.text_encoder, sae, concepts, tokenizer=stock.tokenizer)
    flags = [[d[n]["flagged"] for n in eraser.names] for d in eraser.flag(prompts)]
    flags = np.array(flags)  # [P, C] in eraser.names order == CLASS_NAMES order
    label = np.array([r["label"] for r in rows])
    kind = np.array([r["kind"] for r in rows])
    pos = np.isin(kind, KINDS)
    n = len(rows)
    out: dict = {"family": family, "per_class": {}, "recall": {}, "misses": []}
    for k in KINDS:
        m = kind == k
        out["recall"][k] = float(flags[:n][np.flatnonzero(m), label[m]].mean())
    for c, name in enumerate(CLASS_NAMES):
        own, other, near = pos & (label == c), pos & (label != c), (kind == "near_misses") & (label == c)
        out["per_class"][name] = {
            "recall": {k: float(flags[:n][own & (kind == k), c].mean()) for k in KINDS},
            "false_flags_other_classes": float(flags[:n][other, c].mean()),
            "false_flags_near_misses": float(flags[:n][near, c].mean()),
            "false_flags_generic": float(flags[n:, c].mean()),
            "near_misses_flagged": [rows[i]["prompt"] for i in np.flatnonzero(near & flags[:n, c])],
        }
        out["misses"] += [{"class": name, "kind": rows[i]["kind"], "prompt": rows[i]["prompt"]}
                          for i in np.flatnonzero(own & ~flags[:n, c])]
    per = out["per_class"].values()
    out["false_flags_other_classes"] = float(np.mean([p["false_flags_other_classes"] for p in per]))
    out["false_flags_near_misses"] = float(np.mean([p["false_flags_near_misses"] for p in per]))
    out["false_flags_generic"] = float(np.mean([p["false_flags_generic"] for p in per]))
    out["counts"] = {"prompts": n, "generic": len(generic)}
    return out


def _alternating(stock, itd, prompts, seeds, settings, batch: int, desc: str, progress: bool):
    """Stock and ItD images of ``prompts`` in batches that alternate which pipeline goes first, so
    both see the same machine load: (stock images, ItD images, ItD decisions, (stock seconds,
    ItD seconds, per-batch time ratios))."""
    from tqdm import tqdm

    stock_parts, itd_parts, decisions, ratios = [], [], [], []
    stock_seconds = itd_seconds = 0.0
    for n, i in enumerate(tqdm(range(0, len(prompts), batch), desc=desc, disable=not progress)):
        p, s = prompts[i : i + batch], seeds[i : i + batch]
        pair = {}
        for which in (("stock", "itd") if n % 2 == 0 else ("itd", "stock")):  # neither always first
            imgs, dec, sec = _timed(stock if which == "stock" else itd, p, s, settings)
            pair[which] = sec
            if which == "stock":
                stock_parts.append(imgs)
                stock_seconds += sec
            else:
                itd_parts.append(imgs)
                decisions += dec
                itd_seconds += sec
        ratios.append(pair["itd"] / pair["stock"])
    return np.concatenate(stock_parts), np.concatenate(itd_parts), decisions, (stock_seconds, itd_seconds, ratios)


def _run_figures(names, family, rows, decisions, stock_images, images, before, after, times, repeatable) -> dict:
    """One erased set's figures (judge before / after, flags, pixel identity, latency)."""
    from ..zoo import CLASS_NAMES
    from ..zoo.prompt_families import KINDS

    erased = [CLASS_NAMES.index(n) for n in names]
    prompts = [r["prompt"] for r in rows]
    stock_seconds, itd_seconds, ratios = times
    label = np.array([r["label"] for r in rows])
    kind = np.array([r["kind"] for r in rows])
    flagged = np.array([any(d[m]["flagged"] for m in names) for d in decisions])
    identical = np.array([np.array_equal(a, b) for a, b in zip(images, stock_images)])
    target = np.isin(label, erased) & np.isin(kind, KINDS)
    other = ~np.isin(label, erased) & np.isin(kind, KINDS)
    near = kind == "near_misses"
    drawn = target & (before == label)  # the stock pipeline draws the erased class
    run = {
        "erased": names, "family": family, "prompts": len(prompts),
        "target_prompts": int(target.sum()),
        "target_drawn_by_stock": float(drawn.sum() / max(1, target.sum())),
        "target_flagged": float(flagged[target].mean()),
        "target_flagged_by_kind": {k: float(flagged[target & (kind == k)].mean()) for k in KINDS},
        # of the prompts the stock pipeline draws as the erased class, how many ItD still does
        "still_drawn_as_erased": float((after[drawn] == label[drawn]).mean()) if drawn.any() else None,
        "still_drawn_as_erased_by_kind": {k: float((after[drawn & (kind == k)] == label[drawn & (kind == k)]).mean())
                                          if (drawn & (kind == k)).any() else None for k in KINDS},
        "flagged_still_drawn_as_erased": float((after[drawn & flagged] == label[drawn & flagged]).mean())
        if (drawn & flagged).any() else None,
        "erased_images_judged_as": {CLASS_NAMES[c]: int((after[drawn] == c).sum()) for c in np.unique(after[drawn])},
        "other_prompts_flagged": float(flagged[other].mean()),
        "near_misses_flagged": float(flagged[near].mean()) if near.any() else None,
        "near_misses_flagged_prompts": [prompts[i] for i in np.flatnonzero(near & flagged)],
        "other_prompts_pixel_identical": float(identical[other].mean()),
        "unflagged_prompts_pixel_identical": float(identical[~flagged].mean()) if (~flagged).any() else None,
        "other_accuracy_stock": float((before[other] == label[other]).mean()),
        "other_accuracy_erased": float((after[other] == label[other]).mean()),
        "stock_repeatable_at_same_seed": bool(repeatable),
        "stock_seconds": stock_seconds, "itd_seconds": itd_seconds,
        "added_latency": itd_seconds / stock_seconds - 1,
        "added_latency_median_batch": float(np.median(ratios)) - 1,
        "missed_target_prompts": [prompts[i] for i in np.flatnonzero(target & ~flagged)][:50],
    }
    return run


def evaluate(erase_sets: Sequence[Sequence[str]] = tuple(s.split(",") for s in DEFAULT_SETS), family: str = "evaluate",
             per_kind: int | None = None, out_dir: str | Path = "runs/eval-erasure", seed: int = 0, memory_probe: bool = True,
             mode: str | None = None, value: float | None = None, batch: int = 16, progress: bool = True) -> dict:
    """Erase each set of ``erase_sets`` in turn and measure it on ``family`` (see the module docstring).

    Stock and ItD batches alternate, so both see the same machine load; the added latency is
    the ratio of their summed times, and the median over batch pairs of their ratio.
    ``mode`` / ``value`` default to the zoo's.
    """
    from visionsae.pipelines.itd import ItDStableDiffusionPipeline

    from ..concepts import ConceptSet
    from ..sae import SparseAutoencoder
    from ..sae.io import atomic_write_bytes
    from ..zoo import CLASS_NAMES, load_fashion_judge, load_fashion_pipeline, zoo_dir
    from ..zoo.prompt_families import FAMILIES
    from ..zoo.settings import ERASE_MODE, ERASE_VALUE, TEXT_SAE_DIR as SAE_DIR

    if family not in FAMILIES:
        raise UsageError(f"unknown prompt family {family!r}; expected one of {FAMILIES}")
    mode = ERASE_MODE if mode is None else mode
    value = ERASE_VALUE if value is None else value
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stock = load_fashion_pipeline()
    judge = load_fashion_judge()
    sae = SparseAutoencoder.from_pretrained(zoo_dir() / SAE_DIR)
    concepts = ConceptSet.load(zoo_dir() / SAE_DIR / "concepts.json")
    settings = dict(stock.zoo_settings)
    stock.set_progress_bar_config(disable=True)
    _generate(stock, ["a photo of a dog", "a photo of a cat"], [0, 1], settings)  # warm-up, not timed

    report: dict = {"family": family, "split": f"every figure is from the {family!r} prompt family", "edit": {"mode": mode, "value": value},
                    "settings": settings, "runs": []}
    rows_all = family_rows(family, per_kind, seed)
    base: dict[str, np.ndarray] = {}  # prompt -> stock image (seeded by position among the rows)
    for names in erase_sets:
        names = list(names)
        erased = [CLASS_NAMES.index(n) for n in names]
        # the erased classes' near misses; every class's positive prompts
        rows = [r for r in rows_all if r["kind"] != "near_misses" or r["label"] in erased]
        prompts = [r["prompt"] for r in rows]
        seeds = [seed + rows_all.index(r) for r in rows]
        itd = ItDStableDiffusionPipeline.wrap(stock, sae, concepts, names, mode=mode, value=value)
        itd.set_progress_bar_config(disable=True)
        stock_images, images, decisions, times = _alternating(stock, itd, prompts, seeds, settings, batch,
                                                              f"erase {'+'.join(names)}", progress)
        repeatable = all(np.array_equal(base[p], im) for p, im in zip(prompts, stock_images) if p in base)
        base.update(zip(prompts, stock_images))
        before = judge.predict(nchw(stock_images)).cpu().numpy()
        after = judge.predict(nchw(images)).cpu().numpy()
        label = np.array([r["label"] for r in rows])
        kind = np.array([r["kind"] for r in rows])
        run = _run_figures(names, family, rows, decisions, stock_images, images, before, after, times, repeatable)
        run["other_accuracy_drop_points"] = 100 * (run["other_accuracy_stock"] - run["other_accuracy_erased"])
        report["runs"].append(run)
        shown = [int(np.flatnonzero((label == c) & (kind == "nouns"))[0]) for c in range(len(CLASS_NAMES))]
        _grid([(stock_images[i], images[i]) for i in shown], out_dir / f"erase_{'_'.join(names)}.png")

    report["classifier"] = classifier_report(stock, sae, concepts, family, seed)
    report["calibration"] = {"family": "calibrate", **{n: c.calibration for n, c in concepts.concepts.items()}}
    if memory_probe:
        report["sae_step_memory"] = sae_memory_probe()
    atomic_write_bytes(out_dir / "erasure.json", json.dumps(report, indent=2).encode())
    return report
