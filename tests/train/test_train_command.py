"""`visionsae train` end to end through the real CLI entry point."""

import json
import subprocess
import sys

import torch

from visionsae.sae import SparseAutoencoder


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "visionsae.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_train_on_planted_data_and_resume(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--planted", "--d-in", "32", "--n-latents", "64", "--k", "4", "--batch-size", "256",
            "--total-samples", "5120", "--out-dir", str(out), "--log-every", "5", "--checkpoint-every", "10", "--no-progress"]
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary == {"sae": f"{out}/sae", "d_in": 32, "n_latents": 64, "sparsity": "topk"}
    sae = SparseAutoencoder.from_pretrained(out / "sae")
    assert sae.cfg.k == 4 and sae.cfg.extra["planted"]["d_in"] == 32
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20]
    # Resuming a finished run trains no further and keeps the weights.
    proc = _cli(*args, "--resume")
    assert proc.returncode == 0, proc.stderr
    again = SparseAutoencoder.from_pretrained(out / "sae")
    assert all((a == b).all() for a, b in zip(sae.state_dict().values(), again.state_dict().values()))


def test_bad_flags_give_one_line_errors(tmp_path):
    proc = _cli("train", "--planted", "--d-in", "32", "--n-latents", "16", "--k", "64", "--out-dir", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["visionsae: error: k=64 is larger than n_latents=16; a topk SAE keeps at most n_latents latents"]
    proc = _cli("train", "--planted", "--n-latents", "16", "--lr", "fast")
    assert proc.returncode == 2 and "--lr expects float, got 'fast'" in proc.stderr
    proc = _cli("train", "--store", str(tmp_path / "missing"), "--n-latents", "16")
    assert proc.returncode == 2 and proc.stderr.startswith("visionsae: error:") and "missing" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_kill_9_then_resume_gives_the_uninterrupted_run(tmp_path, capsys):
    """`visionsae train` killed (SIGKILL) after a checkpoint, rerun with --resume: the same SAE,
    bit for bit, and the same metrics lines as a run never stopped (a variational SAE, whose
    noise stream must resume too)."""
    import os
    import signal
    import time

    from safetensors.torch import load_file

    from visionsae.cli import main

    args = ["train", "--planted", "--d-in", "32", "--n-latents", "128", "--k", "4", "--sparsity", "variational",
            "--batch-size", "64", "--total-samples", str(300 * 64), "--log-every", "10", "--checkpoint-every", "25",
            "--no-progress"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main([*args, "--out-dir", str(whole)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the same arithmetic as this process
    proc = subprocess.Popen([sys.executable, "-m", "visionsae.cli", *args, "--out-dir", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.time() + 240
        while not (killed / "checkpoint.safetensors").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (killed / "sae").exists()  # it did not finish
    assert main([*args, "--out-dir", str(killed), "--resume"]) == 0
    a, b = load_file(str(whole / "sae" / "sae.safetensors")), load_file(str(killed / "sae" / "sae.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def lines(run):
        return [{k: v for k, v in json.loads(l).items() if k != "samples_per_s"} for l in (run / "metrics.jsonl").read_text().splitlines()]

    assert lines(killed) == lines(whole)


def test_sequential_training_reads_the_store_in_order(tmp_path, capsys):
    """`visionsae train --sequential` trains on the store's sequential batches (FAST): the
    same SAE as the Python API given `store.batches(sequential=True, loop=True)`."""
    import torch

    from visionsae.cli import main
    from visionsae.planted import PlantedConfig, PlantedData
    from visionsae.sae import SAEConfig
    from visionsae.store import ActivationBatch, ActivationStore, ShardWriter
    from visionsae.train import TrainConfig, train_sae

    data = PlantedData(PlantedConfig(d_in=16, n_true=32, mean_active=2))
    writer = ShardWriter(tmp_path / "store", source={"planted": True}, hook="h", num_inputs=60, shard_rows=200)
    for i in range(0, 60, 10):  # 60 sequences of 10 tokens (a START, then TEXT)
        kinds = torch.tensor([3] + [4] * 9, dtype=torch.uint8).repeat(10)
        writer.add(ActivationBatch(data.batch(i, 100), torch.arange(i, i + 10).repeat_interleave(10),
                                   torch.arange(10, dtype=torch.int32).repeat(10), kinds), i + 10)
    writer.close()
    args = ["train", "--store", str(tmp_path / "store"), "--n-latents", "32", "--k", "2", "--batch-size", "64",
            "--total-samples", str(64 * 12), "--no-progress", "--checkpoint-every", "0", "--select-dtype", "same"]
    assert main([*args, "--sequential", "--out-dir", str(tmp_path / "seq")]) == 0
    cli = SparseAutoencoder.from_pretrained(tmp_path / "seq" / "sae")
    assert cli.cfg.extra["order"] == "sequential"
    store = ActivationStore.open(tmp_path / "store")
    cfg = TrainConfig(out_dir=str(tmp_path / "api"), total_samples=64 * 12, progress=False, checkpoint_every=0, select_dtype="same")
    api = train_sae(SAEConfig(d_in=16, n_latents=32, k=2), cfg, store.batches(64, sequential=True, loop=True))
    api.fold_input_scale()
    assert all(torch.equal(cli.state_dict()[k], v) for k, v in api.state_dict().items())
    assert main([*args, "--out-dir", str(tmp_path / "shuffled")]) == 0
    shuffled = SparseAutoencoder.from_pretrained(tmp_path / "shuffled" / "sae")
    assert not torch.equal(shuffled.W_dec, cli.W_dec)
    capsys.readouterr()
    assert main(["train", "--planted", "--sequential", "--n-latents", "16", "--out-dir", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visionsae: error:") and "--sequential" in err and "--store" in err
