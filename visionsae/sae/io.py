"""Save and load SAEs: ``cfg.json`` + ``sae.safetensors`` in a directory. Never pickle.

Also reads and writes the directory layouts of two other libraries:

* SAELens: ``cfg.json`` (``d_in``, ``d_sae``, ``architecture`` standard / topk / jumprelu,
  ``apply_b_dec_to_input``, ``k``, ``rescale_acts_by_decoder_norm``; the hook and model
  under ``metadata`` in SAELens 6, at the top level before) + ``sae_weights.safetensors``
  (``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec``, ``threshold`` for
  JumpReLU). A TopK SAE that rescales by the decoder norms is folded into plain weights
  (the same code); gated SAEs are refused.
* sparsify: ``cfg.json`` (``d_in``, ``num_latents`` or ``expansion_factor``, ``k``,
  ``activation``) + ``sae.safetensors`` (``encoder.weight [n, d_in]``, ``encoder.bias``,
  ``W_dec [n, d_in]``, ``b_dec``); TopK on ``x - b_dec``. GroupMax is refused.

``save_sae(sae, path, format="saelens" | "sparsify")`` writes a folder that the library's
own loader reads (``SAE.load_from_disk`` / ``SparseCoder.load_from_disk``) and that encodes
as ours does; ``benchmarks/interop.py`` checks that against the libraries themselves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic import atomic_replace, atomic_write_bytes
from ..errors import InputNotFoundError, UsageError
from .config import FORMAT_VERSION, SAEConfig
from .model import SparseAutoencoder, folded

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae.safetensors"
SAELENS_WEIGHTS = "sae_weights.safetensors"


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors`` ``save_file`` through a temporary file and a rename (see
    :func:`atomic_write_bytes`); the file gets the usual permissions (0644 under umask 022)."""
    with atomic_replace(path, errors=(OSError, SafetensorError)) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)


FORMATS = ("visionsae", "saelens", "sparsify")


def all_finite(tensor: torch.Tensor, chunk: int = 1 << 22) -> bool:
    """Whether ``tensor`` holds no NaN or Inf, checked a few million values at a time (one
    ``isfinite`` of a 768 x 2^19 weight is a 0.4 GB mask: the peak of a run's last save)."""
    flat = tensor.reshape(-1)
    return all(bool(torch.isfinite(flat[i : i + chunk]).all()) for i in range(0, flat.numel(), chunk))


def save_sae(sae: SparseAutoencoder, path: str | Path, fold_input_scale: bool = True, format: str = "visionsae") -> Path:
    """Write ``path/cfg.json`` and ``path/sae.safetensors`` (each atomically).

    With ``fold_input_scale`` (the default) the input scale is folded into the weights of
    the saved copy, so the files read raw activations; the module itself is unchanged.
    ``format="saelens"`` / ``"sparsify"`` writes those libraries' layout instead (always folded).
    """
    path = Path(path)
    if format == "saelens":
        return _save_saelens(sae, path)
    if format == "sparsify":
        return _save_sparsify(sae, path)
    if format != "visionsae":
        raise UsageError(f"unknown SAE format {format!r}; expected one of {FORMATS}")
    state = {k: v.detach() for k, v in sae.state_dict().items()}
    if fold_input_scale and float(state["input_scale"]) != 1.0:  # new tensors; nothing copied otherwise
        s = float(state["input_scale"])
        state = {k: folded(k, v, s) for k, v in state.items()}
        state["input_scale"] = torch.ones_like(state["input_scale"])
    for name, tensor in state.items():
        if tensor.is_floating_point() and name != "rule.threshold" and not all_finite(tensor):
            raise UsageError(f"refusing to save an SAE whose tensor {name!r} holds NaN or Inf")
    atomic_save_tensors(state, path / WEIGHTS_NAME, metadata={"format_version": str(FORMAT_VERSION)})
    atomic_write_bytes(path / CFG_NAME, sae.cfg.to_json().encode())
    return path


def _resolve(path_or_repo: str | Path, **hub_kwargs) -> Path:
    path = Path(path_or_repo)
    if path.is_dir():
        return path
    if path.exists():
        raise UsageError(f"{path} is a file; expected a directory holding {CFG_NAME} and the weights")
    text = str(path_or_repo)
    # "owner/name" may be a hub id; not where "owner" is a local folder ("runs/missing")
    if text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.parent.is_dir():
        from huggingface_hub import snapshot_download

        subfolder = hub_kwargs.pop("subfolder", None)
        patterns = [f"{subfolder}/*"] if subfolder else None
        try:
            local = Path(snapshot_download(text, allow_patterns=patterns, **hub_kwargs))
        except (OSError, ValueError) as exc:  # offline, unknown repo, no access
            reason = " ".join(str(exc).split())[:300]
            raise InputNotFoundError(
                f"no SAE directory at {text!r} (no such local path), and no Hugging Face repo {text!r} could be "
                f"fetched: {type(exc).__name__}: {reason}"
            ) from None
        return local / subfolder if subfolder else local
    raise InputNotFoundError(f"no SAE directory at {text!r} (expected a directory holding {CFG_NAME}, or a Hugging Face repo id)")


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UsageError(f"cannot read SAE weights {file}: {exc} (the file is truncated or corrupt)") from None


def _check_shapes(file: Path, tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    for name, shape in expected.items():
        if name not in tensors:
            raise UsageError(f"{file} has no tensor {name!r}; it holds {sorted(tensors)}")
        if tuple(tensors[name].shape) != shape:
            raise UsageError(
                f"{file}: tensor {name!r} has shape {tuple(tensors[name].shape)} but cfg.json implies {shape}"
            )


def load_sae(path_or_repo: str | Path, device: torch.device | str | None = None, **hub_kwargs) -> SparseAutoencoder:
    """Load our format, or an SAELens or sparsify directory (detected from its files)."""
    root = _resolve(path_or_repo, **hub_kwargs)
    cfg_file = root / CFG_NAME
    if not cfg_file.exists():
        raise InputNotFoundError(f"{root} has no {CFG_NAME}")
    try:
        raw: Any = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{cfg_file} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{cfg_file} holds a JSON {type(raw).__name__}; expected an object of SAE settings")
    if (root / SAELENS_WEIGHTS).exists():
        return _load_saelens(root, raw, device)
    if "format_version" not in raw:
        return _load_sparsify(root, raw, device)
    version = raw["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UsageError(f"{cfg_file}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise UsageError(f"{cfg_file} has format_version {version}; this visionsae reads up to {FORMAT_VERSION}")
    try:
        cfg = SAEConfig.from_dict(raw)
    except ValueError as exc:
        raise UsageError(f"{cfg_file}: {exc}") from None
    file = root / WEIGHTS_NAME
    if not file.exists():
        raise InputNotFoundError(f"{root} has no {WEIGHTS_NAME}")
    tensors = _read_tensors(file)
    sae = SparseAutoencoder(cfg, device="meta")
    expected = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
    _check_shapes(file, tensors, expected)
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise UsageError(f"{file} holds tensors {extra} that a {cfg.sparsity} SAE does not have")
    check_finite_weights(file, tensors)
    sae = SparseAutoencoder(cfg, device=device)
    sae.load_state_dict(tensors)
    return sae.eval()


def check_finite_weights(where: Path | str, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse weights holding NaN or Inf (a rule's threshold may be infinite: "never fires")."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and name != "rule.threshold" and not all_finite(tensor):
            bad = int((~torch.isfinite(tensor)).sum())
            raise UsageError(f"{where}: tensor {name!r} holds NaN or Inf in {bad} of {tensor.numel()} values; "
                             "refusing to load a broken SAE")


def _build(cfg: SAEConfig, weights: dict[str, torch.Tensor], device) -> SparseAutoencoder:
    sae = SparseAutoencoder(cfg, device=device)
    state = sae.state_dict()
    for name, value in weights.items():
        state[name] = value.to(state[name].dtype)
    sae.load_state_dict(state)
    return sae.eval()


def _load_saelens(root: Path, raw: dict[str, Any], device) -> SparseAutoencoder:
    file = root / SAELENS_WEIGHTS
    try:
        d_in, d_sae = int(raw["d_in"]), int(raw["d_sae"])
    except KeyError as exc:
        raise UsageError(f"{root / CFG_NAME} lacks {exc.args[0]!r}, which an SAELens cfg.json has") from exc
    arch = raw.get("architecture", "standard")
    if arch == "gated":
        raise UsageError(f"{root}: gated SAEs are not supported (SAELens architecture 'gated')")
    tensors = _read_tensors(file)
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if arch == "jumprelu":
        expected["threshold"] = (d_sae,)
    _check_shapes(file, tensors, expected)
    if raw.get("normalize_activations") not in (None, "none"):
        raise UsageError(
            f"{root}: SAELens normalize_activations={raw['normalize_activations']!r} is not supported; "
            "fold the normalisation into the weights first"
        )
    W_enc = tensors["W_enc"].float().t().contiguous()
    b_enc = tensors["b_enc"].float()
    b_dec = tensors["b_dec"].float()
    if not raw.get("apply_b_dec_to_input", True):
        # Ours always encodes x - b_dec: W (x - b_dec) + b' = W x + b  =>  b' = b + W b_dec
        b_enc = b_enc + W_enc @ b_dec
    metadata = raw.get("metadata") or {}  # SAELens 6 keeps provenance here
    hook = metadata.get("hook_name") or raw.get("hook_name")
    model = metadata.get("model_name") or raw.get("model_name")
    common = dict(d_in=d_in, n_latents=d_sae, normalize_input=False, hook=hook, model=model)
    W_dec = tensors["W_dec"].float()
    if raw.get("rescale_acts_by_decoder_norm"):
        if arch != "topk":
            raise UsageError(f"{root}: SAELens rescale_acts_by_decoder_norm=True is supported for topk SAEs only, "
                             f"not {arch!r}")
        # SAELens TopK encodes topk(pre * |W_dec_j|) and decodes (acts / |W_dec_j|) @ W_dec: the
        # same code as plain TopK with encoder rows and biases times the norms, unit decoder rows
        norms = W_dec.norm(dim=1)
        if not bool((norms > 0).all()):
            raise UsageError(f"{file}: rescale_acts_by_decoder_norm needs non-zero decoder rows")
        W_enc, b_enc, W_dec = W_enc * norms[:, None], b_enc * norms, W_dec / norms[:, None]
    weights = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if arch == "topk":
        k = raw.get("k") or (raw.get("activation_fn_kwargs") or {}).get("k")
        if k is None:
            raise UsageError(f"{root / CFG_NAME}: a topk SAELens SAE needs 'k'")
        cfg = SAEConfig(sparsity="topk", k=int(k), **common)
    elif arch == "jumprelu":
        threshold = tensors["threshold"].float()
        if (threshold <= 0).any():
            raise UsageError(f"{file}: JumpReLU thresholds must be positive")
        cfg = SAEConfig(sparsity="jumprelu", **common)
        weights["rule.log_threshold"] = threshold.log()
    elif arch == "standard":
        cfg = SAEConfig(sparsity="relu", **common)
    else:
        raise UsageError(f"{root}: SAELens architecture {arch!r} is not supported; expected standard, topk or jumprelu "
                         "(BatchTopK and Matryoshka SAEs export for inference as jumprelu)")
    return _build(cfg, weights, device)


def _load_sparsify(root: Path, raw: dict[str, Any], device) -> SparseAutoencoder:
    file = root / WEIGHTS_NAME
    if not file.exists():
        raise InputNotFoundError(f"{root} has no {WEIGHTS_NAME}")
    if "d_in" not in raw or "k" not in raw:
        raise UsageError(f"{root / CFG_NAME} is neither a visionsae cfg (no format_version) nor a sparsify cfg (needs d_in and k)")
    if raw.get("skip_connection") or raw.get("transcode"):
        raise UsageError(f"{root}: sparsify skip connections / transcoders are not supported")
    if raw.get("activation", "topk") != "topk":
        raise UsageError(f"{root}: sparsify activation={raw['activation']!r} is not supported (only 'topk'; "
                         "groupmax keeps the largest latent of each of k groups)")
    d_in = int(raw["d_in"])
    n = int(raw.get("num_latents") or 0) or d_in * int(raw.get("expansion_factor", 32))
    tensors = _read_tensors(file)
    _check_shapes(
        file, tensors, {"encoder.weight": (n, d_in), "encoder.bias": (n,), "W_dec": (n, d_in), "b_dec": (d_in,)}
    )
    cfg = SAEConfig(d_in=d_in, n_latents=n, sparsity="topk", k=int(raw["k"]), normalize_input=False)
    weights = {
        "W_enc": tensors["encoder.weight"].float(),
        "b_enc": tensors["encoder.bias"].float(),
        "W_dec": tensors["W_dec"].float(),
        "b_dec": tensors["b_dec"].float(),
    }
    return _build(cfg, weights, device)


# ---------------------------------------------------------------------- export


def _inference_weights(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    """W_enc [n, d], b_enc, W_dec [n, d], b_dec acting on raw inputs (input scale folded)."""
    s = float(sae.input_scale)
    return {k: folded(k, getattr(sae, k).detach().float(), s) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}


def _save_saelens(sae: SparseAutoencoder, path: Path) -> Path:
    """SAELens 6's layout: topk -> topk, relu -> standard, jumprelu -> jumprelu, and batchtopk
    (with Matryoshka) -> jumprelu at its inference threshold, as SAELens exports its own."""
    rule, w = sae.cfg.sparsity, _inference_weights(sae)
    n = sae.n_latents
    cfg: dict[str, Any] = {}
    tensors = {"W_enc": w["W_enc"].t().contiguous(), "b_enc": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
    if rule == "topk":
        arch = "topk"
        cfg["k"] = int(sae.cfg.k)
        cfg["rescale_acts_by_decoder_norm"] = False
    elif rule == "relu":
        arch = "standard"
    elif rule in ("jumprelu", "batchtopk"):
        arch = "jumprelu"
        if rule == "jumprelu":
            threshold = sae.rule.log_threshold.detach().float().exp()
        else:
            t = float(sae.rule.threshold)
            if not t > 0:  # NaN (never trained) or not positive: no JumpReLU equivalent
                raise UsageError(f"this batchtopk SAE's inference threshold is {t}; SAELens's JumpReLU needs a positive one")
            threshold = torch.full((n,), t)
        tensors["threshold"] = threshold.cpu()
    else:
        raise UsageError(f"an SAE with sparsity {rule!r} has no SAELens equivalent; the SAELens export supports "
                         "topk, relu, jumprelu and batchtopk")
    cfg = {"architecture": arch, "d_in": sae.d_in, "d_sae": n, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none", **cfg,
           # SAELens reads a config without sae_lens_version as its pre-6.0 layout
           "metadata": {"sae_lens_version": "6.0.0", "hook_name": sae.cfg.hook, "model_name": sae.cfg.model}}
    atomic_save_tensors(tensors, path / SAELENS_WEIGHTS)
    atomic_write_bytes(path / CFG_NAME, json.dumps(cfg, indent=2).encode())
    return path


def _save_sparsify(sae: SparseAutoencoder, path: Path) -> Path:
    """sparsify's layout (``SparseCoder``): TopK SAEs only."""
    if sae.cfg.sparsity != "topk":
        raise UsageError(f"an SAE with sparsity {sae.cfg.sparsity!r} has no sparsify equivalent; the sparsify export "
                         "supports topk only")
    w = _inference_weights(sae)
    tensors = {"encoder.weight": w["W_enc"], "encoder.bias": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
    cfg = {"d_in": sae.d_in, "num_latents": sae.n_latents, "expansion_factor": max(1, sae.n_latents // sae.d_in),
           "k": int(sae.cfg.k), "activation": "topk", "normalize_decoder": False, "multi_topk": False,
           "skip_connection": False, "transcode": False}
    atomic_save_tensors(tensors, path / WEIGHTS_NAME)
    atomic_write_bytes(path / CFG_NAME, json.dumps(cfg, indent=2).encode())
    return path
