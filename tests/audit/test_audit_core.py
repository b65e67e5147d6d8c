"""The audit's default path on a tiny random DINOv2 with registers (the transformers class of
the default backbone), through `visionsae audit --jsonl`; streaming, resuming, pairing."""

import json

import numpy as np
import pytest
import torch

from visionsae.audit import AuditConfig, ImageSet, run_audit
from visionsae.audit.core import poisson_weights, _key_hashes
from visionsae.cli import main
from visionsae.store import MANIFEST, ActivationStore


@pytest.fixture(scope="module")
def tiny_dinov2_dir(tmp_path_factory):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    cfg = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                                    image_size=28, patch_size=7, num_register_tokens=4)
    path = tmp_path_factory.mktemp("dinov2reg")
    Dinov2WithRegistersModel(cfg).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """24 real Fashion-MNIST test images as PNG files."""
    from PIL import Image

    from visionsae.zoo.data import load_fashion_mnist

    imgs, _ = load_fashion_mnist("test")
    root = tmp_path_factory.mktemp("imgs")
    paths = []
    for i in range(24):
        p = root / f"{i}.png"
        Image.fromarray(imgs[i].numpy()).save(p)
        paths.append(str(p))
    return paths


def _source(path):
    from visionsae.sources.loading import build_source, load_model

    return build_source(load_model(str(path)), "image", hook="encoder.layer.1")


SMALL = dict(sae_latents=32, sae_k=4, sae_samples=20_000, sae_batch=256, bootstrap=50, progress=False, min_support=2)


def test_cli_jsonl_on_tiny_dinov2_with_registers(tiny_dinov2_dir, images, tmp_path):
    lines = [{"caption": f"item {i}", "real": images[i], "generated": {"gen-a": images[12 + i], "gen-b": [images[12 + i], images[(i + 5) % 12]]}}
             for i in range(12)]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in lines))
    out = tmp_path / "audit"
    rc = main(["audit", "--jsonl", str(jsonl), "--model", str(tiny_dinov2_dir), "--hook", "encoder.layer.1",
               "--out-dir", str(out), "--sae-latents", "32", "--sae-k", "4", "--sae-samples", "20000", "--sae-batch", "256",
               "--bootstrap", "50", "--no-progress"])
    assert rc == 0
    audit = json.loads((out / "audit.json").read_text())
    assert set(audit["concepts"]) == {"gen-a", "gen-b"} and "gen-a|gen-b" in audit["correlations"]
    # every token counts by default: CLS, the 4 registers and the 16 patches of each image
    kinds = ActivationStore.open(out / "stores" / "real").kind_counts()
    assert kinds["cls"] == 12 and kinds["register"] == 48 and kinds["patch"] == 192
    # gen-b's second sample of caption i is real image i + 5's, which the audit sees as a copy
    assert audit["memorisation"]["gen-b"]["flagged"] >= 1
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") > 10
    assert main(["audit", "--real", images[0], "--generated", images[1], "--model", "efficientnet-lite0",
                 "--out-dir", str(tmp_path / "x")]) == 2  # files are not folders: a one-line error


def test_identical_sets_give_delta_half_and_every_image_memorised(tiny_dinov2_dir, images, tmp_path):
    real = ImageSet("real", images[:12])
    same = ImageSet("same", images[:12])
    res = run_audit(_source(tiny_dinov2_dir), real, [same], tmp_path, cfg=AuditConfig(**SMALL))
    t = res.concepts["same"]
    deltas = [d for d, s in zip(t["delta"], t["supported"]) if s]
    assert deltas and np.allclose(deltas, 0.5) and not t["suppressed"] and not t["exaggerated"]
    assert res.memorisation["same"]["flagged"] == 12


def test_streaming_is_independent_of_shards_and_resumes(tiny_dinov2_dir, images, tmp_path):
    real, gen = ImageSet("real", images[:12]), ImageSet("gen", images[12:])
    src = _source(tiny_dinov2_dir)
    one = run_audit(src, real, [gen], tmp_path / "one", cfg=AuditConfig(**SMALL, shard_rows=100_000))
    sae = tmp_path / "one" / "sae-train" / "sae"
    many = run_audit(src, real, [gen], tmp_path / "many", sae=sae, cfg=AuditConfig(**SMALL, shard_rows=40, batch_size=2))
    assert ActivationStore.open(tmp_path / "many" / "stores" / "gen").num_shards >= 6
    np.testing.assert_allclose(many.concepts["gen"]["energy_real"], one.concepts["gen"]["energy_real"], rtol=1e-5)
    np.testing.assert_allclose(many.concepts["gen"]["delta_high"], one.concepts["gen"]["delta_high"], rtol=1e-5)
    # a stopped extraction (manifest lists 2 shards, not complete) resumes to the same figures
    m_path = tmp_path / "many" / "stores" / "gen" / MANIFEST
    m = json.loads(m_path.read_text())
    m["shards"], m["complete"] = m["shards"][:2], False
    m["rows"] = sum(s["rows"] for s in m["shards"])
    m_path.write_text(json.dumps(m))
    again = run_audit(src, real, [gen], tmp_path / "many", sae=sae, cfg=AuditConfig(**SMALL, shard_rows=40, batch_size=2))
    assert again.concepts["gen"]["delta"] == many.concepts["gen"]["delta"]


def test_bootstrap_weights_pair_by_key():
    w = poisson_weights(_key_hashes(["a", "b", "a"]), 500, seed=0)
    assert torch.equal(w[:, 0], w[:, 2]) and not torch.equal(w[:, 0], w[:, 1])
    assert abs(float(w.mean()) - 1) < 0.1 and abs(float(w.var()) - 1) < 0.15
    with pytest.raises(ValueError, match="t_low"):
        AuditConfig(t_low=0.6)
