"""ItD erasure on the zoo, measured: ``visionsae eval erasure`` (JSON + a before/after PNG).

With the zoo's text SAE and class concepts (``assets/zoo/fashion-text-sae``), erase one
class, then three at once, and generate from held-out captions of every class with the
stock pipeline and the ItD pipeline at the same seeds. The zoo's judge scores every image:

* accuracy on the erased classes' prompts (should fall to <= 10%),
* accuracy on the other classes' prompts, and its drop (should be <= 3 points),
* how many non-target prompts gave pixel-identical images to the stock pipeline,
* the classifier's recall / precision on held-out templates, misspellings, descriptions
  that avoid the class word, and the class word buried in an unrelated prompt,
* added latency per image (same run), and the SAE step's peak extra memory.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

DEFAULT_SETS = ("sneaker", "sneaker,bag,trouser")


def misspell(text: str, word: str, seed: int) -> str:
    """``text`` with one typo (two adjacent letters swapped) in ``word``."""
    if word not in text or len(word) < 3:
        return text
    rng = random.Random(f"{seed}-{word}")
    i = rng.randrange(1, len(word) - 1)
    typo = word[:i - 1] + word[i] + word[i - 1] + word[i + 1:] if i > 0 else word
    return text.replace(word, typo, 1)


BURY = (
    "a sunny afternoon in the park with {} next to the bench",
    "my friend left {} on the kitchen table yesterday",
    "a busy street market where someone sells {} and fruit",
)


def probe_prompts(label: int, seed: int = 0) -> dict[str, list[str]]:
    """Held-out phrasings of class ``label`` by kind (what the classifier must catch)."""
    from ..zoo.captions import HELDOUT_DESCRIPTIONS, HELDOUT_TEMPLATES, SYNONYMS

    nouns = SYNONYMS[label]
    templates = [t.format(n) for t in HELDOUT_TEMPLATES for n in nouns[:3]]
    misspelt = []
    for t in HELDOUT_TEMPLATES[:4]:
        noun = nouns[0]
        word = max(noun.split(), key=len)
        misspelt.append(misspell(t.format(noun), word, seed))
    return {
        "heldout_templates": templates,
        "misspellings": misspelt,
        "descriptions": list(HELDOUT_DESCRIPTIONS[label]),
        "buried": [b.format(nouns[0]) for b in BURY],
    }


def _generate(pipe, prompts: Sequence[str], seeds: Sequence[int], settings: dict, batch: int = 16):
    images, decisions = [], []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i : i + batch]]
        out = pipe(list(prompts[i : i + batch]), generator=gens, output_type="np", **settings)
        images.append(out.images)
        decisions += getattr(out, "concept_decisions", [])
    return np.concatenate(images), decisions


def nchw(images: np.ndarray) -> torch.Tensor:
    """A pipeline's numpy images ``[N, H, W, C]`` as the judge's ``[N, C, H, W]`` tensor."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


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


def evaluate(erase_sets: Sequence[Sequence[str]] = tuple(s.split(",") for s in DEFAULT_SETS), per_class: int = 50,
             out_dir: str | Path = "runs/eval-erasure", seed: int = 0, memory_probe: bool = True,
             mode: str | None = None, value: float | None = None, batch: int = 16, progress: bool = True) -> dict:
    """Erase each set of ``erase_sets`` in turn and measure it (see the module docstring).

    Stock and ItD batches alternate, so both see the same machine load; the added latency
    is the ratio of their summed times, and the median over batch pairs of their ratio. ``mode`` / ``value`` default to the zoo's.
    """
    from tqdm import tqdm

    from visionsae.pipelines.itd import ItDStableDiffusionPipeline

    from ..concepts import ConceptClassifier, ConceptSet
    from ..concepts.build import score_prompts
    from ..sae import SparseAutoencoder
    from ..zoo import CLASS_NAMES, NUM_CLASSES, load_fashion_judge, load_fashion_pipeline, zoo_dir
    from ..zoo.captions import sample_prompts
    from ..zoo.text_sae import ERASE_MODE, ERASE_VALUE, SAE_DIR, text_source

    mode = ERASE_MODE if mode is None else mode
    value = ERASE_VALUE if value is None else value
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stock = load_fashion_pipeline()
    judge = load_fashion_judge()
    sae = SparseAutoencoder.from_pretrained(zoo_dir() / SAE_DIR)
    concepts = ConceptSet.load(zoo_dir() / SAE_DIR / "concepts.json")
    prompts = [p for c in range(NUM_CLASSES) for p in sample_prompts(c, per_class, "heldout", seed)]
    labels = np.repeat(np.arange(NUM_CLASSES), per_class)
    seeds = [seed + i for i in range(len(prompts))]
    settings = dict(stock.zoo_settings)
    stock.set_progress_bar_config(disable=True)
    _generate(stock, prompts[:2], seeds[:2], settings)  # warm-up, not timed

    base_images = None
    report: dict = {"per_class_prompts": per_class, "edit": {"mode": mode, "value": value}, "settings": settings,
                    "runs": []}
    for names in erase_sets:
        names = list(names)
        itd = ItDStableDiffusionPipeline.wrap(stock, sae, concepts, names, mode=mode, value=value)
        itd.set_progress_bar_config(disable=True)
        stock_parts, itd_parts, decisions = [], [], []
        stock_seconds = itd_seconds = 0.0
        batch_ratios = []  # itd / stock time of each batch pair (robust to load that comes and goes)
        starts = range(0, len(prompts), batch)
        for n, i in enumerate(tqdm(starts, desc=f"erase {'+'.join(names)}", disable=not progress)):
            p, s = prompts[i : i + batch], seeds[i : i + batch]
            # alternate which pipeline goes first, so neither always runs on a warmer cache
            order = ("stock", "itd") if n % 2 == 0 else ("itd", "stock")
            pair = {}
            for which in order:
                if which == "stock":
                    imgs, _, sec = _timed(stock, p, s, settings)
                    stock_parts.append(imgs)
                    stock_seconds += sec
                    pair["stock"] = sec
                else:
                    imgs, dec, sec = _timed(itd, p, s, settings)
                    itd_parts.append(imgs)
                    decisions += dec
                    itd_seconds += sec
                    pair["itd"] = sec
            batch_ratios.append(pair["itd"] / pair["stock"])
        stock_images, images = np.concatenate(stock_parts), np.concatenate(itd_parts)
        if base_images is None:
            base_images = stock_images
            base_pred = judge.predict(nchw(base_images)).cpu().numpy()
            report["stock_accuracy"] = float((base_pred == labels).mean())
        stock_repeatable = bool((stock_images == base_images).all())
        pred = judge.predict(nchw(images)).cpu().numpy()
        target = np.isin(labels, [CLASS_NAMES.index(n) for n in names])
        flagged = np.array([any(d[n]["flagged"] for n in names) for d in decisions])
        identical = np.array([(images[i] == base_images[i]).all() for i in range(len(prompts))])
        per_class_acc = {CLASS_NAMES[c]: {"stock": float((base_pred[labels == c] == c).mean()),
                                          "erased": float((pred[labels == c] == c).mean())} for c in range(NUM_CLASSES)}
        erased_as = {CLASS_NAMES[c]: int((pred[target] == c).sum()) for c in range(NUM_CLASSES) if (pred[target] == c).any()}
        run = {
            "erased": names,
            "target_accuracy_stock": float((base_pred[target] == labels[target]).mean()),
            "target_accuracy_erased": float((pred[target] == labels[target]).mean()),
            "target_images_judged_as": erased_as,
            "other_accuracy_stock": float((base_pred[~target] == labels[~target]).mean()),
            "other_accuracy_erased": float((pred[~target] == labels[~target]).mean()),
            "target_prompts_flagged": float(flagged[target].mean()),
            "other_prompts_flagged": float(flagged[~target].mean()),
            "other_prompts_pixel_identical": float(identical[~target].mean()),
            "unflagged_prompts_pixel_identical": float(identical[~flagged].mean()) if (~flagged).any() else None,
            "stock_repeatable_at_same_seed": stock_repeatable,
            "per_class": per_class_acc,
            "stock_seconds": stock_seconds,
            "itd_seconds": itd_seconds,
            "added_latency": itd_seconds / stock_seconds - 1,
            "added_latency_median_batch": float(np.median(batch_ratios)) - 1,
        }
        run["other_accuracy_drop_points"] = 100 * (run["other_accuracy_stock"] - run["other_accuracy_erased"])
        report["runs"].append(run)
        shown = [int(np.flatnonzero(labels == c)[0]) for c in range(NUM_CLASSES)]
        _grid([(base_images[i], images[i]) for i in shown], out_dir / f"erase_{'_'.join(names)}.png")

    # The classifier on phrasings no selection or calibration saw.
    classifier = ConceptClassifier(sae, concepts)
    src = text_source(stock)
    groups = classifier._groups
    thresholds = classifier._thresholds
    probes: dict = {}
    for c in range(NUM_CLASSES):
        for kind, ps in probe_prompts(c, seed).items():
            scores = score_prompts(sae, src, ps, groups, concepts.score)
            hit = scores >= thresholds  # [P, C]
            entry = probes.setdefault(kind, {"tp": 0, "fn": 0, "fp": 0, "prompts": 0, "examples": []})
            entry["tp"] += int(hit[:, c].sum())
            entry["fn"] += int((~hit[:, c]).sum())
            entry["fp"] += int(hit[:, [j for j in range(NUM_CLASSES) if j != c]].sum())
            entry["prompts"] += len(ps)
            if len(entry["examples"]) < 3:
                entry["examples"].append({"prompt": ps[0], "class": CLASS_NAMES[c], "flagged": [CLASS_NAMES[j] for j in hit[0].nonzero().flatten().tolist()]})
    for kind, e in probes.items():
        e["recall"] = e["tp"] / max(1, e["tp"] + e["fn"])
        e["precision"] = e["tp"] / max(1, e["tp"] + e["fp"])
    report["classifier"] = probes
    report["calibration"] = {n: c.calibration for n, c in concepts.concepts.items()}
    if memory_probe:
        report["sae_step_memory"] = sae_memory_probe()
    (out_dir / "erasure.json").write_text(json.dumps(report, indent=2))
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--erase", action="append", default=None,
                        help="comma-separated classes to erase together; repeat for several runs (default: sneaker, then sneaker,bag,trouser)")
    parser.add_argument("--per-class", type=int, default=50, help="held-out prompts per class (default: 50)")
    parser.add_argument("--out", default="runs/eval-erasure", help="folder for erasure.json and the PNG grids")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory-probe", action="store_true", help="skip the 2^19-latent memory measurement")
    parser.add_argument("--batch", type=int, default=16, help="prompts per pipeline call (default: 16)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1, as the zoo is measured)")
    from ..zoo.text_sae import add_erase_arguments

    add_erase_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..zoo import CLASS_NAMES

    torch.set_num_threads(args.threads)
    sets = [s.split(",") for s in (args.erase or DEFAULT_SETS)]
    unknown = sorted({n for s in sets for n in s} - set(CLASS_NAMES))
    if unknown:
        raise ValueError(f"unknown classes {unknown}; the zoo's classes are {list(CLASS_NAMES)}")
    report = evaluate(sets, args.per_class, args.out, args.seed, not args.no_memory_probe, args.mode, args.value,
                      args.batch)
    print(json.dumps({k: v for k, v in report.items() if k != "calibration"}, indent=2))
    return 0
