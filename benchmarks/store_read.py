"""Store read throughput: ActivationStore.batches (shuffled, CRC-checked) against numpy, all
from a warm page cache. Two numpy baselines:

- ``numpy``: np.fromfile of every shard file in turn, i.e. reading the files sequentially
  (``ratio_*``). A shuffled reader copies rows of 1.5-3 KB from random places instead, which
  this kind of machine does at a lower rate than one long copy (see ``gather_ceiling``);
- ``numpy_shuffled``: numpy producing shuffled batches of the same shape itself (the rows of
  4 memory-mapped shards in a random permutation, each batch's rows in storage order,
  ``np.take`` into a new array per batch, the index plan made before the clock starts):
  the reader's job done with numpy (``ratio_*_vs_numpy_shuffled``).

``gather_ceiling``: torch's ``index_select`` of such batches' rows out of the mapped files into
one reused buffer, the index plan made beforehand: the row copies alone, with nothing else a
reader does (``ratio_looping_vs_gather_ceiling``).

    python -m benchmarks.store_read --out store_read.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmarks import write_json
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


def _mapped_arrays(store: ActivationStore) -> list[np.ndarray]:
    """Each shard's activations as a read-only numpy memory map (plain numpy: the .npy header or
    the safetensors header parsed here, not the reader's code)."""
    out = []
    np_dtype = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[store.manifest["dtype"]]
    for shard in store.manifest["shards"]:
        path = store.path / shard["files"]["acts"]["file"]
        if path.suffix == ".npy":
            out.append(np.load(path, mmap_mode="r"))
            continue
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            start, _ = json.loads(f.read(n))["acts"]["data_offsets"]
        out.append(np.memmap(path, np_dtype, "r", offset=8 + n + start, shape=(shard["rows"], store.d_in)))
    return out


def shuffled_plan(store: ActivationStore, batch_size: int, seed: int, buffer_shards: int = 4) -> list[list[tuple[int, np.ndarray]]]:
    """Batches as the reader draws them (shards in a random order, ``buffer_shards`` at a time,
    each window's rows in a random permutation, each batch's rows in storage order): per batch,
    (shard, sorted row indices) pairs. Leftover rows of a window are dropped (< one batch)."""
    rng = np.random.default_rng(seed)
    rows = [s["rows"] for s in store.manifest["shards"]]
    order = rng.permutation(len(rows))
    plan = []
    for w in range(0, len(order), buffer_shards):
        group = order[w : w + buffer_shards]
        starts = np.cumsum([0] + [rows[i] for i in group])
        perm = rng.permutation(int(starts[-1]))
        for b in range(0, len(perm) - batch_size + 1, batch_size):
            idx = np.sort(perm[b : b + batch_size])
            shard_of = np.searchsorted(starts, idx, side="right") - 1
            plan.append([(int(group[j]), idx[shard_of == j] - starts[j]) for j in range(len(group)) if (shard_of == j).any()])
    return plan


def numpy_shuffled_pass(arrays: list[np.ndarray], plan: list, d_in: int) -> int:
    """numpy gathering the planned batches (np.take into each batch's array); returns bytes."""
    total = 0
    for batch in plan:
        out = np.empty((sum(len(i) for _, i in batch), d_in), dtype=arrays[0].dtype)
        pos = 0
        for j, idx in batch:
            np.take(arrays[j], idx, axis=0, out=out[pos : pos + len(idx)])
            pos += len(idx)
        total += out.nbytes
    return total


def gather_ceiling_pass(tables: list[torch.Tensor], plan: list, d_in: int) -> int:
    """torch.index_select of the planned batches' rows out of the mapped files into one
    reused (already faulted-in) buffer: the copy alone; returns bytes."""
    total, buf = 0, torch.zeros((max(sum(len(i) for _, i in batch) for batch in plan), d_in), dtype=tables[0].dtype)
    for batch in plan:
        out = buf[: sum(len(i) for _, i in batch)]
        pos = 0
        for j, idx in batch:
            torch.index_select(tables[j], 0, torch.from_numpy(idx), out=out[pos : pos + len(idx)])
            pos += len(idx)
        total += out.numel() * out.element_size()
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
    arrays = _mapped_arrays(store)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only arrays as tensors: only read from
        tables = [torch.from_numpy(a.view(np.int16) if a.dtype == np.uint16 else a) for a in arrays]
    np_rates, np_shuf, ceiling, first, steady, sequential, looping = [], [], [], [], [], [], []
    for r in range(repeats):  # interleaved so that load from other processes hits all alike
        t = time.perf_counter(); b = numpy_pass(store); np_rates.append(b / (time.perf_counter() - t))
        plan = shuffled_plan(store, batch_size, seed=r)
        t = time.perf_counter(); b = numpy_shuffled_pass(arrays, plan, store.d_in); np_shuf.append(b / (time.perf_counter() - t))
        t = time.perf_counter(); b = gather_ceiling_pass(tables, plan, store.d_in); ceiling.append(b / (time.perf_counter() - t))
        reader = ActivationStore.open(store.path)  # a new reader: its first pass checks every shard's CRC-32
        t = time.perf_counter(); b = reader_pass(reader, batch_size, r); first.append(b / (time.perf_counter() - t))
        t = time.perf_counter(); b = reader_pass(reader, batch_size, r + 1); steady.append(b / (time.perf_counter() - t))
        t = time.perf_counter(); b = reader_pass(reader, batch_size, 0, False); sequential.append(b / (time.perf_counter() - t))
        looping.append(looping_rate(reader, batch_size, r + 2))
    np_med, first_med, steady_med, seq_med, loop_med = (statistics.median(v) for v in (np_rates, first, steady, sequential, looping))
    shuf_med, ceil_med = statistics.median(np_shuf), statistics.median(ceiling)
    return {
        "numpy_gb_per_s": np_med / 1e9,
        "numpy_shuffled_gb_per_s": shuf_med / 1e9,
        "gather_ceiling_gb_per_s": ceil_med / 1e9,
        "reader_first_pass_gb_per_s": first_med / 1e9,
        "reader_later_passes_gb_per_s": steady_med / 1e9,
        "ratio_first_pass": first_med / np_med,
        "ratio_later_passes": steady_med / np_med,
        "reader_looping_gb_per_s": loop_med / 1e9,
        "ratio_looping": loop_med / np_med,
        "reader_unshuffled_gb_per_s": seq_med / 1e9,
        "ratio_unshuffled": seq_med / np_med,
        "ratio_first_pass_vs_numpy_shuffled": first_med / shuf_med,
        "ratio_later_passes_vs_numpy_shuffled": steady_med / shuf_med,
        "ratio_looping_vs_numpy_shuffled": loop_med / shuf_med,
        "ratio_looping_vs_gather_ceiling": loop_med / ceil_med,
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
                "shard files (sequential) and vs numpy gathering shuffled batches of the same shape (np.take from "
                "memory maps); warm page cache; medians of interleaved repeats. A reader's first pass checks "
                "every shard's CRC-32 (in a prefetch thread); later passes of the same reader do not. 'looping': "
                "passes of one loop=True generator (the trainer's way: no pass starts by mapping a window). "
                "gather_ceiling: index_select of the rows with the index plan made beforehand (the copy alone).",
        "rows": args.rows, "d_in": args.d_in, "shard_rows": args.shard_rows, "batch_size": args.batch_size,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": torch.get_num_threads()},
        "results": results,
    }
    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
