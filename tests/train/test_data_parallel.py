"""Data-parallel training on two real CPU processes (torchrun, gloo): each process reads its
own half of the store, the replicas agree bit for bit (TopK through `visionsae train`,
BatchTopK, GBA), and a crashed run resumed under data parallel reaches the uninterrupted
one's weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from visionsae.planted import PlantedConfig, PlantedData
from visionsae.store import ActivationBatch, ActivationStore, ShardWriter

D_IN, SHARDS, SHARD_ROWS, BATCH = 32, 4, 512, 64

SCRIPT = r"""
import sys, torch
from accelerate import Accelerator
from safetensors.torch import save_file
from visionsae.cli import main
from visionsae.sae import SAEConfig
from visionsae.store import ActivationStore
from visionsae.train import TrainConfig, Trainer

store_dir, out = sys.argv[1], sys.argv[2]
acc = Accelerator(cpu=True)
rank = acc.process_index
store = ActivationStore.open(store_dir)
real_batches = ActivationStore.batches
seen = []


def spy(self, *args, **kwargs):  # the store's own reader; the rows it hands this process are kept
    for b in real_batches(self, *args, **kwargs):
        seen.append(b.clone())
        yield b


def save(name, sae=None):
    state = {"rows_read": torch.cat(seen)}
    if sae is not None:
        state |= {k: v.contiguous() for k, v in sae.state_dict().items()}
    save_file(state, f"{out}/{name}.rank{rank}.safetensors")
    seen.clear()


one_pass = len(store)  # rows of the whole store: each process is to read its half, once
# TopK through the command line, as `torchrun ... -m visionsae train --store` runs it
ActivationStore.batches = spy
assert main(["train", "--store", store_dir, "--n-latents", "128", "--k", "4", "--batch-size", "64",
             "--out-dir", f"{out}/cli", "--total-samples", str(one_pass), "--no-progress",
             "--checkpoint-every", "0", "--log-every", "4"]) == 0
save("cli")

cfg = TrainConfig(total_samples=one_pass, log_every=4, checkpoint_every=4, progress=False, dead_after_samples=512)
own_part = lambda r, w: store.batches(64, seed=1, loop=True, rank=r, world_size=w)
for rule, extra in [("topk", {}), ("batchtopk", {}), ("gba", {"gba_groups": 4})]:
    sae_cfg = SAEConfig(d_in=32, n_latents=128, k=4, sparsity=rule, **extra)
    save(rule, Trainer(sae_cfg, cfg.replace(out_dir=f"{out}/{rule}"), accelerator=acc).fit(own_part))
ActivationStore.batches = real_batches


class Crash(Exception):
    reason = "the planted failure of the first run"


def crashing(r, w):
    for i, b in enumerate(own_part(r, w)):
        if i == 10:
            raise Crash
        yield b


sae_cfg = SAEConfig(d_in=32, n_latents=128, k=4, sparsity="batchtopk")
crashed = False
try:
    Trainer(sae_cfg, cfg.replace(out_dir=f"{out}/resumed"), accelerator=acc).fit(crashing)
except Crash:
    crashed = True
if not crashed:
    raise SystemExit("the crash did not happen")
acc.wait_for_everyone()
seen.append(torch.empty(0, 32))
save("resumed", Trainer(sae_cfg, cfg.replace(out_dir=f"{out}/resumed", resume=True), accelerator=acc).fit(own_part))
acc.wait_for_everyone()
torch.distributed.destroy_process_group()  # the script started the group: it ends it (PyTorch's shutdown rule)
"""


def _store(path: Path) -> ActivationStore:
    data = PlantedData(PlantedConfig(d_in=D_IN, n_true=64, mean_active=3))
    writer = ShardWriter(path, source={"planted": True}, hook="planted", num_inputs=SHARDS * SHARD_ROWS, shard_rows=SHARD_ROWS)
    for s in range(SHARDS):
        acts = data.batch(s, SHARD_ROWS)
        ids = torch.arange(s * SHARD_ROWS, (s + 1) * SHARD_ROWS)
        writer.add(ActivationBatch(acts, ids, torch.zeros(SHARD_ROWS, dtype=torch.int32), torch.zeros(SHARD_ROWS, dtype=torch.uint8)),
                   int(ids[-1]) + 1)
    writer.close()
    return ActivationStore.open(path)


def _rows(t: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in t}


def test_two_processes_read_disjoint_halves_and_keep_identical_replicas(tmp_path):
    store = _store(tmp_path / "store")
    every_row = _rows(torch.cat([store.read_shard(i).acts for i in range(store.num_shards)]))
    assert len(every_row) == len(store) == SHARDS * SHARD_ROWS
    script = tmp_path / "dp.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
         str(29100 + os.getpid() % 1000), str(script), str(tmp_path / "store"), str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in ("cli", "topk", "batchtopk", "gba"):
        r0, r1 = (load_file(str(tmp_path / f"{name}.rank{r}.safetensors")) for r in (0, 1))
        read0, read1 = _rows(r0.pop("rows_read")), _rows(r1.pop("rows_read"))
        # each process read its own half of the rows, once; together, every row
        assert len(read0) == len(read1) == len(store) // 2, name
        assert not read0 & read1 and read0 | read1 == every_row, name
        assert set(r0) == set(r1)
        for key in r0:  # the replicas agree bit for bit
            assert torch.equal(r0[key], r1[key]), f"{name}: {key} differs between the ranks"
    last = json.loads((tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["samples"] == len(store) and last["step"] == len(store) // (2 * BATCH)
    gba = load_file(str(tmp_path / "gba.rank0.safetensors"))
    assert gba["b_enc"].abs().sum() > 0  # the adapted biases moved (and moved alike on both ranks)
    assert torch.isfinite(load_file(str(tmp_path / "batchtopk.rank0.safetensors"))["rule.threshold"])

    # the run crashed at its 11th batch and resumed from the checkpoint of step 8 ends where
    # the uninterrupted run ended, bit for bit
    whole = load_file(str(tmp_path / "batchtopk.rank0.safetensors"))
    for r in (0, 1):
        resumed = load_file(str(tmp_path / f"resumed.rank{r}.safetensors"))
        for key in whole:
            if key != "rows_read":
                assert torch.equal(resumed[key], whole[key]), f"resumed rank {r}: {key} differs"
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 8, 12, 16]


def test_the_train_command_under_torchrun_ends_its_process_group(tmp_path):
    # `visionsae train` under torchrun, as a user runs it: both processes finish with exit status 0,
    # and the process group the command started is destroyed before the interpreter exits
    # (PyTorch's shutdown rule: gloo's threads left to interpreter exit may abort a finished run)
    script = tmp_path / "train.py"
    script.write_text(
        "import os, sys\nimport torch.distributed as dist\nfrom visionsae.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        # one file per rank: torchrun merges the processes' stdout, whose lines can interleave
        f"open(os.path.join({str(tmp_path)!r}, 'left.' + os.environ['RANK']), 'w').write(str(dist.is_initialized()))\n"
        "sys.exit(rc)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
         str(30100 + os.getpid() % 1000), str(script), "train", "--planted", "--d-in", "32", "--n-latents", "64",
         "--k", "4", "--batch-size", "64", "--total-samples", "2048", "--out-dir", str(tmp_path / "run"), "--no-progress",
         "--checkpoint-every", "0"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    left = {r: (tmp_path / f"left.{r}").read_text() for r in ("0", "1")}
    assert left == {"0": "False", "1": "False"}, left  # no process group left on either rank
    assert (tmp_path / "run" / "sae" / "sae.safetensors").exists()
