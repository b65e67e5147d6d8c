"""The cost curve of SAE training against dictionary size: visionsae and sparsify (at its own
defaults) at d_in 768, batch 1024, n_latents 4k / 16k / 64k / 2^19 (ItD's SAE on CLIP layer
8 is 768 -> 2^19, k 64), k 32 and 64.

Every (size, k) runs each library ``--repeats`` times in fresh processes, alternating which
goes first, for ``--steps`` steps (tens are enough for the step time and the peak RSS;
quality is not scored), and records step time, samples/s, peak RSS, the RSS before the SAE
existed, and the share of the FLOP floor in the step's dtype; step time and samples/s both over
all steps and over the steps after the first ("steady": the first step allocates gradients and
optimizer state, several times a later step at 2^19 latents, which a short run cannot amortise
and a long one does). A size whose runs would not
fit the memory available now (``MemAvailable``, against an estimate of both libraries'
needs) is skipped and says so. Writes the JSON and a PNG plot of step time and peak RSS
against n_latents (log-log), ranges over the repeats drawn as bars.

Run: ``python -m benchmarks.train_sweep --out benchmarks/results/train_sweep.json``
(``--sizes``, ``--ks``, ``--steps``, ``--repeats``; the plot goes beside the JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from benchmarks import write_json
from benchmarks.run_all import peers_python
from benchmarks.train_vs_sparsify import _run

D_IN, BATCH = 768, 1024
SIZES = (4096, 16384, 65536, 1 << 19)
LIBRARIES = {"visionsae": "benchmarks.train_throughput", "sparsify": "benchmarks.peer_sparsify"}


def mem_available_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def needed_gb(n_latents: int) -> float:
    """A generous estimate of one run's peak: weights, gradients and two optimizer states of
    both matrices (fp32), the batch's pre-activations, and 1 GB of process."""
    matrix = n_latents * D_IN * 4
    return (6 * matrix + BATCH * n_latents * 4) / 2**30 + 1.0


def plot(report: dict, path: Path) -> None:
    """Step time and peak RSS against n_latents, log-log, one line per library and k (PIL)."""
    from PIL import Image, ImageDraw

    points = [p for p in report["points"] if "step_ms" in p]
    if not points:
        return
    W, H, pad = 1100, 480, 70
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    colours = {("visionsae", 32): (31, 119, 180), ("visionsae", 64): (120, 170, 220),
               ("sparsify", 32): (214, 39, 40), ("sparsify", 64): (240, 140, 130)}
    panels = [("step_ms", "step time (ms)", 0), ("peak_rss_mb", "peak RSS (MB)", 1)]
    xs = sorted({p["n_latents"] for p in points})
    lx0, lx1 = math.log10(xs[0]) - 0.1, math.log10(xs[-1]) + 0.1
    for key, title, i in panels:
        x0, x1 = pad + i * (W // 2), (i + 1) * (W // 2) - 20
        y0, y1 = 40, H - pad
        values = [v for p in points for v in (p[key]["min"], p[key]["max"])]
        ly0, ly1 = math.log10(min(values)) - 0.1, math.log10(max(values)) + 0.1

        def at(x, y):
            return (x0 + (math.log10(x) - lx0) / (lx1 - lx0) * (x1 - x0),
                    y1 - (math.log10(y) - ly0) / (ly1 - ly0) * (y1 - y0))

        draw.rectangle([x0, y0, x1, y1], outline="black")
        draw.text((x0, 15), f"{title} against n_latents (d_in {D_IN}, batch {BATCH})", fill="black")
        for x in xs:
            px, _ = at(x, 10 ** ly0)
            draw.line([px, y1, px, y1 + 5], fill="black")
            draw.text((px - 18, y1 + 8), f"{x // 1024}k", fill="black")
        for e in range(math.floor(ly0), math.ceil(ly1) + 1):
            for m in (1, 2, 5):
                y = m * 10 ** e
                if ly0 <= math.log10(y) <= ly1:
                    _, py = at(xs[0], y)
                    draw.line([x0 - 5, py, x0, py], fill="black")
                    draw.text((x0 - 60, py - 6), f"{y:g}", fill="black")
        for (lib, k), colour in colours.items():
            line = sorted((p for p in points if p["library"] == lib and p["k"] == k), key=lambda p: p["n_latents"])
            if not line:
                continue
            coords = [at(p["n_latents"], p[key]["median"]) for p in line]
            if len(coords) > 1:
                draw.line(coords, fill=colour, width=2)
            for p, (px, py) in zip(line, coords):
                _, lo = at(p["n_latents"], p[key]["min"])
                _, hi = at(p["n_latents"], p[key]["max"])
                draw.line([px, lo, px, hi], fill=colour, width=1)
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        for j, ((lib, k), colour) in enumerate(colours.items()):
            ly = y0 + 10 + 16 * j
            draw.line([x0 + 10, ly + 6, x0 + 30, ly + 6], fill=colour, width=2)
            draw.text((x0 + 36, ly), f"{lib}, k {k}", fill="black")
    img.save(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated n_latents")
    parser.add_argument("--ks", default="32,64", help="comma-separated k")
    parser.add_argument("--steps", type=int, default=20, help="training steps per run (default 20)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each library per point (default 2)")
    parser.add_argument("--out", default=None, help="JSON output file (the PNG goes beside it)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    ks = [int(k) for k in args.ks.split(",") if k]
    peers = peers_python()
    points, skipped = [], []
    for n in sizes:
        for k in ks:
            need, have = needed_gb(n), mem_available_gb()
            if have < need:
                skipped.append({"n_latents": n, "k": k, "why": f"MemAvailable {have:.1f} GB < estimated {need:.1f} GB"})
                print(json.dumps(skipped[-1]), flush=True)
                continue
            runs = {lib: [] for lib in LIBRARIES}
            for r in range(args.repeats):
                order = list(LIBRARIES) if r % 2 == 0 else list(LIBRARIES)[::-1]
                for lib in order:
                    python = sys.executable if lib == "visionsae" else peers
                    runs[lib].append(_run(python, LIBRARIES[lib], "large", args.steps * BATCH,
                                          ["--n-latents", str(n), "--k", str(k), "--no-quality"]))
            for lib, rs in runs.items():
                point = {"library": lib, "n_latents": n, "k": k, "runs": len(rs), "step_dtype": rs[0]["step_dtype"]}
                for key in ("step_ms", "samples_per_s", "first_step_ms", "steady_step_ms", "steady_samples_per_s", "peak_rss_mb",
                            "baseline_rss_mb", "fraction_of_floor_throughput", "fraction_of_floor_fp32", "fraction_of_floor_bf16"):
                    vals = [x[key] for x in rs if key in x]
                    if not vals:
                        continue
                    point[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
                points.append(point)
            ours, theirs = points[-2], points[-1]
            summary = {"n_latents": n, "k": k,
                       "throughput_ratio": ours["samples_per_s"]["median"] / theirs["samples_per_s"]["median"],
                       # the steps after each run's first, which allocates gradients and optimizer state
                       "steady_throughput_ratio": (ours["steady_samples_per_s"]["median"] / theirs["steady_samples_per_s"]["median"]
                                                   if "steady_samples_per_s" in ours and "steady_samples_per_s" in theirs else None),
                       "peak_rss_mb": {"visionsae": ours["peak_rss_mb"]["median"], "sparsify": theirs["peak_rss_mb"]["median"]},
                       "fraction_of_floor": {"visionsae": ours["fraction_of_floor_throughput"]["median"],
                                             "sparsify": theirs["fraction_of_floor_throughput"]["median"]}}
            print(json.dumps(summary), flush=True)
    report = {"benchmark": "train_sweep", "d_in": D_IN, "batch": BATCH, "steps": args.steps, "repeats": args.repeats,
              "points": points, "skipped": skipped}
    write_json(args.out, report)
    if args.out:
        plot(report, Path(args.out).with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
