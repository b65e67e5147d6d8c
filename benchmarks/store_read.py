"""Store read throughput: ActivationStore.batches (shuffled, CRC-checked) against reading the
same shard files with numpy (np.fromfile), both from a warm page cache.

    python -m benchmarks.store_read --out store_read.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from visionsae.store import ActivationBatch, ActivationStore, ShardWriter


def make_store(path: Path, *, rows: int, d_in: int, shard_rows: int, dtype: str, fmt: str, seed: int = 0) -> ActivationStore:
    g = torch.Generator().manual_seed(seed)
    w = ShardWriter(path, source={"benchmark": "store_read"}, hook="synthetic", num_inputs=rows, dtype=dtype,
                    shard_format=fmt, shard_rows=shard_rows, overwrite=True)
    step = 4096
    for i in range(0, rows, step):
        n = min(step, rows - i)
        w.add(ActivationBatch(torch.randn(n, d_in, generator=g), torch.arange(i, i + n), torch.zeros(n, dtype=torch.int32),
                              torch.zeros(n, dtype=torch.uint8)), i + n)
    w.close()
    return ActivationStore.open(path)


def numpy_pass(store: ActivationStore) -> int:
    """Read every file of every shard with np.fromfile; returns bytes read."""
    total = 0
    for shard in store.manifest["shards"]:
        for entry in shard["files"].values():
            if entry["file"].endswith(".jsonl"):
                continue
            total += np.fromfile(store.path / entry["file"], dtype=np.uint8).nbytes
    return total


def reader_pass(store: ActivationStore, batch_size: int, seed: int, shuffle: bool = True) -> int:
    """One pass of ``store.batches``; returns the bytes of activations delivered (as stored)."""
    n = 0
    for x in store.batches(batch_size, seed=seed, shuffle=shuffle, dtype=store.dtype):
        n += x.shape[0]
    return n * store.d_in * store.dtype.itemsize


def looping_rate(store: ActivationStore, batch_size: int, seed: int, passes: int = 2) -> float:
    """Bytes/s over ``passes`` passes of one ``batches(loop=True)`` generator, as the trainer
    reads (each pass's first window is mapped while the previous pass is served), timed
    after one pass of warm-up."""
    per_pass = len(store) // batch_size
    it = store.batches(batch_size, seed=seed, loop=True, dtype=store.dtype)
    for _ in range(per_pass):
        next(it)
    n, start = 0, time.perf_counter()
    for _ in range(passes * per_pass):
        n += next(it).shape[0]
    elapsed = time.perf_counter() - start
    it.close()
    return n * store.d_in * store.dtype.itemsize / elapsed


def measure(store: ActivationStore, batch_size: int, repeats: int) -> dict:
    numpy_pass(store)  # warm the page cache
    np_rates, first, steady, sequential, looping = [], [], [], [], []
    for r in range(repeats):  # interleaved so that load from other processes hits both alike
        t = time.perf_counter(); b = numpy_pass(store); np_rates.append(b / (time.perf_counter() - t))
        reader = ActivationStore.open(store.path)  # a new reader: its first pass checks every shard's CRC-32
        t = time.perf_counter(); b = reader_pass(reader, batch_size, r); first.append(b / (time.perf_counter() - t))
        t = time.perf_counter(); b = reader_pass(reader, batch_size, r + 1); steady.append(b / (time.perf_counter() - t))
        t = time.perf_counter(); b = reader_pass(reader, batch_size, 0, False); sequential.append(b / (time.perf_counter() - t))
        looping.append(looping_rate(reader, batch_size, r + 2))
    np_med, first_med, steady_med, seq_med, loop_med = (statistics.median(v) for v in (np_rates, first, steady, sequential, looping))
    return {
        "numpy_gb_per_s": np_med / 1e9,
        "reader_first_pass_gb_per_s": first_med / 1e9,
        "reader_later_passes_gb_per_s": steady_med / 1e9,
        "ratio_first_pass": first_med / np_med,
        "ratio_later_passes": steady_med / np_med,
        "reader_looping_gb_per_s": loop_med / 1e9,
        "ratio_looping": loop_med / np_med,
        "reader_unshuffled_gb_per_s": seq_med / 1e9,
        "ratio_unshuffled": seq_med / np_med,
        "reader_rows_per_s": steady_med / (store.d_in * store.dtype.itemsize),
        "target_ratio": 0.8,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write the JSON result here (default: stdout only)")
    ap.add_argument("--rows", type=int, default=131072, help="rows in the store (default 131072)")
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--shard-rows", type=int, default=16384)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, dtype in (("safetensors", "float32"), ("npy", "float32"), ("safetensors", "float16")):
            store = make_store(Path(tmp) / f"{fmt}-{dtype}", rows=args.rows, d_in=args.d_in,
                               shard_rows=args.shard_rows, dtype=dtype, fmt=fmt)
            r = measure(store, args.batch_size, args.repeats)
            results.append({"format": fmt, "dtype": dtype, "store_mb": args.rows * args.d_in * store.dtype.itemsize / 1e6, **r})
            print(json.dumps(results[-1]))
    out = {
        "benchmark": "store_read",
        "what": "shuffled batches from ActivationStore.batches (in the stored dtype) vs np.fromfile of the same "
                "shard files; warm page cache; medians of interleaved repeats. A reader's first pass checks "
                "every shard's CRC-32 (in a prefetch thread); later passes of the same reader do not. 'looping': "
                "passes of one loop=True generator (the trainer's way: no pass starts by mapping a window).",
        "rows": args.rows, "d_in": args.d_in, "shard_rows": args.shard_rows, "batch_size": args.batch_size,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": torch.get_num_threads()},
        "results": results,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
