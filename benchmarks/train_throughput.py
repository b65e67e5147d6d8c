"""Training throughput and quality of the TopK SAE on planted data, with the FLOP floor.

For each setting it trains on a fixed budget of planted samples (pre-generated, so data
generation is not timed) and reports samples/s, peak RSS, held-out FVU, L0, dead fraction
and recovery of the planted directions. Throughput and step time are those of the training
loop (the trainer's own per-window timings in its metrics log), as the peer benchmarks time
their loops; ``wall_seconds`` is the whole ``train_sae`` call, which also holds one-time
costs (building the Accelerator and the SAE, b_dec's geometric median, the optimizer, whose
first construction in a process imports ``torch._dynamo``: ~1.5 s here) and writing the final
checkpoint and SAE. In the same run it measures this machine's dense fp32 matmul rate and
reports the step time as a multiple of the FLOP floor of a TopK SAE with a dense encoder and
a sparse decoder:

    floor FLOPs per step = 2*B*d*n        (encoder matmul)
                         + 2*B*k*d * 4    (sparse encoder backward, decoder forward/backward)

Run: ``python -m benchmarks.train_throughput --out benchmarks/results/train_throughput.json``
(``--setting default`` for one setting, ``--samples`` to change the budget).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import write_json
from visionsae.eval.planted import score
from visionsae.planted import PlantedConfig, PlantedData
from visionsae.sae import SAEConfig
from visionsae.train import TrainConfig, train_sae

SETTINGS = {
    # name: (d_in, n_latents, k, batch, planted true features, mean active)
    "default": dict(d_in=512, n_latents=4096, k=32, batch=1024, n_true=2048, mean_active=16),
    "large": dict(d_in=768, n_latents=16384, k=32, batch=1024, n_true=4096, mean_active=16),
}


def matmul_rate(batch: int, d: int, n: int, reps: int = 10) -> float:
    """Dense fp32 FLOP/s of the encoder-shaped matmul on this machine, now."""
    x, w, b = torch.randn(batch, d), torch.randn(n, d), torch.zeros(n)
    torch.addmm(b, x, w.t())
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.addmm(b, x, w.t())
        best = min(best, time.perf_counter() - start)
    return 2 * batch * d * n / best


def floor_flops(batch: int, d: int, n: int, k: int) -> float:
    return 2 * batch * d * n + 4 * 2 * batch * k * d


def loop_seconds(metrics: Path, batch: int) -> float:
    """The training loop's time from the trainer's metrics log: each record covers the steps
    since the previous one at its ``samples_per_s``."""
    total, prev = 0.0, 0
    for line in metrics.read_text().splitlines():
        rec = json.loads(line)
        total += (rec["step"] - prev) * batch / rec["samples_per_s"]
        prev = rec["step"]
    if prev == 0:
        raise RuntimeError(f"{metrics} holds no records")
    return total


def planted_batches(cfg: PlantedConfig, batch: int, steps: int) -> list[torch.Tensor]:
    data = PlantedData(cfg)
    return [data.batch(i, batch) for i in range(steps)]


def run_setting(name: str, samples: int, seed: int = 0, **train_overrides) -> dict:
    s = SETTINGS[name]
    planted = PlantedConfig(d_in=s["d_in"], n_true=s["n_true"], mean_active=s["mean_active"], seed=seed)
    steps = samples // s["batch"]
    batches = planted_batches(planted, s["batch"], steps)
    sae_cfg = SAEConfig(d_in=s["d_in"], n_latents=s["n_latents"], k=s["k"])
    rate = matmul_rate(s["batch"], s["d_in"], s["n_latents"])
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(out_dir=tmp, total_samples=steps * s["batch"], seed=seed, progress=False, checkpoint_every=0, log_every=100, **train_overrides)
        start = time.perf_counter()
        sae = train_sae(sae_cfg, cfg, iter(batches))
        wall = time.perf_counter() - start
        seconds = loop_seconds(Path(tmp) / "metrics.jsonl", s["batch"])
    rate_after = matmul_rate(s["batch"], s["d_in"], s["n_latents"])
    step_time = seconds / steps
    floor_time = floor_flops(s["batch"], s["d_in"], s["n_latents"], s["k"]) / max(rate, rate_after)
    quality = score(sae, PlantedData(planted))
    return {
        "setting": name,
        **s,
        "train_samples": steps * s["batch"],
        "seconds": seconds,
        "wall_seconds": wall,
        "wall_samples_per_s": steps * s["batch"] / wall,
        "samples_per_s": steps * s["batch"] / seconds,
        "step_ms": step_time * 1e3,
        "matmul_gflops": max(rate, rate_after) / 1e9,
        "floor_step_ms": floor_time * 1e3,
        "step_over_floor": step_time / floor_time,
        "fraction_of_floor_throughput": floor_time / step_time,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **quality,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS) + ["all"], default="all")
    parser.add_argument("--samples", type=int, default=1_024_000, help="training samples per setting (default 1.024M)")
    parser.add_argument("--out", default=None, help="JSON output file")
    args = parser.parse_args(argv)
    names = sorted(SETTINGS) if args.setting == "all" else [args.setting]
    results = []
    for name in names:
        res = run_setting(name, args.samples)
        print(json.dumps(res), flush=True)
        results.append(res)
    report = {
        "benchmark": "train_throughput",
        "machine": {"cpu_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__},
        "results": results,
    }
    write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
