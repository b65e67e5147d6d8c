"""visionsae's trainer against EleutherAI sparsify's and SAELens's, run in alternation on this machine.

The machine this project is measured on is shared, and its speed drifts by 10-20% from
minute to minute; two throughputs taken minutes apart cannot be compared to a few
percent. This benchmark runs the trainers back to back, ``--repeats`` rounds, each library first in
turn, each in a fresh process (``benchmarks.train_throughput`` in this environment,
``benchmarks.peer_sparsify`` and ``benchmarks.peer_saelens`` in ``.venv-peers``, each peer
at its own defaults), and reports every round's throughput ratios, their median and range,
each run's quality (FVU, recovered planted directions), peak RSS and share of the round's
FLOP floor (from the fastest matmul rates the round's runs measured) in the dtype its step
computes in, and in fp32 and bf16 both. Both time their
training loops; ours also gives ``wall_samples_per_s``, over its whole ``train_sae`` call
(set-up and the final save included).

Run: ``python -m benchmarks.train_vs_sparsify --out benchmarks/results/train_vs_sparsify.json``
(``--setting``, ``--samples``, ``--repeats``, ``--peers``, ``--n-latents``, ``--k``; creates
``.venv-peers`` on first use).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import write_json
from benchmarks.run_all import ROOT, peers_python
from benchmarks.train_throughput import SETTINGS


PEERS = {"sparsify": "benchmarks.peer_sparsify", "saelens": "benchmarks.peer_saelens"}


def _run(python: str, module: str, setting: str, samples: int, extra: list[str] = ()) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [python, "-m", module, "--setting", setting, "--samples", str(samples), "--out", str(out), *extra]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        result = json.loads(out.read_text())
    return result["results"][0] if "results" in result else result


def _summary(run: dict) -> dict:
    keys = ("samples_per_s", "step_ms", "fraction_of_pair_floor", "fraction_of_pair_floor_fp32", "fraction_of_pair_floor_bf16",
            "fvu", "recovered", "peak_rss_mb", "baseline_rss_mb", "wall_samples_per_s")
    return {key: round(run[key], 4) for key in keys if key in run}


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="default")
    parser.add_argument("--samples", type=int, default=1_024_000, help="training samples per run (default 1.024M)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of runs (default 3)")
    parser.add_argument("--peers", default="sparsify,saelens", help="comma-separated peers (default: sparsify,saelens)")
    parser.add_argument("--n-latents", type=int, default=None, help="override the setting's n_latents")
    parser.add_argument("--k", type=int, default=None, help="override the setting's k")
    parser.add_argument("--no-quality", action="store_true", help="speed and memory only")
    parser.add_argument("--out", default=None, help="JSON output file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    peers = [p for p in args.peers.split(",") if p]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        parser.error(f"unknown peers {unknown}; known: {sorted(PEERS)}")
    extra = [*(["--n-latents", str(args.n_latents)] if args.n_latents else []), *(["--k", str(args.k)] if args.k else []),
             *(["--no-quality"] if args.no_quality else [])]
    peers_py = peers_python()
    libraries = ["visionsae", *peers]
    rounds = []
    for r in range(args.repeats):
        order = libraries[r % len(libraries):] + libraries[: r % len(libraries)]  # each library first in turn
        runs = {}
        for library in order:
            if library == "visionsae":
                runs[library] = _run(sys.executable, "benchmarks.train_throughput", args.setting, args.samples, extra)
            else:
                runs[library] = _run(peers_py, PEERS[library], args.setting, args.samples, extra)
        # one floor per round, from the fastest matmul rates its runs measured, in each dtype
        floor = {dt: min(runs[lib][f"floor_step_ms_{dt}"] for lib in order) for dt in ("fp32", "bf16")}
        for lib in order:
            own = "bf16" if runs[lib].get("step_dtype") == "bfloat16" else "fp32"
            for dt in ("fp32", "bf16"):
                runs[lib][f"fraction_of_pair_floor_{dt}"] = floor[dt] / runs[lib]["step_ms"]
            runs[lib]["fraction_of_pair_floor"] = runs[lib][f"fraction_of_pair_floor_{own}"]
        ratios = {peer: runs["visionsae"]["samples_per_s"] / runs[peer]["samples_per_s"] for peer in peers}
        print(json.dumps({"round": r, "order": order, "throughput_ratio": {p: round(v, 3) for p, v in ratios.items()},
                          **{lib: _summary(runs[lib]) for lib in order}}), flush=True)
        rounds.append({"order": order, "throughput_ratio": ratios, **runs})
    report = {
        "benchmark": "train_vs_sparsify",
        "setting": {"name": args.setting, **{k: rounds[0]["visionsae"][k] for k in ("d_in", "n_latents", "k", "batch")},
                    "samples": args.samples},
        "throughput_ratio": {p: _spread([r["throughput_ratio"][p] for r in rounds]) for p in peers},
        "samples_per_s": {lib: _spread([r[lib]["samples_per_s"] for r in rounds]) for lib in libraries},
        "fraction_of_floor": {lib: _spread([r[lib]["fraction_of_pair_floor"] for r in rounds]) for lib in libraries},
        "fraction_of_floor_fp32": {lib: _spread([r[lib]["fraction_of_pair_floor_fp32"] for r in rounds]) for lib in libraries},
        "fraction_of_floor_bf16": {lib: _spread([r[lib]["fraction_of_pair_floor_bf16"] for r in rounds]) for lib in libraries},
        "peak_rss_mb": {lib: _spread([r[lib]["peak_rss_mb"] for r in rounds]) for lib in libraries},
        "rounds": rounds,
    }
    if not args.no_quality:
        report["fvu"] = {lib: _spread([r[lib]["fvu"] for r in rounds]) for lib in libraries}
        report["recovered"] = {lib: _spread([r[lib]["recovered"] for r in rounds]) for lib in libraries}
    print(json.dumps({k: report[k] for k in ("throughput_ratio", "fraction_of_floor", "peak_rss_mb")}), flush=True)
    write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
