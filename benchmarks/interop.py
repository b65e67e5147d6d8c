"""SAE files shared with SAELens and sparsify, checked against the libraries themselves.

Runs in ``.venv-peers`` (sae-lens and eai-sparsify; ``make interop`` creates it on first
use), with this repository on the path:

* ``--fixtures DIR`` makes small checkpoints with each library's own classes and save
  functions (random weights, biases and decoder norms perturbed so every term matters), and
  next to each the library's own encode / decode of fixed inputs (``reference.safetensors``:
  ``x``, ``acts`` dense ``[N, d_sae]``, ``x_hat``). ``tests/sae/test_sae_interop.py`` loads
  them with our readers; the committed copies live in ``tests/sae/interop/``.
* ``--out FILE`` (the default job) exports our SAEs with ``save_pretrained(format=...)``,
  loads the folders with ``sae_lens.SAE.load_from_disk`` / ``sparsify.SparseCoder.load_from_disk``
  and compares their codes and reconstructions with ours on the same inputs (JSON out;
  exit status 1 if any differs).

    .venv-peers/bin/python -m benchmarks.interop --fixtures tests/sae/interop
    .venv-peers/bin/python -m benchmarks.interop --out benchmarks/results/interop.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from benchmarks import write_json

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # sparsify's CPU path

D_IN, D_SAE, K, N = 16, 48, 4, 20
TOL = 1e-6  # of the largest magnitude compared: float32 rounding of two summation orders


def _inputs(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, D_IN, generator=g) * 3 + 1


def _perturb_(params: dict[str, torch.Tensor], seed: int) -> None:
    """Random biases and decoder-row norms (a fresh SAE has zeros and unit rows)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in params.items():
            if name.startswith("b_") or name.endswith("bias") or name in ("r_mag", "b_gate", "b_mag"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif name == "W_dec":
                p.mul_(torch.rand(p.shape[0], 1, generator=g) * 1.5 + 0.25)
            elif name == "threshold":
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.05)


def _saelens_fixtures(root: Path) -> list[str]:
    import sae_lens
    from sae_lens import (GatedSAE, GatedSAEConfig, JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig,
                          TopKSAE, TopKSAEConfig)
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    def meta():
        return SAEMetadata(hook_name="blocks.3.hook_resid_post", model_name="tiny-model")

    common = dict(d_in=D_IN, d_sae=D_SAE, dtype="float32", device="cpu")
    saes = {
        "saelens-standard": StandardSAE(StandardSAEConfig(**common, metadata=meta())),
        "saelens-standard-no-bdec-input": StandardSAE(StandardSAEConfig(**common, apply_b_dec_to_input=False, metadata=meta())),
        "saelens-topk": TopKSAE(TopKSAEConfig(**common, k=K, metadata=meta())),
        "saelens-topk-rescaled": TopKSAE(TopKSAEConfig(**common, k=K, rescale_acts_by_decoder_norm=True, metadata=meta())),
        "saelens-jumprelu": JumpReLUSAE(JumpReLUSAEConfig(**common, metadata=meta())),
        "saelens-gated": GatedSAE(GatedSAEConfig(**common, metadata=meta())),
    }
    made = []
    x = _inputs()
    for i, (name, sae) in enumerate(saes.items()):
        _perturb_(dict(sae.named_parameters()), seed=100 + i)
        folder = root / name
        sae.save_model(folder)
        _reference(folder, x, sae.encode, sae.decode)
        made.append(name)
    # BatchTopK trains as a batch rule and is saved for inference as JumpReLU (its threshold)
    train = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common, k=K, metadata=meta()))
    _perturb_(dict(train.named_parameters()), seed=200)
    with torch.no_grad():
        train.topk_threshold.fill_(0.4)
    folder = root / "saelens-batchtopk-inference"
    train.save_inference_model(folder)
    loaded = sae_lens.SAE.load_from_disk(folder)
    _reference(folder, x, loaded.encode, loaded.decode)
    made.append(folder.name)
    return made


def _sparsify_fixtures(root: Path) -> list[str]:
    from sparsify import SparseCoder, SparseCoderConfig

    made = []
    x = _inputs()
    for i, activation in enumerate(("topk", "groupmax")):
        torch.manual_seed(300 + i)
        coder = SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=K, activation=activation), device="cpu")
        _perturb_({"encoder.bias": coder.encoder.bias, "b_dec": coder.b_dec, "W_dec": coder.W_dec}, seed=300 + i)
        folder = root / f"sparsify-{activation}"
        coder.save_to_disk(folder)

        def encode(t, coder=coder):
            out = coder.encode(t)
            return torch.zeros(t.shape[0], D_SAE).scatter_(-1, out.top_indices, out.top_acts)

        def decode(acts, coder=coder):
            top_acts, top_indices = acts.topk(K, dim=-1)
            return coder.decode(top_acts, top_indices)

        _reference(folder, x, encode, decode)
        made.append(folder.name)
    return made


def _reference(folder: Path, x: torch.Tensor, encode, decode) -> None:
    with torch.no_grad():
        acts = encode(x).float()
        x_hat = decode(acts).float()
    save_file({"x": x.contiguous(), "acts": acts.contiguous(), "x_hat": x_hat.contiguous()}, str(folder / "reference.safetensors"))


def make_fixtures(root: Path) -> dict:
    import sae_lens
    import sparsify

    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    made = _saelens_fixtures(root) + _sparsify_fixtures(root)
    info = {"sae_lens": sae_lens.__version__, "sparsify": _version("eai-sparsify"), "torch": torch.__version__,
            "fixtures": made, "made_by": "python -m benchmarks.interop --fixtures " + str(root)}
    (root / "versions.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


# ---------------------------------------------------------------------- export check


def _ours(rule: str, seed: int):
    """One of our SAEs with an input scale, biases and a trained batch threshold (every term
    of the export matters)."""
    from visionsae.sae import SAEConfig, SparseAutoencoder

    torch.manual_seed(seed)
    sae = SparseAutoencoder(SAEConfig(d_in=D_IN, n_latents=D_SAE, sparsity=rule, k=K, hook="blocks.3.hook_resid_post",
                                      model="tiny-model"))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        if rule == "jumprelu":
            sae.rule.log_threshold.copy_((torch.rand(D_SAE) * 0.5 + 0.05).log())
    sae.init_from_data_(_inputs(seed) * 4)
    if rule == "batchtopk":
        sae.train()
        sae(_inputs(seed + 1) * 4)  # sets the inference threshold
    return sae.eval()


def _compare(ours_acts, ours_hat, theirs_acts, theirs_hat) -> dict:
    """Largest differences, relative to the largest value compared, and how many inputs'
    sets of active latents differ."""
    return {"max_rel_acts": float((ours_acts - theirs_acts).abs().max() / theirs_acts.abs().max().clamp_min(1)),
            "max_rel_x_hat": float((ours_hat - theirs_hat).abs().max() / theirs_hat.abs().max().clamp_min(1)),
            "active_sets_differ": int(((ours_acts != 0) != (theirs_acts != 0)).any(-1).sum())}


def check_export() -> dict:
    from sae_lens import SAE
    from sparsify import SparseCoder

    results = {}
    x = _inputs(7) * 4
    with tempfile.TemporaryDirectory() as tmp:
        for i, rule in enumerate(("topk", "relu", "jumprelu", "batchtopk")):
            sae = _ours(rule, seed=10 + i)
            with torch.no_grad():
                code = sae.encode(x)
                acts, x_hat = code.to_dense(D_SAE), sae.decode(code)
            folder = Path(tmp) / f"saelens-{rule}"
            sae.save_pretrained(folder, format="saelens")
            theirs = SAE.load_from_disk(folder)
            with torch.no_grad():
                t_acts = theirs.encode(x)
                t_hat = theirs.decode(t_acts)
            results[f"saelens/{rule}"] = {**_compare(acts, x_hat, t_acts, t_hat), "architecture": theirs.cfg.architecture(),
                                          "hook_name": theirs.cfg.metadata.hook_name}
            if rule == "topk":
                folder = Path(tmp) / "sparsify-topk"
                sae.save_pretrained(folder, format="sparsify")
                coder = SparseCoder.load_from_disk(folder)
                with torch.no_grad():
                    enc = coder.encode(x)
                    s_acts = torch.zeros(N, D_SAE).scatter_(-1, enc.top_indices, enc.top_acts)
                    s_hat = coder.decode(enc.top_acts, enc.top_indices)
                results["sparsify/topk"] = _compare(acts, x_hat, s_acts, s_hat)
    bad = [k for k, r in results.items() if r["max_rel_acts"] > TOL or r["max_rel_x_hat"] > TOL or r["active_sets_differ"]]
    return {"tolerance": TOL, "inputs": f"{N} x {D_IN}, seed 7", "results": results, "failed": bad}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", default=None, help="write the library-made fixtures here (replacing the folder)")
    parser.add_argument("--out", default=None, help="write the export check's JSON here")
    args = parser.parse_args(argv)
    if args.fixtures:
        print(json.dumps(make_fixtures(Path(args.fixtures)), indent=2))
        return 0
    report = check_export()
    write_json(args.out, report)
    print(json.dumps(report, indent=2))
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
