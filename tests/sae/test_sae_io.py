"""Checkpoints: our format round-trips bit-exactly; SAELens and sparsify directories load;
bad files are refused with an error that names them."""

import json

import pytest
import torch
from tiny_models import rule_state_from
from safetensors.torch import save_file

from visionsae.sae import RULES, SAEConfig, SparseAutoencoder


def _sae(rule: str) -> SparseAutoencoder:
    torch.manual_seed(1)
    sae = SparseAutoencoder(SAEConfig(d_in=16, n_latents=48, sparsity=rule, k=4, hook="layer.3", model="zoo"))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.2)
    sae.init_from_data_(torch.randn(64, 16) * 7 + 2)
    return rule_state_from(sae, torch.randn(64, 16))


@pytest.mark.parametrize("rule", sorted(RULES))
def test_round_trip_is_bit_exact(rule, tmp_path):
    sae = _sae(rule)
    sae.save_pretrained(tmp_path / "a", fold_input_scale=False)
    loaded = SparseAutoencoder.from_pretrained(tmp_path / "a")
    assert loaded.cfg == sae.cfg
    for name, tensor in sae.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    # Saving the loaded copy again gives the same bytes.
    loaded.save_pretrained(tmp_path / "b", fold_input_scale=False)
    assert (tmp_path / "a" / "sae.safetensors").read_bytes() == (tmp_path / "b" / "sae.safetensors").read_bytes()
    assert json.loads((tmp_path / "a" / "cfg.json").read_text())["format_version"] == 1


def test_saved_copy_reads_raw_inputs(tmp_path):
    sae = _sae("topk")
    x = torch.randn(30, 16) * 7 + 2
    sae.save_pretrained(tmp_path)  # folds the input scale into the saved weights
    loaded = SparseAutoencoder.from_pretrained(tmp_path)
    assert float(loaded.input_scale) == 1.0
    torch.testing.assert_close(loaded.encode(x).to_dense(48), sae.encode(x).to_dense(48), rtol=1e-4, atol=1e-4)
    assert float(sae.input_scale) != 1.0  # the module itself is untouched


def test_mismatched_tensors_are_named(tmp_path):
    sae = _sae("topk")
    sae.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["n_latents"] = 64
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"tensor 'W_dec' has shape \(48, 16\) but cfg.json implies \(64, 16\)"):
        SparseAutoencoder.from_pretrained(tmp_path)


def test_truncated_file_is_named(tmp_path):
    _sae("topk").save_pretrained(tmp_path)
    weights = tmp_path / "sae.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match="sae.safetensors.*truncated or corrupt"):
        SparseAutoencoder.from_pretrained(tmp_path)


def test_missing_directory_and_newer_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SAE directory"):
        SparseAutoencoder.from_pretrained(tmp_path / "nope" / "deeper")
    _sae("topk").save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99"):
        SparseAutoencoder.from_pretrained(tmp_path)


def test_save_refuses_nan_weights(tmp_path):
    sae = _sae("topk")
    with torch.no_grad():
        sae.W_dec[3, 2] = float("nan")
    with pytest.raises(ValueError, match="'W_dec' holds NaN"):
        sae.save_pretrained(tmp_path)
    assert not (tmp_path / "sae.safetensors").exists()


# --- other libraries' layouts, written from their public descriptions -------------------

def _weights(d=16, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, d, generator=g),  # encoder rows
        torch.randn(n, generator=g) * 0.1,
        torch.randn(n, d, generator=g),
        torch.randn(d, generator=g),
    )


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "standard"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_reads_saelens_directories(arch, apply_b_dec, tmp_path):
    W_enc_rows, b_enc, W_dec, b_dec = _weights()
    tensors = {"W_enc": W_enc_rows.t().contiguous(), "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    threshold = torch.rand(40) + 0.5
    if arch == "jumprelu":
        tensors["threshold"] = threshold
    save_file(tensors, str(tmp_path / "sae_weights.safetensors"))
    cfg = {"d_in": 16, "d_sae": 40, "architecture": arch, "apply_b_dec_to_input": apply_b_dec, "hook_name": "blocks.3.hook_resid_post", "normalize_activations": "none"}
    if arch == "topk":
        cfg["k"] = 5
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = SparseAutoencoder.from_pretrained(tmp_path)

    x = torch.randn(9, 16)
    # SAELens' definition: pre = (x - b_dec if apply_b_dec_to_input else x) @ W_enc + b_enc
    pre = ((x - b_dec) if apply_b_dec else x) @ tensors["W_enc"] + b_enc
    if arch == "topk":
        top = pre.topk(5, dim=-1)
        expected = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    elif arch == "jumprelu":
        expected = pre.relu() * (pre > threshold)
    else:
        expected = pre.relu()
    torch.testing.assert_close(sae.encode_dense(x), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sae.decode(sae.encode(x)), expected @ W_dec + b_dec, rtol=1e-4, atol=1e-4)
    assert sae.cfg.hook == "blocks.3.hook_resid_post"


def test_reads_sparsify_directories(tmp_path):
    W_enc_rows, b_enc, W_dec, b_dec = _weights()
    save_file({"encoder.weight": W_enc_rows, "encoder.bias": b_enc, "W_dec": W_dec, "b_dec": b_dec}, str(tmp_path / "sae.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({"expansion_factor": 32, "normalize_decoder": True, "num_latents": 40, "k": 6, "d_in": 16}))
    sae = SparseAutoencoder.from_pretrained(tmp_path)
    x = torch.randn(9, 16)
    pre = torch.relu((x - b_dec) @ W_enc_rows.t() + b_enc)  # sparsify: ReLU, then top-k of x - b_dec
    top = pre.topk(6, dim=-1)
    expected = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    torch.testing.assert_close(sae.encode_dense(x), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sae.decode(sae.encode(x)), expected @ W_dec + b_dec, rtol=1e-4, atol=1e-4)


def test_sparsify_shape_mismatch_is_named(tmp_path):
    W_enc_rows, b_enc, W_dec, b_dec = _weights()
    save_file({"encoder.weight": W_enc_rows, "encoder.bias": b_enc, "W_dec": W_dec, "b_dec": b_dec}, str(tmp_path / "sae.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({"num_latents": 64, "k": 6, "d_in": 16}))
    with pytest.raises(ValueError, match="encoder.weight"):
        SparseAutoencoder.from_pretrained(tmp_path)
