"""EleutherAI sparsify's TopK SAE on the same planted data, for a side-by-side baseline.

Runs in its own environment (``make bench`` creates ``.venv-peers`` with eai-sparsify and
this repo on the path): sparsify's ``SparseCoder`` (fused encoder, sparse decoder) with
the training step of its ``Trainer`` and its defaults for Adam (lr 2e-4 / sqrt(n / 2^14),
linear warm-up over 1000 steps then linear decay, unit-norm decoder with the parallel
gradient removed). ``--lr`` overrides the learning rate, ``--warmup`` the warm-up.

Run: ``.venv-peers/bin/python -m benchmarks.peer_sparsify --out results.json``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import torch

from benchmarks import write_json
from benchmarks.train_throughput import SETTINGS, matmul_rate, floor_flops
from visionsae.planted import PlantedConfig, PlantedData, recovery

# sparsify's Triton decoder needs a GPU driver; on a CPU its own eager fallback is the
# embedding_bag decoder (what it uses when Triton is absent).
os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")


def run(name: str, samples: int, lr: float | None, warmup: int, seed: int = 0) -> dict:
    from sparsify import SparseCoder, SparseCoderConfig
    from transformers import get_linear_schedule_with_warmup

    s = SETTINGS[name]
    planted = PlantedConfig(d_in=s["d_in"], n_true=s["n_true"], mean_active=s["mean_active"], seed=seed)
    data = PlantedData(planted)
    steps = samples // s["batch"]
    batches = [data.batch(i, s["batch"]) for i in range(steps)]
    torch.manual_seed(seed)
    sae = SparseCoder(s["d_in"], SparseCoderConfig(num_latents=s["n_latents"], k=s["k"]), device="cpu")
    # sparsify's trainer initialises b_dec to the mean of the first batch
    sae.b_dec.data = batches[0].mean(0)
    lr = lr or 2e-4 / (sae.num_latents / 2**14) ** 0.5
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    sched = get_linear_schedule_with_warmup(opt, warmup, steps)
    rate = matmul_rate(s["batch"], s["d_in"], s["n_latents"])
    start = time.perf_counter()
    for x in batches:
        out = sae(x)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        sched.step()
        sae.set_decoder_norm_to_unit_norm()
    seconds = time.perf_counter() - start
    rate = max(rate, matmul_rate(s["batch"], s["d_in"], s["n_latents"]))  # as train_throughput: the better of before/after
    floor_time = floor_flops(s["batch"], s["d_in"], s["n_latents"], s["k"]) / rate
    with torch.no_grad():
        num = den = l0 = 0.0
        for i in range(4):
            x = data.batch(10_000_000 + i, 1024)
            out = sae(x)
            num += float((x - out.sae_out).pow(2).sum())
            den += float((x - x.mean(0)).pow(2).sum())
            l0 += float((out.latent_acts > 0).sum(-1).float().mean())
    rec = recovery(sae.W_dec.detach(), data.directions)
    return {
        "library": "sparsify",
        "setting": name,
        "lr": lr,
        "warmup_steps": warmup,
        "train_samples": steps * s["batch"],
        "seconds": seconds,
        "samples_per_s": steps * s["batch"] / seconds,
        "step_ms": seconds / steps * 1e3,
        "matmul_gflops": rate / 1e9,
        "floor_step_ms": floor_time * 1e3,
        "fraction_of_floor_throughput": floor_time / (seconds / steps),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "fvu": num / den,
        "l0": l0 / 4,
        "recovered": rec["recovered"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="default")
    parser.add_argument("--samples", type=int, default=1_024_000)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    res = run(args.setting, args.samples, args.lr, args.warmup)
    print(json.dumps(res), flush=True)
    write_json(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
