"""`visionsae audit` killed with SIGKILL half way through its extraction, then rerun: it resumes
(the shards written are kept) and its audit.json is the one an uninterrupted run writes."""

import json
import os
import signal
import subprocess
import sys
import time

import torch


def _tiny_dinov2(path):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    cfg = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                                    image_size=28, patch_size=7, num_register_tokens=4)
    Dinov2WithRegistersModel(cfg).eval().save_pretrained(path)
    return path


def _pairs(root, n=32):
    """n real Fashion-MNIST test images and, as the generator's, the next n."""
    from PIL import Image

    from visionsae.zoo.data import load_fashion_mnist

    imgs, _ = load_fashion_mnist("test")
    (root / "img").mkdir()
    for i in range(2 * n):
        Image.fromarray(imgs[i].numpy()).save(root / "img" / f"{i}.png")
    lines = [{"caption": f"item {i}", "real": f"img/{i}.png", "generated": {"gen": f"img/{n + i}.png"}} for i in range(n)]
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    return root / "pairs.jsonl"


def test_kill_9_during_extraction_then_resume_gives_the_uninterrupted_audit(tmp_path):
    model = _tiny_dinov2(tmp_path / "dinov2")
    pairs = _pairs(tmp_path)

    def argv(out):
        # one image per forward and per shard (21 token rows each): a kill lands between shards
        return ["audit", "--jsonl", str(pairs), "--model", str(model), "--hook", "encoder.layer.1", "--out-dir", str(out),
                "--batch-size", "1", "--shard-rows", "21", "--sae-latents", "32", "--sae-k", "4", "--sae-samples", "20000",
                "--sae-batch", "256", "--bootstrap", "50", "--min-support", "2", "--no-progress"]

    from visionsae.cli import main

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(argv(whole)) == 0
    # the child does the same arithmetic as this process (same thread count)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "visionsae.cli", *argv(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    manifest = killed / "stores" / "gen" / "manifest.json"
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None, "the audit ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline
            try:
                m = json.loads(manifest.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                m = None
            if m and len(m["shards"]) >= 3:
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    m = json.loads(manifest.read_text())
    assert not m["complete"] and 3 <= len(m["shards"]) < 32 and not (killed / "audit.json").exists()
    kept = {s["name"]: s["files"] for s in m["shards"]}

    def stamps():  # a shard written again would be a new file (written to a temporary name, renamed)
        return {f["file"]: (lambda st: (st.st_ino, st.st_mtime_ns))((killed / "stores" / "gen" / f["file"]).stat())
                for files in kept.values() for f in files.values()}

    before = stamps()

    assert main(argv(killed)) == 0
    resumed = json.loads((killed / "stores" / "gen" / "manifest.json").read_text())
    assert {s["name"]: s["files"] for s in resumed["shards"][: len(kept)]} == kept
    assert stamps() == before  # resumed, not redone

    def figures(out):
        audit = json.loads((out / "audit.json").read_text())
        for s in audit["sets"].values():
            s.pop("store")  # the one path that differs
        return audit

    assert figures(killed) == figures(whole)
    stock = (whole / "report.html").read_text().replace(str(whole), "OUT")
    assert (killed / "report.html").read_text().replace(str(killed), "OUT") == stock
