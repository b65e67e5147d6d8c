"""The activation store: round trips, the shuffling reader, checksums, kill + resume, ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from torch import nn

from visionsae.sources import ModuleSource, extract
from visionsae.store import (ActivationBatch, ActivationStore, CorruptShardError, ShardWriter, StoreError,
                             TokenKind, merge_rank_manifests)


def _batch(first: int, n_inputs: int, tokens: int = 3, d: int = 8, seed: int = 0) -> ActivationBatch:
    g = torch.Generator().manual_seed(seed * 1000 + first)
    n = n_inputs * tokens
    kinds = torch.tensor([TokenKind.CLS] + [TokenKind.PATCH] * (tokens - 1), dtype=torch.uint8).repeat(n_inputs)
    return ActivationBatch(
        torch.randn(n, d, generator=g),
        torch.arange(first, first + n_inputs).repeat_interleave(tokens),
        torch.arange(tokens, dtype=torch.int32).repeat(n_inputs),
        kinds,
        [{"input_id": first + i, "text": f"input {first + i}"} for i in range(n_inputs)],
    )


def _write(path, n_inputs=40, per_batch=4, shard_rows=20, **kw):
    w = ShardWriter(path, source={"test": 1}, hook="h", num_inputs=n_inputs, shard_rows=shard_rows, **kw)
    batches = []
    for i in range(0, n_inputs, per_batch):
        b = _batch(i, min(per_batch, n_inputs - i))
        batches.append(b)
        w.add(b, i + min(per_batch, n_inputs - i))
    w.close()
    return batches


def _all_rows(store: ActivationStore) -> ActivationBatch:
    parts = list(store.iter_shards())
    return ActivationBatch(torch.cat([p.acts for p in parts]), torch.cat([p.input_id for p in parts]),
                           torch.cat([p.position for p in parts]), torch.cat([p.kind for p in parts]))


@pytest.mark.parametrize("fmt", ["safetensors", "npy"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_round_trip(tmp_path, fmt, dtype):
    batches = _write(tmp_path, shard_format=fmt, dtype=dtype)
    store = ActivationStore.open(tmp_path)
    want = torch.cat([b.acts for b in batches])
    got = _all_rows(store)
    assert len(store) == 120 and store.d_in == 8 and store.num_shards == 5  # 24 rows a shard
    assert got.acts.dtype == store.dtype
    assert torch.equal(got.acts, want.to(store.dtype))
    assert torch.equal(got.input_id, torch.cat([b.input_id for b in batches]))
    assert torch.equal(got.kind, torch.cat([b.kind for b in batches]))
    assert store.input_records([0, 39])[39]["text"] == "input 39"
    first = store.manifest["shards"][0]["files"]["acts"]["file"]
    if fmt == "safetensors":  # readable by the safetensors library itself
        from safetensors.torch import load_file

        assert torch.equal(load_file(tmp_path / first)["acts"], got.acts[:24])
    elif dtype != "bfloat16":  # and by numpy
        import numpy as np

        assert np.array_equal(np.load(tmp_path / first), got.acts[:24].numpy())
    assert store.verify() == []
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert man["complete"] and man["dtype"] == dtype and all("sha256" in f for s in man["shards"] for f in s["files"].values())


def test_reader_shuffles_every_row_once_per_pass(tmp_path):
    batches = _write(tmp_path)
    store = ActivationStore.open(tmp_path)
    want = torch.cat([b.acts for b in batches])
    got = list(store.batches(16, seed=3, buffer_shards=2))
    assert [x.shape[0] for x in got] == [16] * 7 + [8]
    rows = torch.cat(got)
    assert rows.dtype == torch.float32
    # the same multiset of rows, in another order
    assert torch.equal(rows[rows[:, 0].argsort()], want[want[:, 0].argsort()])
    assert not torch.equal(rows, want)
    again = torch.cat(list(store.batches(16, seed=3, buffer_shards=2)))
    other = torch.cat(list(store.batches(16, seed=4, buffer_shards=2)))
    assert torch.equal(rows, again) and not torch.equal(rows, other)
    in_order = torch.cat(list(store.batches(50, shuffle=False)))
    assert torch.equal(in_order, want)
    assert [x.shape[0] for x in store.batches(50, drop_last=True)] == [50, 50]


def test_reader_loop_kinds_and_ranks(tmp_path):
    _write(tmp_path)
    store = ActivationStore.open(tmp_path)
    it = store.batches(32, seed=0, loop=True)
    looped = [next(it) for _ in range(10)]  # 320 rows: over two passes of 120, all full batches
    assert all(x.shape == (32, 8) for x in looped)
    all_rows = _all_rows(store)
    patches = torch.cat(list(store.batches(7, kinds="patch")))
    assert patches.shape[0] == int((all_rows.kind == TokenKind.PATCH).sum()) == 80
    cls_rows = all_rows.acts[all_rows.kind == TokenKind.CLS]
    assert not any((patches == r).all(1).any() for r in cls_rows)  # no CLS row among patch rows
    r0 = torch.cat(list(store.batches(10, rank=0, world_size=2)))
    r1 = torch.cat(list(store.batches(10, rank=1, world_size=2)))
    both = torch.cat([r0, r1])
    assert both.shape[0] == 120 and torch.unique(both, dim=0).shape[0] == 120
    with pytest.raises(StoreError, match="register"):
        next(store.batches(4, kinds="register"))
    assert store.kind_counts() == {"cls": 40, "patch": 80}


def test_flipped_byte_is_reported_by_shard(tmp_path):
    _write(tmp_path)
    store = ActivationStore.open(tmp_path)
    shard = store.manifest["shards"][2]
    path = tmp_path / shard["files"]["acts"]["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    fresh = ActivationStore.open(tmp_path)
    fresh.read_shard(1)  # the others still read
    with pytest.raises(CorruptShardError, match="shard-00-00002"):
        fresh.read_shard(2)
    with pytest.raises(CorruptShardError, match="shard-00-00002"):
        list(fresh.batches(16, shuffle=False))
    problems = fresh.verify()
    assert len(problems) == 1 and "shard-00-00002" in problems[0]
    path.write_bytes(bytes(data[:-4]))  # truncated
    with pytest.raises(CorruptShardError, match="bytes"):
        ActivationStore.open(tmp_path).read_shard(2)


def test_shard_checksums_are_zlib_crc32(tmp_path):
    # the checksum function may be ISA-L's (faster); manifests written with either, and by
    # earlier versions (zlib), must stay readable, so its values must be zlib's
    import zlib

    from visionsae.store import _crc32

    data = bytes(range(256)) * 1000 + b"tail"
    assert _crc32(data) == zlib.crc32(data)
    assert _crc32(data[100:], _crc32(data[:100])) == zlib.crc32(data)  # running checksums too
    _write(tmp_path)
    store = ActivationStore.open(tmp_path)
    for shard in store.manifest["shards"]:
        for entry in shard["files"].values():
            raw = (tmp_path / entry["file"]).read_bytes()
            assert entry["crc32"] == f"{zlib.crc32(raw) & 0xFFFFFFFF:08x}"


def test_incomplete_store_and_changed_source(tmp_path):
    w = ShardWriter(tmp_path, source={"test": 1}, hook="h", num_inputs=10, shard_rows=3)
    w.add(_batch(0, 2), 2)
    with pytest.raises(StoreError, match="not finished"):
        ActivationStore.open(tmp_path)
    assert len(ActivationStore.open(tmp_path, allow_incomplete=True)) == 6
    with pytest.raises(StoreError, match="different source"):
        ShardWriter(tmp_path, source={"test": 2}, hook="h", num_inputs=10)
    with pytest.raises(FileNotFoundError, match="not an activation store"):
        ActivationStore.open(tmp_path / "nothing")


class _Slow(nn.Module):
    """A deterministic toy model that sleeps per forward (so a kill lands mid-extraction)."""

    def __init__(self, delay: float = 0.0):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(4, 16)
        self.out = nn.Linear(16, 2)
        self.delay = delay

    def forward(self, x):
        time.sleep(self.delay)
        return self.out(torch.tanh(self.proj(x)))


def _inputs(n: int = 60) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(5, 4, generator=g) for _ in range(n)]


CHILD = """
import sys, time, torch
sys.path.insert(0, {tests!r})
from test_store import _Slow, _inputs
from visionsae.sources import ModuleSource, extract
src = ModuleSource(_Slow(delay=0.15), "proj")
extract(src, _inputs(), {out!r}, batch_size=4, shard_rows=15, progress=False, dtype="bfloat16")
"""


def test_sigkill_then_resume_gives_the_same_rows(tmp_path):
    out = tmp_path / "killed"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=os.path.dirname(__file__), out=str(out)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            m = out / "manifest.json"
            if m.exists() and len(json.loads(m.read_text())["shards"]) >= 2:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    man = json.loads((out / "manifest.json").read_text())
    assert not man["complete"] and 2 <= len(man["shards"]) < 5
    # every file present is complete: the manifest's shards verify
    assert ActivationStore.open(out, allow_incomplete=True).verify() == []
    src = ModuleSource(_Slow(), "proj")
    extract(src, _inputs(), out, batch_size=4, shard_rows=15, progress=False, dtype="bfloat16")
    ref = tmp_path / "ref"
    extract(src, _inputs(), ref, batch_size=4, shard_rows=15, progress=False, dtype="bfloat16")
    a, b = _all_rows(ActivationStore.open(out)), _all_rows(ActivationStore.open(ref))
    assert a.acts.shape == (300, 16)
    assert torch.equal(a.acts, b.acts) and torch.equal(a.input_id, b.input_id) and torch.equal(a.position, b.position)
    assert not [p for p in os.listdir(out) if ".tmp" in p]
    assert sorted(os.listdir(out)) == sorted(os.listdir(ref))


def test_ranks_write_their_own_shards_and_merge(tmp_path):
    src = ModuleSource(_Slow(), "proj")
    single = tmp_path / "single"
    extract(src, _inputs(30), single, batch_size=4, shard_rows=12, progress=False)
    multi = tmp_path / "multi"
    for rank in (1, 0):
        extract(src, _inputs(30), multi, batch_size=4, shard_rows=12, progress=False, rank=rank, world_size=2)
    names = sorted(os.listdir(multi))
    assert any(n.startswith("shard-00-") for n in names) and any(n.startswith("shard-01-") for n in names)
    a, b = _all_rows(ActivationStore.open(single)), _all_rows(ActivationStore.open(multi))
    order = b.input_id.argsort(stable=True)
    assert torch.equal(a.acts, b.acts[order]) and torch.equal(a.input_id, b.input_id[order])
    assert merge_rank_manifests(multi, 2)["rows"] == 150


TORCHRUN_CHILD = """
import sys, json
sys.path.insert(0, {tests!r})
from test_store import _Slow, _inputs
from visionsae.sources import ModuleSource, extract
m = extract(ModuleSource(_Slow(), "proj"), _inputs(30), {out!r}, batch_size=4, shard_rows=12, progress=False)
import os
with open({out!r} + ".rank" + os.environ["RANK"], "w") as f:  # not stdout: two processes would interleave
    json.dump({{"rows": m["rows"], "complete": m["complete"]}}, f)
"""


def test_two_processes_with_accelerate(tmp_path):
    """Two real processes (torchrun; accelerate's PartialState joins them over gloo) each write
    their own shards; rank 0 merges the manifest after a barrier."""
    script = tmp_path / "child.py"
    out = tmp_path / "store"
    script.write_text(TORCHRUN_CHILD.format(tests=os.path.dirname(__file__), out=str(out)))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(29500 + os.getpid() % 1000), str(script)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    for rank in (0, 1):  # both ranks return the merged manifest
        assert json.loads((tmp_path / f"store.rank{rank}").read_text()) == {"rows": 150, "complete": True}
    names = os.listdir(out)
    assert any(n.startswith("shard-01-") for n in names) and any(n.startswith("shard-00-") for n in names)
    single = tmp_path / "single"
    extract(ModuleSource(_Slow(), "proj"), _inputs(30), single, batch_size=4, shard_rows=12, progress=False)
    a, b = _all_rows(ActivationStore.open(single)), _all_rows(ActivationStore.open(out))
    assert torch.equal(a.acts, b.acts) and torch.equal(a.input_id, b.input_id)


@pytest.mark.parametrize("first,batch", [(0, 5), (3, 5), (0, 1), (2, 3), (0, 64)])  # first < batch, as for a carry
def test_sorting_within_batches_keeps_each_batch_s_rows(first, batch):
    from visionsae.store import _sort_within_batches

    rng = np.random.default_rng(first + batch)
    window_rows = 100
    order = rng.permutation(window_rows)[:83]  # a kinds filter may leave some rows out
    got = _sort_within_batches(order, window_rows, first, batch)
    bounds = [0, first] + list(range(first + batch, len(order), batch)) + [len(order)]
    for a, b in zip(bounds, bounds[1:]):
        assert list(got[a:b]) == sorted(order[a:b])


def test_a_pass_over_shards_already_mapped_starts_no_thread(tmp_path):
    import threading

    _write(tmp_path)  # 5 shards
    store = ActivationStore.open(tmp_path)
    first = torch.cat(list(store.batches(16, seed=1, buffer_shards=2)))  # maps and CRC-checks in threads
    ours = lambda: [t.name for t in threading.enumerate() if t.name.startswith("visionsae-store")]  # noqa: E731
    assert ours() == []  # the first generator's threads ended with it
    seen, batches = set(), []
    for x in store.batches(16, seed=1, buffer_shards=2):
        seen.update(ours())
        batches.append(x)
    assert seen == set() and torch.equal(torch.cat(batches), first)
    store.map_cache_bytes = 0  # nothing cached: the next windows are mapped in the background again
    seen.clear()
    for _ in store.batches(16, seed=1, buffer_shards=2):
        seen.update(ours())
    assert any(name.startswith("visionsae-store-prefetch") for name in seen)


def test_shards_stay_mapped_between_passes_within_the_budget(tmp_path, monkeypatch):
    _write(tmp_path)  # 5 shards
    store = ActivationStore.open(tmp_path)
    mapped = []
    real = ActivationStore._map_shard_files
    monkeypatch.setattr(ActivationStore, "_map_shard_files", lambda self, i, verify: mapped.append(i) or real(self, i, verify))
    first = torch.cat(list(store.batches(16, seed=1, buffer_shards=2)))
    assert sorted(mapped) == [0, 1, 2, 3, 4]  # each shard mapped (and CRC-checked) once
    second = torch.cat(list(store.batches(16, seed=1, buffer_shards=2)))
    assert len(mapped) == 5 and torch.equal(first, second)  # a new generator maps nothing again
    one_shard = sum(e["bytes"] for k, e in store.manifest["shards"][0]["files"].items() if k != "inputs")
    store.map_cache_bytes = one_shard  # room for one shard: the rest are mapped again each pass
    list(store.batches(16, seed=2, buffer_shards=2))
    assert len(mapped) > 5 and len(store._mapped) == 1
    store.map_cache_bytes = 0
    before = len(mapped)
    list(store.batches(16, seed=2, buffer_shards=2))
    assert len(mapped) - before == 5 and len(store._mapped) == 0


def test_sequential_reading_keeps_sequences_whole_and_in_order(tmp_path):
    """FAST's reader: every row (CLS included), in store order across shards, consecutive
    rows per batch; each looping pass starts again at the first row (its tail dropped);
    with ranks, each process its own shards, in order."""
    _write(tmp_path)  # 40 inputs of 3 tokens (CLS + 2 patches) in 5 shards of 24 rows
    store = ActivationStore.open(tmp_path)
    rows = _all_rows(store)
    got = list(store.batches(50, sequential=True, seed=3))  # the seed shuffles nothing here
    assert torch.equal(torch.cat(got), rows.acts) and [len(b) for b in got] == [50, 50, 20]
    assert int((rows.kind == TokenKind.CLS).sum()) == 40  # the special tokens are among them
    looped = store.batches(50, sequential=True, loop=True)
    passes = [next(looped) for _ in range(6)]  # two passes of the two full batches... and a third's start
    for i, b in enumerate(passes):
        start = (i % 2) * 50
        assert torch.equal(b, rows.acts[start : start + 50]), i
    r0 = torch.cat(list(store.batches(8, sequential=True, rank=0, world_size=2)))
    r1 = torch.cat(list(store.batches(8, sequential=True, rank=1, world_size=2)))
    shards = [store.read_shard(i).acts for i in range(store.num_shards)]
    assert torch.equal(r0, torch.cat(shards[0::2])) and torch.equal(r1, torch.cat(shards[1::2]))
