"""The trainer: metrics, checkpoints, resume, bad input, data-parallel."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from visionsae.eval.planted import score
from visionsae.planted import PlantedConfig, PlantedData
from visionsae.sae import SAEConfig, SparseAutoencoder
from visionsae.sae.sparsity import RULES
from visionsae.train import TrainConfig, Trainer, TrainingError, train_sae

SMALL = PlantedConfig(d_in=32, n_true=64, mean_active=3)
SAE_CFG = SAEConfig(d_in=32, n_latents=128, k=4)


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(out_dir=str(tmp_path), total_samples=40 * 256, log_every=10, checkpoint_every=10, progress=False, dead_after_samples=2000)
    return TrainConfig(**{**base, **kw})


def test_metrics_and_final_sae(tmp_path):
    data = PlantedData(SMALL)
    sae = train_sae(SAE_CFG, _cfg(tmp_path), data.batches(256))
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [10, 20, 30, 40]
    assert {"fvu", "l0", "dead_fraction", "aux_loss", "lr", "samples_per_s"} <= set(lines[0])
    assert lines[-1]["fvu"] < lines[0]["fvu"]
    assert lines[-1]["l0"] <= 4
    assert lines[-1]["samples"] == 40 * 256
    saved = SparseAutoencoder.from_pretrained(tmp_path / "sae")
    x = data.batch(999, 64)
    torch.testing.assert_close(saved.decode(saved.encode(x)), sae.decode(sae.encode(x)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch", [64, 256])
def test_default_learning_rate_grows_with_the_square_root_of_the_batch(batch, tmp_path):
    data = PlantedData(SMALL)
    cfg = _cfg(tmp_path, total_samples=12 * batch, warmup_steps=2, schedule="constant", log_every=12)
    train_sae(SAE_CFG, cfg, data.batches(batch))
    (line,) = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # 128 latents at batch 256 -> 2e-3 * sqrt(4096 / 128); a quarter of the batch, half the rate
    expected = 2e-3 * (4096 / 128) ** 0.5 * (batch / 256) ** 0.5
    assert line["lr"] == pytest.approx(expected)
    resolved = json.loads((tmp_path / "train_cfg.json").read_text())["resolved"]
    assert resolved["lr"] == pytest.approx(expected) and resolved["batch_rows"] == batch


def test_choosing_latents_in_bfloat16_trains_as_well_as_exact_choice(tmp_path):
    # the cheap choosing matmul changes only near-ties: the same quality on planted data,
    # on average over seeds (one run's recovery moves by a few directions either way)
    data = PlantedData(PlantedConfig(d_in=64, n_true=128, mean_active=4))
    scores = {"same": [], "bfloat16": []}
    for seed in range(3):
        for choice in scores:
            out = tmp_path / f"{choice}-{seed}"
            cfg = _cfg(out, total_samples=150 * 512, checkpoint_every=0, log_every=50, select_dtype=choice, seed=seed)
            sae = train_sae(SAEConfig(d_in=64, n_latents=256, k=6), cfg, data.batches(512))
            assert not hasattr(sae, "select_dtype")  # the returned SAE chooses exactly: the dtype is the trainer's
            scores[choice].append(score(sae, data, n_batches=2))
            resolved = json.loads((out / "train_cfg.json").read_text())["resolved"]
            assert resolved["select_dtype"] == ("float32" if choice == "same" else "bfloat16")
    mean = {c: {m: sum(r[m] for r in runs) / len(runs) for m in ("fvu", "recovered")} for c, runs in scores.items()}
    assert mean["bfloat16"]["fvu"] <= mean["same"]["fvu"] * 1.05, mean
    assert mean["bfloat16"]["recovered"] >= mean["same"]["recovered"] - 0.05, mean
    assert mean["same"]["recovered"] >= 0.8, mean


class Crash(Exception):
    """A simulated crash of the training process."""


def _crashing(batches, at: int):
    for i, b in enumerate(batches):
        if i == at:
            raise Crash(f"killed at batch {i}")
        yield b


# every rule, each with the settings it needs to train on SMALL; rules that keep state of their own
# (thresholds, usage counts, adapted biases, the variational rule's noise stream) must resume it too
RULE_SETTINGS = {"topafa": dict(afa_coefficient=1.0), "gba": dict(gba_groups=4)}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_resume_after_a_crash_is_bit_identical_to_an_uninterrupted_run(rule, tmp_path):
    data = PlantedData(SMALL)
    sae_cfg = SAE_CFG.replace(sparsity=rule, **RULE_SETTINGS.get(rule, {}))
    cfg = dict(total_samples=30 * 256, log_every=5)
    whole = train_sae(sae_cfg, _cfg(tmp_path / "whole", **cfg), data.batches(256))

    with pytest.raises(Crash):
        train_sae(sae_cfg, _cfg(tmp_path / "crashed", **cfg), _crashing(data.batches(256), at=17))
    ckpt = tmp_path / "crashed" / "checkpoint.safetensors"
    assert ckpt.exists() and not (tmp_path / "crashed" / "sae").exists()
    resumed = train_sae(sae_cfg, _cfg(tmp_path / "crashed", resume=True, **cfg), data.batches(256))
    for name, tensor in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name
    lines = (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()
    # the crashed run logged step 15 after its step-10 checkpoint; the resumed run logs it again, once
    assert [json.loads(l)["step"] for l in lines] == [5, 10, 15, 20, 25, 30]
    whole_lines = (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    for a, b in zip(lines, whole_lines):
        a, b = json.loads(a), json.loads(b)
        assert {k: v for k, v in a.items() if k != "samples_per_s"} == {k: v for k, v in b.items() if k != "samples_per_s"}


def test_nan_batch_names_the_step_and_writes_nothing_from_it(tmp_path):
    data = PlantedData(SMALL)

    def poisoned():
        for i, b in enumerate(data.batches(256)):
            if i == 15:
                b[3, 5] = float("nan")
            yield b

    with pytest.raises(TrainingError, match="batch at step 15 holds NaN or Inf in 1 of 256 rows"):
        train_sae(SAE_CFG, _cfg(tmp_path), poisoned())
    meta_step = load_file(str(tmp_path / "checkpoint.safetensors"))
    assert all(torch.isfinite(v).all() for v in meta_step.values() if v.is_floating_point())
    from safetensors import safe_open

    with safe_open(str(tmp_path / "checkpoint.safetensors"), "pt") as f:
        assert f.metadata()["step"] == "10"


def test_bad_inputs_are_refused_with_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no activation batches"):
        train_sae(SAE_CFG, _cfg(tmp_path), iter([]))
    with pytest.raises(ValueError, match=r"batch at step 0 has shape \(8, 16\); expected \[batch, 32\]"):
        train_sae(SAE_CFG, _cfg(tmp_path), iter([torch.randn(8, 16)]))
    with pytest.raises(ValueError, match="unknown schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="unknown select_dtype 'fp8'; expected one of auto, same, bfloat16, float16"):
        TrainConfig(select_dtype="fp8")


def test_resume_refuses_a_checkpoint_of_another_sae(tmp_path):
    data = PlantedData(SMALL)
    train_sae(SAE_CFG, _cfg(tmp_path, total_samples=10 * 256), data.batches(256))
    with pytest.raises(ValueError, match=r"different SAE config \(differs in k: k=4 there, 8 now\)"):
        train_sae(SAE_CFG.replace(k=8), _cfg(tmp_path, total_samples=10 * 256, resume=True), data.batches(256))


DDP_SCRIPT = r"""
import sys, torch
from accelerate import Accelerator
from safetensors.torch import save_file
from visionsae.eval.planted import score
from visionsae.planted import PlantedConfig, PlantedData
from visionsae.sae import SAEConfig
from visionsae.train import TrainConfig, Trainer
out = sys.argv[1]
acc = Accelerator(cpu=True)
data = PlantedData(PlantedConfig(d_in=32, n_true=64, mean_active=3))
cfg = TrainConfig(out_dir=out, total_samples=60 * 256, log_every=10, checkpoint_every=0, progress=False)
sae = Trainer(SAEConfig(d_in=32, n_latents=128, k=4), cfg, accelerator=acc).fit(data.batches(128))
save_file({k: v.contiguous() for k, v in sae.state_dict().items()}, f"{out}/rank{acc.process_index}.safetensors")
print("world", acc.num_processes, acc.distributed_type)
"""


def test_data_parallel_with_two_cpu_processes(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(29000 + os.getpid() % 1000), str(script), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world 2" in proc.stdout and "MULTI_CPU" in proc.stdout
    r0, r1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    for name in r0:  # DDP keeps the replicas identical
        torch.testing.assert_close(r0[name], r1[name], msg=name)
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["samples"] == 60 * 256  # two processes x 128 rows per step
    assert lines[-1]["fvu"] < lines[0]["fvu"]


@pytest.mark.parametrize("scale,clipped", [(100.0, True), (1e-3, False)])
def test_gradient_clipping_scales_only_when_the_norm_is_above_the_limit(scale, clipped):
    from accelerate import Accelerator

    from visionsae.train.trainer import _clip_grad_norm

    torch.manual_seed(0)
    sae = SparseAutoencoder(SAE_CFG)
    for p in sae.parameters():
        p.grad = torch.randn_like(p) * scale
    before = [p.grad.clone() for p in sae.parameters()]
    norm_before = float(torch.nn.utils.get_total_norm(before))
    _clip_grad_norm(Accelerator(cpu=True), sae, 1.0)
    after = [p.grad for p in sae.parameters()]
    if clipped:
        assert norm_before > 1.0
        assert float(torch.nn.utils.get_total_norm(after)) == pytest.approx(1.0, rel=1e-4)
        for a, b in zip(after, before):  # same direction
            torch.testing.assert_close(a * (norm_before / 1.0), b, rtol=1e-4, atol=1e-6)
    else:
        assert norm_before < 1.0
        assert all(torch.equal(a, b) for a, b in zip(after, before))


def test_a_latent_fires_only_where_its_value_is_non_zero():
    from visionsae.sae import SparseCode
    from visionsae.train.trainer import fired_latents

    # latent 1 is chosen twice with value 0 (a ReLU'd slot), latent 3 once with a value; 4 never
    code = SparseCode(torch.tensor([[0.5, 0.0], [0.0, -2.0]]), torch.tensor([[0, 1], [1, 3]]))
    assert fired_latents(code, 5).tolist() == [True, False, False, True, False]
