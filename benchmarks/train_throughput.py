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

The floor is given in the dtype the step computes in (``floor_step_ms``: the encoder matmul
at the bf16 rate where the step chooses its latents in bf16, ``select_dtype`` auto on a CPU
with native bf16; the sparse terms at the fp32 rate) and in both dtypes
(``floor_step_ms_fp32``, ``floor_step_ms_bf16``). Rates are measured on the encoder's shape
with at most 32768 latents (a 2^19-latent test matmul would itself take 3.6 GB).
``baseline_rss_mb`` is the process's RSS before the SAE exists; ``peak_rss_mb`` its peak.

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

from benchmarks import current_rss_mb, write_json
from visionsae.eval.planted import score
from visionsae.planted import PlantedConfig, PlantedData
from visionsae.sae import SAEConfig
from visionsae.train import TrainConfig, train_sae

SETTINGS = {
    # name: (d_in, n_latents, k, batch, planted true features, mean active)
    "default": dict(d_in=512, n_latents=4096, k=32, batch=1024, n_true=2048, mean_active=16),
    "large": dict(d_in=768, n_latents=16384, k=32, batch=1024, n_true=4096, mean_active=16),
}


RATE_LATENTS = 32768


def matmul_rate(batch: int, d: int, n: int, reps: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """Dense FLOP/s of the encoder-shaped matmul (at most RATE_LATENTS latents) in ``dtype`` on
    this machine, now."""
    n = min(n, RATE_LATENTS)
    x, w, b = torch.randn(batch, d, dtype=dtype), torch.randn(n, d, dtype=dtype), torch.zeros(n, dtype=dtype)
    out = torch.addmm(b, x, w.t())
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.addmm(b, x, w.t(), out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * batch * d * n / best


def floor_flops(batch: int, d: int, n: int, k: int) -> float:
    return 2 * batch * d * n + 4 * 2 * batch * k * d


def floor_seconds(batch: int, d: int, n: int, k: int, encoder_rate: float, sparse_rate: float) -> float:
    """The floor's time with the encoder matmul at ``encoder_rate`` and the sparse terms at ``sparse_rate``."""
    return 2 * batch * d * n / encoder_rate + 4 * 2 * batch * k * d / sparse_rate


def rates(batch: int, d: int, n: int) -> dict[str, float]:
    return {"float32": matmul_rate(batch, d, n), "bfloat16": matmul_rate(batch, d, n, dtype=torch.bfloat16)}


def floors(batch: int, d: int, n: int, k: int, measured: dict[str, float], step_dtype: str) -> dict[str, float]:
    """Floor step times (ms) in fp32, bf16 (encoder matmul in bf16) and the step's own dtype."""
    fp32 = floor_seconds(batch, d, n, k, measured["float32"], measured["float32"])
    bf16 = floor_seconds(batch, d, n, k, measured["bfloat16"], measured["float32"])
    return {"floor_step_ms_fp32": fp32 * 1e3, "floor_step_ms_bf16": bf16 * 1e3,
            "floor_step_ms": (bf16 if step_dtype == "bfloat16" else fp32) * 1e3, "step_dtype": step_dtype}


def setting_dict(name: str, n_latents: int | None = None, k: int | None = None) -> dict:
    """SETTINGS[name] with n_latents / k replaced where given (planted features: n_latents / 4)."""
    s = dict(SETTINGS[name])
    if n_latents is not None:
        s["n_latents"] = n_latents
        s["n_true"] = min(s["n_true"], max(64, n_latents // 4))
    if k is not None:
        s["k"] = k
    return s


PER_STEP_LOG = 64  # runs of at most this many steps log every step (the sweep's), so the first step can be told apart


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


def step_seconds(metrics: Path, batch: int) -> list[float]:
    """Per-step seconds from a metrics log written with ``log_every=1``."""
    return [batch / json.loads(line)["samples_per_s"] for line in metrics.read_text().splitlines()]


def steady_fields(step_times: list[float], batch: int) -> dict:
    """The steps after the first (which allocates the gradients and optimizer state: at 2^19
    latents several times a later step's time): their median step time and samples/s, what a
    long run sees. Empty when fewer than two steps were timed one by one."""
    if len(step_times) < 2:
        return {}
    import statistics

    later = statistics.median(step_times[1:])
    return {"first_step_ms": step_times[0] * 1e3, "steady_step_ms": later * 1e3, "steady_samples_per_s": batch / later}


def planted_batches(cfg: PlantedConfig, batch: int, steps: int) -> list[torch.Tensor]:
    data = PlantedData(cfg)
    return [data.batch(i, batch) for i in range(steps)]


def run_fields(measured: dict, floor: dict, step_time: float, peak_rss: float, baseline_rss: float) -> dict:
    """The speed, floor and memory fields every training benchmark reports (ours and the peers')."""
    return {
        "matmul_gflops": measured["float32"] / 1e9,
        "matmul_gflops_bf16": measured["bfloat16"] / 1e9,
        **floor,
        "step_over_floor": step_time / (floor["floor_step_ms"] / 1e3),
        "fraction_of_floor_throughput": floor["floor_step_ms"] / 1e3 / step_time,
        "fraction_of_floor_fp32": floor["floor_step_ms_fp32"] / 1e3 / step_time,
        "fraction_of_floor_bf16": floor["floor_step_ms_bf16"] / 1e3 / step_time,
        "peak_rss_mb": peak_rss,
        "baseline_rss_mb": baseline_rss,
    }


def add_run_arguments(parser, setting_choices: list[str], setting_default: str) -> None:
    """The flags every training benchmark takes: which setting, how many samples, size overrides."""
    parser.add_argument("--setting", choices=setting_choices, default=setting_default)
    parser.add_argument("--samples", type=int, default=1_024_000, help="training samples (default 1.024M)")
    parser.add_argument("--n-latents", type=int, default=None, help="override the setting's n_latents")
    parser.add_argument("--k", type=int, default=None, help="override the setting's k")
    parser.add_argument("--no-quality", action="store_true", help="skip the held-out scoring (speed and memory only)")


def run_setting(name: str, samples: int, seed: int = 0, setting: dict | None = None, score_quality: bool = True,
                **train_overrides) -> dict:
    s = setting or SETTINGS[name]
    planted = PlantedConfig(d_in=s["d_in"], n_true=s["n_true"], mean_active=s["mean_active"], seed=seed)
    steps = samples // s["batch"]
    batches = planted_batches(planted, s["batch"], steps)
    sae_cfg = SAEConfig(d_in=s["d_in"], n_latents=s["n_latents"], k=s["k"])
    measured = rates(s["batch"], s["d_in"], s["n_latents"])
    baseline_rss = current_rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        per_step = steps <= PER_STEP_LOG
        cfg = TrainConfig(out_dir=tmp, total_samples=steps * s["batch"], seed=seed, progress=False, checkpoint_every=0,
                          log_every=1 if per_step else min(100, max(1, steps // 2)), **train_overrides)
        start = time.perf_counter()
        sae = train_sae(sae_cfg, cfg, iter(batches))
        wall = time.perf_counter() - start
        seconds = loop_seconds(Path(tmp) / "metrics.jsonl", s["batch"])
        first_window = json.loads((Path(tmp) / "metrics.jsonl").read_text().splitlines()[0])
        steady = steady_fields(step_seconds(Path(tmp) / "metrics.jsonl", s["batch"]), s["batch"]) if per_step else {}
        step_dtype = json.loads((Path(tmp) / "train_cfg.json").read_text())["resolved"]["select_dtype"]
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del batches
    after = rates(s["batch"], s["d_in"], s["n_latents"])
    measured = {k: max(v, after[k]) for k, v in measured.items()}
    step_time = seconds / steps
    floor = floors(s["batch"], s["d_in"], s["n_latents"], s["k"], measured, step_dtype)
    quality = score(sae, PlantedData(planted)) if score_quality else {}
    return {
        "setting": name,
        **s,
        "train_samples": steps * s["batch"],
        "seconds": seconds,
        "wall_seconds": wall,
        "wall_samples_per_s": steps * s["batch"] / wall,
        "samples_per_s": steps * s["batch"] / seconds,
        "step_ms": step_time * 1e3,
        "first_window_fvu": first_window["fvu"],
        **steady,
        **run_fields(measured, floor, step_time, peak_rss, baseline_rss),
        **quality,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, sorted(SETTINGS) + ["all"], "all")
    parser.add_argument("--out", default=None, help="JSON output file")
    args = parser.parse_args(argv)
    names = sorted(SETTINGS) if args.setting == "all" else [args.setting]
    results = []
    for name in names:
        res = run_setting(name, args.samples, setting=setting_dict(name, args.n_latents, args.k),
                          score_quality=not args.no_quality)
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
