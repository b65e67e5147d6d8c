"""visionsae's trainer against EleutherAI sparsify's, run in alternation on this machine.

The machine this project is measured on is shared, and its speed drifts by 10-20% from
minute to minute; two throughputs taken minutes apart cannot be compared to a few
percent. This benchmark runs the two trainers back to back, ``--repeats`` times, in
alternating order (ours first, then theirs first, ...), each in a fresh process
(``benchmarks.train_throughput`` in this environment, ``benchmarks.peer_sparsify`` in
``.venv-peers``), and reports every pair's throughput ratio, their median, and each
run's quality (FVU, recovered planted directions) and share of the pair's FLOP floor (the
floor from the faster of the dense matmul rates the two runs measured). Both time their
training loops; ours also gives ``wall_samples_per_s``, over its whole ``train_sae`` call
(set-up and the final save included).

Run: ``python -m benchmarks.train_vs_sparsify --out benchmarks/results/train_vs_sparsify.json``
(``--setting``, ``--samples``, ``--repeats``; creates ``.venv-peers`` on first use).
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


def _run(python: str, module: str, setting: str, samples: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [python, "-m", module, "--setting", setting, "--samples", str(samples), "--out", str(out)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        result = json.loads(out.read_text())
    return result["results"][0] if "results" in result else result


def _summary(run: dict) -> dict:
    keys = ("samples_per_s", "step_ms", "fraction_of_pair_floor", "fvu", "recovered", "peak_rss_mb", "wall_samples_per_s")
    return {key: run[key] for key in keys if key in run}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="default")
    parser.add_argument("--samples", type=int, default=1_024_000, help="training samples per run (default 1.024M)")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (default 3)")
    parser.add_argument("--out", default=None, help="JSON output file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    peers = peers_python()
    pairs = []
    for r in range(args.repeats):
        order = ("visionsae", "sparsify") if r % 2 == 0 else ("sparsify", "visionsae")
        pair = {}
        for library in order:
            if library == "visionsae":
                pair[library] = _run(sys.executable, "benchmarks.train_throughput", args.setting, args.samples)
            else:
                pair[library] = _run(peers, "benchmarks.peer_sparsify", args.setting, args.samples)
        pair["throughput_ratio"] = pair["visionsae"]["samples_per_s"] / pair["sparsify"]["samples_per_s"]
        # one floor per pair, from the faster of the matmul rates the two runs measured
        floor_ms = min(pair[lib]["floor_step_ms"] for lib in order)
        for lib in order:
            pair[lib]["fraction_of_pair_floor"] = floor_ms / pair[lib]["step_ms"]
        print(json.dumps({"repeat": r, "order": order, "throughput_ratio": round(pair["throughput_ratio"], 3),
                          **{lib: _summary(pair[lib]) for lib in order}}), flush=True)
        pairs.append(pair)
    report = {
        "benchmark": "train_vs_sparsify",
        "setting": {"name": args.setting, **SETTINGS[args.setting], "samples": args.samples},
        "median_throughput_ratio": statistics.median(p["throughput_ratio"] for p in pairs),
        "median_fraction_of_floor": {
            lib: statistics.median(p[lib]["fraction_of_pair_floor"] for p in pairs)
            for lib in ("visionsae", "sparsify")
        },
        "pairs": [{"throughput_ratio": p["throughput_ratio"], "visionsae": p["visionsae"], "sparsify": p["sparsify"]}
                  for p in pairs],
    }
    print(json.dumps({k: report[k] for k in ("median_throughput_ratio", "median_fraction_of_floor")}), flush=True)
    write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
