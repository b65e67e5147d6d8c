"""The throughput benchmark's loop time, read back from the trainer's metrics log."""

import time

import torch

from benchmarks.train_throughput import loop_seconds
from visionsae.sae import SAEConfig
from visionsae.train import TrainConfig, train_sae


def test_loop_seconds_cover_every_step_and_exclude_setup(tmp_path):
    batches = [torch.randn(64, 16) for _ in range(5)]
    cfg = TrainConfig(out_dir=str(tmp_path), total_samples=5 * 64, seed=0, progress=False, checkpoint_every=0, log_every=2)
    start = time.perf_counter()
    train_sae(SAEConfig(d_in=16, n_latents=64, k=4), cfg, iter(batches))
    wall = time.perf_counter() - start
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # steps 2, 4 and the last, 5
    loop = loop_seconds(tmp_path / "metrics.jsonl", 64)
    assert 0 < loop < wall


def test_per_step_times_add_up_to_the_loop_and_tell_the_first_step_apart(tmp_path):
    from benchmarks.train_throughput import steady_fields, step_seconds

    batches = [torch.randn(64, 16) for _ in range(6)]
    cfg = TrainConfig(out_dir=str(tmp_path), total_samples=6 * 64, seed=0, progress=False, checkpoint_every=0, log_every=1)
    train_sae(SAEConfig(d_in=16, n_latents=64, k=4), cfg, iter(batches))
    steps = step_seconds(tmp_path / "metrics.jsonl", 64)
    assert len(steps) == 6 and all(t > 0 for t in steps)
    assert abs(sum(steps) - loop_seconds(tmp_path / "metrics.jsonl", 64)) < 1e-9
    fields = steady_fields(steps, 64)
    later = sorted(steps[1:])
    assert fields["first_step_ms"] == steps[0] * 1e3 and fields["steady_step_ms"] == later[2] * 1e3
    assert abs(fields["steady_samples_per_s"] - 64 / later[2]) < 1e-6
    assert steady_fields(steps[:1], 64) == {}  # one step: nothing after the first
