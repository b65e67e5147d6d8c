"""`visionsae extract` / `train` / `inspect` on the real EfficientNet-Lite0 and real photos."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from visionsae.cli import main
from visionsae.store import ActivationStore, TokenKind


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photos (scikit-image) in assorted PIL modes, one of them in a subfolder, and a broken file."""
    from skimage import data

    d = tmp_path_factory.mktemp("photos")
    (d / "sub").mkdir()
    Image.fromarray(data.astronaut()).save(d / "astronaut.jpg")
    Image.fromarray(data.chelsea()).save(d / "chelsea.png")
    Image.fromarray(data.coffee()).convert("P").save(d / "sub" / "coffee.png")
    Image.fromarray(data.rocket()).convert("CMYK").save(d / "rocket.jpg")
    Image.fromarray(data.camera().astype(np.uint16) * 257).save(d / "camera16.png")
    Image.fromarray(data.stereo_motorcycle()[0]).convert("RGBA").save(d / "motorcycle.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return d


def test_help_is_fast_and_complete(capsys):
    for cmd in ("extract", "inspect"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--skip-unreadable" in out and "--kinds" in out and "--store" in out


def test_unreadable_image_fails_with_one_line(photos, tmp_path, capsys):
    rc = main(["extract", "--model", "efficientnet-lite0", "--hook", "_blocks.15", "--inputs", str(photos),
               "--out", str(tmp_path / "s"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("visionsae: error: cannot read image") and "broken.jpg" in err[0]
    rc = main(["extract", "--model", "efficientnet-lite0", "--hook", "_blocks.99", "--inputs", str(photos),
               "--out", str(tmp_path / "s2"), "--no-progress"])
    assert rc == 2 and "_blocks.9" in capsys.readouterr().err  # names close hook points
    rc = main(["extract", "--model", "efficientnet-lite0", "--hook", "_blocks.15", "--inputs",
               str(tmp_path / "nope"), "--out", str(tmp_path / "s3")])
    assert rc == 2 and "do not exist" in capsys.readouterr().err


def test_images_extract_train_inspect(photos, tmp_path, capsys):
    store_dir, run_dir, report = tmp_path / "store", tmp_path / "run", tmp_path / "report"
    rc = main(["extract", "--model", "efficientnet-lite0", "--hook", "_blocks.15", "--inputs", str(photos),
               "--out", str(store_dir), "--skip-unreadable", "--batch-size", "4", "--shard-rows", "100",
               "--dtype", "float16", "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"out": str(store_dir), "rows": 6 * 49, "d_in": 320, "shards": 2, "inputs": 7, "skipped": 1,
                       "complete": True}
    store = ActivationStore.open(store_dir)
    assert [s["input"] for s in store.skipped] == [str(photos / "broken.jpg")]
    assert store.kind_counts() == {"patch": 6 * 49}
    recs = store.input_records(range(7))
    assert recs[0]["grid"] == [7, 7] and recs[0]["image"] == str(photos / "astronaut.jpg")

    rc = main(["train", "--store", str(store_dir), "--n-latents", "128", "--k", "8", "--total-samples", "3000",
               "--batch-size", "64", "--out-dir", str(run_dir), "--checkpoint-every", "0", "--no-progress"])
    assert rc == 0
    capsys.readouterr()

    rc = main(["inspect", str(run_dir / "sae"), "--store", str(store_dir), "--out", str(report), "--top", "4",
               "--num-features", "5", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    stats = json.loads(out.splitlines()[0])
    assert stats["store"]["rows"] == 6 * 49 and 0 < stats["store"]["fvu"] < 1  # better than predicting the mean
    assert stats["store"]["l0"] <= 8
    feats = json.loads((report / "features.json").read_text())
    assert len(feats) == 5
    for f in feats:
        values = [t["value"] for t in f["top"]]
        assert values == sorted(values, reverse=True) and len({t["input_id"] for t in f["top"]}) == len(values)
        for t in f["top"]:
            assert t["image"].startswith(str(photos)) and 0 <= t["patch"][0] < 7 and 0 <= t["patch"][1] < 7
    grid = Image.open(report / "features.png")
    assert grid.size[1] >= 5 * 96 and grid.getextrema() != ((255, 255), (255, 255), (255, 255))


def test_top_inputs_are_the_real_maxima(photos, tmp_path, capsys):
    """The inspect pass's top hit of a feature is the row where the SAE's code is largest."""
    import torch

    from visionsae.inspection import inspect_store
    from visionsae.sae import SAEConfig, SparseAutoencoder

    store_dir = tmp_path / "store"
    assert main(["extract", "--model", "efficientnet-lite0", "--hook", "_blocks.15", "--inputs", str(photos),
                 "--out", str(store_dir), "--skip-unreadable", "--no-progress", "--batch-size", "3",
                 "--shard-rows", "60"]) == 0
    capsys.readouterr()
    store = ActivationStore.open(store_dir)
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=320, n_latents=64, k=4))
    res = inspect_store(sae, store, n_top=3, progress=False)
    rows = [store.read_shard(i) for i in range(store.num_shards)]
    acts = torch.cat([r.acts for r in rows]).float()
    ids = torch.cat([r.input_id for r in rows])
    dense = sae.encode_dense(acts).detach()
    for f in range(64):
        hits = res.hits.of(f)
        if not hits:
            assert dense[:, f].max() <= 0
            continue
        best = int(dense[:, f].argmax())
        assert hits[0]["input_id"] == int(ids[best])
        assert hits[0]["value"] == pytest.approx(float(dense[best, f]), rel=1e-5)
        assert res.frequency[f] == pytest.approx(float((dense[:, f] > 0).float().mean()))
    assert all(k == TokenKind.PATCH for k in torch.cat([r.kind for r in rows]).tolist())


def test_no_nhwc_gives_the_same_rows(photos, tmp_path, capsys):
    stores = []
    for flags in ([], ["--no-nhwc"]):
        out = tmp_path / f"store{len(stores)}"
        assert main(["extract", "--model", "efficientnet-lite0", "--hook", "_blocks.15", "--inputs", str(photos),
                     "--out", str(out), "--skip-unreadable", "--batch-size", "4", "--no-progress", *flags]) == 0
        stores.append(next(ActivationStore.open(out).iter_shards()).acts)
    capsys.readouterr()
    assert stores[0].shape == (6 * 49, 320)
    torch.testing.assert_close(stores[0], stores[1], rtol=1e-4, atol=1e-4)  # float rounding of another conv kernel
