"""The peer baselines run at the peers' own defaults, checked against the installed libraries.

The peers (eai-sparsify, SAELens) live in ``.venv-peers``, which ``make bench`` creates; the
project's environment (and CI) does not install them, so the checks run there as a
subprocess and are skipped where that environment does not exist. ``make bench`` runs the
same checks before it runs the peers' benchmarks (``benchmarks.run_all``).
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / ".venv-peers" / "bin" / "python"


def _check(module: str) -> dict:
    if not PEERS.exists():
        pytest.skip("the peers' environment .venv-peers is not there (make bench creates it)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(PEERS), "-m", module, "--check"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sparsify_baseline_is_its_trainer_at_its_defaults():
    # its TrainConfig untouched but for the SAE's size; the benchmark's step reproduces the
    # weights of sparsify's own Trainer.fit() bit for bit (checked inside --check)
    got = _check("benchmarks.peer_sparsify")
    assert got["steps_compared"] > 0 and {"optimizer", "lr", "lr_warmup_steps", "auxk_alpha"} <= set(got["sparsify_defaults_kept"])
    assert got["optimizer"] == "ScheduleFreeWrapper(SignSGD)" and got["lr_schedulers"] == []  # 1.3.3's "signum" default


def test_saelens_baseline_is_its_trainer_at_its_defaults():
    got = _check("benchmarks.peer_saelens")
    assert got["optimizer"] == "Adam" and "rescale_acts_by_decoder_norm" in got["sae_defaults_kept"]
