"""benchmarks.store_read: its numpy baselines do the job they are compared with, on a real store."""

import json

import numpy as np
import torch

from benchmarks.store_read import _mapped_arrays, gather_ceiling_pass, main, make_store, numpy_shuffled_pass, shuffled_plan


def test_the_shuffled_baselines_draw_batches_like_the_reader_and_read_the_stored_rows(tmp_path):
    store = make_store(tmp_path / "s", rows=24576, d_in=16, shard_rows=4096, dtype="float16", fmt="safetensors")
    assert [s["rows"] for s in store.manifest["shards"]] == [4096] * 6
    plan = shuffled_plan(store, batch_size=256, seed=0, buffer_shards=4)
    seen = []
    for batch in plan:
        assert sum(len(idx) for _, idx in batch) == 256
        assert len({j for j, _ in batch}) <= 4  # one window's shards
        for j, idx in batch:
            assert np.all(np.diff(idx) > 0)  # storage order, no row twice
            seen += [(j, int(i)) for i in idx]
    assert len(seen) == len(set(seen)) == len(plan) * 256
    assert len(plan) == (4 + 2) * 4096 // 256  # a window of 4 shards, then one of 2

    shards = [store.read_shard(i).acts.to(torch.float16).numpy() for i in range(store.num_shards)]
    arrays = _mapped_arrays(store)
    for a, s in zip(arrays, shards):
        assert np.array_equal(a, s)  # the baseline's own parsing of the files reads the stored rows
    total = numpy_shuffled_pass(arrays, plan, store.d_in)
    assert total == len(plan) * 256 * 16 * 2
    tables = [torch.from_numpy(np.array(a)) for a in arrays]
    assert gather_ceiling_pass(tables, plan, store.d_in) == total


def test_the_benchmark_writes_every_ratio(tmp_path):
    out = tmp_path / "r.json"
    assert main(["--rows", "4096", "--d-in", "32", "--shard-rows", "512", "--batch-size", "256", "--repeats", "1",
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"]
    assert [(r["format"], r["dtype"]) for r in res] == [("safetensors", "float32"), ("npy", "float32"), ("safetensors", "float16")]
    for r in res:
        for key in ("ratio_first_pass", "ratio_later_passes", "ratio_looping", "ratio_unshuffled",
                    "ratio_later_passes_vs_numpy_shuffled", "ratio_looping_vs_numpy_shuffled", "ratio_looping_vs_gather_ceiling"):
            assert r[key] > 0
