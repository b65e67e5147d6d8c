"""SAE files of SAELens and sparsify: our readers on checkpoints made by the libraries
themselves (tests/sae/interop/, written by ``python -m benchmarks.interop --fixtures`` in
.venv-peers, versions in versions.json), compared with the libraries' own encode / decode
of the same inputs; unsupported settings refused by name; our exports read back.

Whether the libraries load our exports and encode the same is checked in their own
environment by ``make interop`` (benchmarks/interop.py)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny_models import rule_state_from
from safetensors.torch import load_file

from visionsae.sae import RULES, SAEConfig, SparseAutoencoder

FIXTURES = Path(__file__).parent / "interop"
LOADABLE = ["saelens-standard", "saelens-standard-no-bdec-input", "saelens-topk", "saelens-topk-rescaled",
            "saelens-jumprelu", "saelens-batchtopk-inference", "sparsify-topk"]


def _encode(sae: SparseAutoencoder, x: torch.Tensor):
    with torch.no_grad():
        code = sae.encode(x)
        return code.to_dense(sae.n_latents), sae.decode(code)


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1))


def test_fixtures_list_what_the_script_made():
    made = json.loads((FIXTURES / "versions.json").read_text())
    assert set(made["fixtures"]) == {p.name for p in FIXTURES.iterdir() if p.is_dir()}
    assert set(LOADABLE) < set(made["fixtures"])


@pytest.mark.parametrize("name", LOADABLE)
def test_library_checkpoints_encode_as_the_library_does(name):
    ref = load_file(str(FIXTURES / name / "reference.safetensors"))
    sae = SparseAutoencoder.from_pretrained(FIXTURES / name)
    acts, x_hat = _encode(sae, ref["x"])
    assert ((acts != 0) == (ref["acts"] != 0)).all()  # the same active latents, every input
    assert _rel(acts, ref["acts"]) < 1e-6
    assert _rel(x_hat, ref["x_hat"]) < 1e-6
    if name.startswith("saelens"):  # SAELens 6 keeps these under metadata
        assert (sae.cfg.hook, sae.cfg.model) == ("blocks.3.hook_resid_post", "tiny-model")


def test_the_rescaled_fixture_differs_from_plain_topk(tmp_path):
    """Read as plain TopK (what the reader did before), the rescaled SAE encodes wrongly: the
    fixture exercises the fold."""
    folder = tmp_path / "plain"
    shutil.copytree(FIXTURES / "saelens-topk-rescaled", folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["rescale_acts_by_decoder_norm"] = False
    (folder / "cfg.json").write_text(json.dumps(cfg))
    ref = load_file(str(folder / "reference.safetensors"))
    acts, _ = _encode(SparseAutoencoder.from_pretrained(folder), ref["x"])
    assert ((acts != 0) != (ref["acts"] != 0)).any(-1).sum() >= 5


def test_gated_and_groupmax_are_refused_by_name():
    with pytest.raises(ValueError, match="gated SAEs are not supported"):
        SparseAutoencoder.from_pretrained(FIXTURES / "saelens-gated")
    with pytest.raises(ValueError, match="activation='groupmax' is not supported"):
        SparseAutoencoder.from_pretrained(FIXTURES / "sparsify-groupmax")


def test_rescale_on_other_architectures_is_refused(tmp_path):
    folder = tmp_path / "j"
    shutil.copytree(FIXTURES / "saelens-jumprelu", folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["rescale_acts_by_decoder_norm"] = True
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="rescale_acts_by_decoder_norm=True is supported for topk SAEs only"):
        SparseAutoencoder.from_pretrained(folder)


def _ours(rule: str) -> SparseAutoencoder:
    torch.manual_seed(3)
    sae = SparseAutoencoder(SAEConfig(d_in=16, n_latents=48, sparsity=rule, k=4, hook="layer.3", model="zoo"))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
    sae.init_from_data_(torch.randn(64, 16) * 7 + 2)  # an input scale that the export folds
    return rule_state_from(sae, torch.randn(64, 16) * 7 + 2)  # batchtopk's inference threshold


@pytest.mark.parametrize("fmt, rule", [("saelens", "topk"), ("saelens", "relu"), ("saelens", "jumprelu"),
                                       ("saelens", "batchtopk"), ("sparsify", "topk")])
def test_exports_read_back_as_the_same_code(fmt, rule, tmp_path):
    sae = _ours(rule)
    sae.save_pretrained(tmp_path / "e", format=fmt)
    files = {p.name for p in (tmp_path / "e").iterdir()}
    assert files == ({"cfg.json", "sae_weights.safetensors"} if fmt == "saelens" else {"cfg.json", "sae.safetensors"})
    back = SparseAutoencoder.from_pretrained(tmp_path / "e")
    x = torch.randn(30, 16) * 7 + 2
    (a, xa), (b, xb) = _encode(sae, x), _encode(back, x)
    assert ((a != 0) == (b != 0)).all() and _rel(b, a) < 1e-6 and _rel(xb, xa) < 1e-6
    if fmt == "saelens":
        assert back.cfg.hook == "layer.3" and back.cfg.model == "zoo"


@pytest.mark.parametrize("rule", sorted(set(RULES) - {"topk", "relu", "jumprelu", "batchtopk"}))
def test_rules_without_an_saelens_equivalent_are_refused(rule, tmp_path):
    with pytest.raises(ValueError, match=f"sparsity '{rule}' has no SAELens equivalent"):
        _ours(rule).save_pretrained(tmp_path / "e", format="saelens")
    assert not (tmp_path / "e").exists()


def test_sparsify_export_is_topk_only_and_unknown_formats_are_named(tmp_path):
    with pytest.raises(ValueError, match="sparsity 'relu' has no sparsify equivalent"):
        _ours("relu").save_pretrained(tmp_path / "e", format="sparsify")
    with pytest.raises(ValueError, match="unknown SAE format 'npz'"):
        _ours("topk").save_pretrained(tmp_path / "e", format="npz")
