"""Image backbones: DINOv2 (timm ``vit_*_dinov2*``, transformers ``Dinov2Model`` /
``Dinov2WithRegistersModel``), other ViTs, open_clip visual towers, and any timm or plain
torch CNN (a feature map ``[B, C, H, W]`` becomes one PATCH token per spatial position).

Rows carry their token kind: CLS, REGISTER or PATCH; register tokens are never PATCH, so
``kinds="patch"`` statistics never see them. Images are preprocessed from the model's own
config (timm's pretrained config, open_clip's preprocess config, a transformers image
processor or config), and any PIL mode is accepted (RGB, L, RGBA, P, CMYK, 16-bit ...).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from visionsae.errors import InputNotFoundError, UsageError
from visionsae.sources.base import ActivationSource, rows_from_tokens, tokens_of
from visionsae.store import ActivationBatch, TokenKind

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageReadError(UsageError):
    """An image file that cannot be read; the message names the path."""


# ----------------------------------------------------------------------------- reading


def to_rgb(img: Any) -> Any:
    """Any PIL image as 8-bit RGB.

    16-bit and 32-bit integer images (``I;16``, ``I``) are scaled down to 8 bits instead of
    clipped; float images (``F``) in [0, 1] are scaled up; palette images with transparency and
    alpha images drop their alpha; CMYK, YCbCr, LAB, HSV, 1-bit and L convert with PIL.
    """
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            scale = 65535.0
        elif img.mode == "F":
            scale = 1.0 if arr.size and float(np.nanmax(arr)) <= 1.0 else 255.0
        else:  # 32-bit ints: 16-bit PNGs open as "I"
            peak = float(arr.max()) if arr.size else 0.0
            scale = 255.0 if peak <= 255 else (65535.0 if peak <= 65535 else peak)
        arr = np.clip(np.nan_to_num(arr) / scale * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def load_image(path: str | os.PathLike) -> Any:
    """Open an image file as an 8-bit RGB PIL image (EXIF orientation applied).

    Raises :class:`ImageReadError` naming ``path`` when the file is missing or not an image.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im) or im
            return to_rgb(im)
    except FileNotFoundError:
        raise ImageReadError(f"cannot read image {path}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for broken files
        raise ImageReadError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None


def list_images(folder: str | os.PathLike) -> list[str]:
    """Image files under ``folder`` (recursive, by suffix), sorted by path."""
    root = Path(folder)
    if not root.is_dir():
        raise InputNotFoundError(f"image folder {root} does not exist")
    files = sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return files


# ----------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class ImagePreprocess:
    """Resize the shorter side, centre-crop, scale to [0, 1] and normalise."""

    crop: tuple[int, int]  # (height, width) of the image the model sees
    resize: int  # the shorter side is resized to this before the centre crop
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per-channel mean subtracted
    std: tuple[float, float, float] = IMAGENET_STD  # per-channel std divided by
    interpolation: str = "bicubic"  # "bicubic", "bilinear" or "nearest"

    def __call__(self, img: Any) -> torch.Tensor:
        """PIL image -> float tensor [3, H, W]."""
        from PIL import Image

        img = to_rgb(img)
        resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[self.interpolation]
        w, h = img.size
        s = self.resize / min(w, h)
        nw, nh = max(self.crop[1], round(w * s)), max(self.crop[0], round(h * s))
        img = img.resize((nw, nh), resample)
        left, top = (nw - self.crop[1]) // 2, (nh - self.crop[0]) // 2
        img = img.crop((left, top, left + self.crop[1], top + self.crop[0]))
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        return (x - mean) / std

    def to_dict(self) -> dict:
        return {"crop": list(self.crop), "resize": self.resize, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation}

    @classmethod
    def imagenet(cls, size: int = 224, crop_pct: float = 0.875) -> "ImagePreprocess":
        """The torchvision ImageNet evaluation transform (resize 256, crop 224)."""
        return cls((size, size), int(round(size / crop_pct)), IMAGENET_MEAN, IMAGENET_STD, "bilinear")

    @classmethod
    def for_timm(cls, model: nn.Module) -> "ImagePreprocess":
        from timm.data import resolve_model_data_config

        cfg = resolve_model_data_config(model)
        _, h, w = cfg["input_size"]
        img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
        if img_size is not None:  # a model built at another size than its pretrained config
            h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        crop_pct = cfg.get("crop_pct") or 1.0
        interp = cfg.get("interpolation", "bicubic")
        return cls((h, w), int(round(min(h, w) / crop_pct)), tuple(cfg["mean"]), tuple(cfg["std"]),
                   interp if interp in ("bicubic", "bilinear", "nearest") else "bicubic")

    @classmethod
    def for_open_clip(cls, model: nn.Module) -> "ImagePreprocess":
        import open_clip

        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        interp = cfg.get("interpolation", "bicubic")
        return cls((h, w), min(h, w), tuple(cfg.get("mean", OPENAI_CLIP_MEAN)), tuple(cfg.get("std", OPENAI_CLIP_STD)),
                   interp if interp in ("bicubic", "bilinear", "nearest") else "bicubic")

    @classmethod
    def for_transformers_config(cls, config: Any) -> "ImagePreprocess":
        """From a transformers vision config alone (no image processor saved): the model's
        ``image_size``, resized as DINOv2's processor does (shorter side x 256/224)."""
        size = getattr(config, "image_size", 224)
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        if "clip" in getattr(config, "model_type", ""):
            mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        return cls((h, w), int(round(min(h, w) * 256 / 224)), mean, std, "bicubic")


class HFImageProcessor:
    """Wraps a transformers image processor as a per-image preprocess function."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, img: Any) -> torch.Tensor:
        return self.processor(images=[to_rgb(img)], return_tensors="pt")["pixel_values"][0]

    def to_dict(self) -> dict:
        return {"image_processor": type(self.processor).__name__}


# ----------------------------------------------------------------------------- model families


@dataclass
class _Family:
    name: str
    prefix_kinds: list[TokenKind]
    patch_size: int | None  # None for CNNs (the grid is the feature map's)
    preprocess: Callable[[Any], torch.Tensor]
    forward: Callable[[torch.Tensor], Any]
    seq_first: bool = False  # the hooked output is [T, B, D]


def _detect(model: nn.Module) -> _Family:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is not None and hasattr(config, "patch_size"):  # transformers vision models
        n_reg = int(getattr(config, "num_register_tokens", 0) or 0)
        has_cls = not model_type.startswith("siglip")
        prefix = [TokenKind.CLS] * has_cls + [TokenKind.REGISTER] * n_reg
        return _Family(f"transformers:{model_type}", prefix, int(config.patch_size),
                       ImagePreprocess.for_transformers_config(config), lambda x: model(pixel_values=x))
    if hasattr(model, "num_prefix_tokens") and hasattr(model, "patch_embed"):  # timm ViT family
        n_reg = int(getattr(model, "num_reg_tokens", 0) or 0)
        prefix = [TokenKind.CLS] * bool(getattr(model, "has_class_token", True)) + [TokenKind.REGISTER] * n_reg
        prefix += [TokenKind.CLS] * (int(model.num_prefix_tokens) - len(prefix))
        ps = model.patch_embed.patch_size
        fwd = model.forward_features if hasattr(model, "forward_features") else model
        return _Family("timm:vit", prefix, int(ps[0] if isinstance(ps, (tuple, list)) else ps),
                       ImagePreprocess.for_timm(model), fwd)
    visual = getattr(model, "visual", None)
    vit = visual if visual is not None else model
    if hasattr(vit, "class_embedding") and hasattr(vit, "transformer") and hasattr(vit, "conv1"):  # open_clip ViT
        ps = vit.patch_size if hasattr(vit, "patch_size") else vit.conv1.kernel_size
        fwd = model.encode_image if visual is not None and hasattr(model, "encode_image") else vit
        return _Family("open_clip:vit", [TokenKind.CLS], int(ps[0] if isinstance(ps, (tuple, list)) else ps),
                       ImagePreprocess.for_open_clip(model), fwd,
                       seq_first=not getattr(vit.transformer, "batch_first", True))
    if visual is not None and hasattr(model, "encode_image"):  # open_clip with a CNN / timm tower
        return _Family("open_clip:cnn", [], None, ImagePreprocess.for_open_clip(model), model.encode_image)
    if hasattr(model, "pretrained_cfg") and hasattr(model, "forward_features"):  # timm CNN
        return _Family("timm:cnn", [], None, ImagePreprocess.for_timm(model), model.forward_features)
    return _Family("module", [], None, ImagePreprocess.imagenet(), model)


class ImageSource(ActivationSource):
    """Activations of an image backbone at one hook point.

    Parameters
    ----------
    model:
        The backbone (timm, transformers, open_clip, or any ``nn.Module`` taking ``[B, 3, H, W]``).
    hook:
        Module path (``blocks.8``, ``encoder.layer.5``, ``visual.transformer.resblocks.3``,
        ``_blocks.15``).
    preprocess:
        PIL image -> ``[3, H, W]`` tensor. Default from the model's config (see module doc); a
        transformers image processor object is accepted too.
    prefix_kinds:
        Kinds of the tokens before the patches (default from the model: CLS, then registers).
    patch_size:
        Patch size of a ViT (to check token counts and record the patch grid); default from the model.
    forward:
        ``pixel_values -> anything`` that runs the model up to the hook (default per family:
        ``forward_features``, ``encode_image``, ``model(pixel_values=...)``, ``model(x)``).
    channels_last:
        A 4-D hook output is ``[B, H, W, C]`` (some timm CNNs), not ``[B, C, H, W]``.
    nhwc:
        Run a convolutional model in the channels-last memory format: its 4-D weights are
        converted in place on first use and pixel batches are passed NHWC (the same shapes
        and values up to float rounding; EfficientNet-Lite0's forward ran 1.3-1.4x faster on
        this project's 2-core CPU). ``None`` (default): on for models with ``Conv2d`` layers
        other than ViTs; if such a model fails on NHWC input (a ``view`` of its input, ...)
        the source warns and goes back to the usual layout. ``False`` leaves the model as is.
    on_error:
        ``"raise"``: an unreadable file stops with an error naming it; ``"skip"``: it is left
        out and listed in the batch's ``skipped`` (and the store's manifest).
    keep_kinds, device, stop_early:
        As :class:`~visionsae.sources.base.ActivationSource`.
    """

    input_type = "image"

    def __init__(
        self,
        model: nn.Module,
        hook: str,
        *,
        preprocess: Callable[[Any], torch.Tensor] | Any | None = None,
        prefix_kinds: Sequence[TokenKind] | None = None,
        patch_size: int | None = None,
        forward: Callable[[torch.Tensor], Any] | None = None,
        channels_last: bool = False,
        nhwc: bool | None = None,
        on_error: str = "raise",
        **kw,
    ):
        super().__init__(model, hook, **kw)
        if on_error not in ("raise", "skip"):
            raise UsageError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        fam = _detect(model)
        self.family = fam.name
        if preprocess is not None and not callable(preprocess):
            raise UsageError(f"preprocess must be callable (PIL image -> tensor), got {type(preprocess).__name__}")
        if preprocess is not None and hasattr(preprocess, "model_input_names"):
            preprocess = HFImageProcessor(preprocess)  # a transformers image processor
        self.preprocess = preprocess if preprocess is not None else fam.preprocess
        self.prefix_kinds = list(prefix_kinds) if prefix_kinds is not None else fam.prefix_kinds
        self.patch_size = patch_size if patch_size is not None else fam.patch_size
        self._forward = forward if forward is not None else fam.forward
        self.seq_first = fam.seq_first
        self.channels_last = channels_last
        self.on_error = on_error
        self._nhwc_auto = nhwc is None
        self.nhwc = nhwc if nhwc is not None else (
            fam.patch_size is None and any(isinstance(m, nn.Conv2d) for m in model.modules()))
        self._model_nhwc = False  # the model's weights converted (on the first batch)

    def describe(self) -> dict:
        pp = self.preprocess.to_dict() if hasattr(self.preprocess, "to_dict") else {"callable": type(self.preprocess).__qualname__}
        return {
            **super().describe(),
            "family": self.family,
            "prefix_kinds": [k.name.lower() for k in self.prefix_kinds],
            "patch_size": self.patch_size,
            "preprocess": pp,
            "on_error": self.on_error,
        }

    def load(self, item: Any) -> Any:
        """A path or a PIL image -> RGB PIL image."""
        if isinstance(item, (str, os.PathLike)):
            return load_image(item)
        if hasattr(item, "mode") and hasattr(item, "size"):
            return to_rgb(item)
        raise UsageError(f"expected an image path or a PIL image, got {type(item).__name__}")

    def pixel_values(self, items: Sequence[Any], first_id: int) -> tuple[torch.Tensor | None, list[int], list[dict]]:
        """Preprocessed ``[B', 3, H, W]`` of the readable items, their input ids, and the skipped."""
        xs, ids, skipped = [], [], []
        for i, item in enumerate(items):
            try:
                xs.append(self.preprocess(self.load(item)))
                ids.append(first_id + i)
            except ImageReadError as exc:
                if self.on_error == "raise":
                    raise
                skipped.append({"input_id": first_id + i, "input": str(item), "reason": str(exc)})
        return (torch.stack(xs) if xs else None), ids, skipped

    def encode(self, items: Sequence[Any], first_id: int) -> ActivationBatch:
        return self.run(self.prepare(items, first_id))

    def prepare(self, items: Sequence[Any], first_id: int) -> tuple:
        x, ids, skipped = self.pixel_values(items, first_id)
        return x, ids, [items[i - first_id] for i in ids], skipped

    def run(self, prepared: tuple) -> ActivationBatch:
        x, ids, items, skipped = prepared
        if x is None:  # every image of the batch was skipped
            e = torch.empty(0)
            return ActivationBatch(e.reshape(0, 0), e.long(), e.int(), e.to(torch.uint8), [], skipped)
        return self.encode_pixels(x, ids, items=items, skipped=skipped)

    def _run_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The hooked output for pixel batch ``x``, in the NHWC layout when ``nhwc`` is on."""
        if not self.nhwc:
            return self._capture(lambda: self._forward(x))
        first = not self._model_nhwc
        if first:
            self.model.to(memory_format=torch.channels_last)
            self._model_nhwc = True
        x_nhwc = x.contiguous(memory_format=torch.channels_last)
        try:
            return self._capture(lambda: self._forward(x_nhwc))
        except RuntimeError as exc:
            if not (first and self._nhwc_auto):  # only the first batch of an automatic choice falls back
                raise
            warnings.warn(f"{type(self.model).__name__} failed on channels-last input ({exc}); running it in the "
                          "usual layout (pass nhwc=False to skip the attempt)", stacklevel=3)
            self.nhwc = False
            self.model.to(memory_format=torch.contiguous_format)
            return self._capture(lambda: self._forward(x))

    def encode_pixels(self, x: torch.Tensor, ids: Sequence[int], *, items: Sequence[Any] | None = None,
                      skipped: list[dict] | None = None) -> ActivationBatch:
        """Rows of preprocessed images ``x`` [B, 3, H, W] with input ids ``ids``."""
        x = x.to(self.device, next(self.model.parameters()).dtype)
        out = self._run_pixels(x)
        if self.seq_first and out.ndim == 3 and out.shape[1] == x.shape[0]:
            out = out.transpose(0, 1)
        tokens = tokens_of(out, channels_last=self.channels_last)
        B, T, _ = tokens.shape
        if B != x.shape[0]:
            raise UsageError(f"hook {self.hook!r} gives batch {B} for {x.shape[0]} images (shape {tuple(out.shape)})")
        kinds = torch.full((B, T), int(TokenKind.PATCH), dtype=torch.uint8)
        n_prefix = 0
        if out.ndim == 2:
            kinds[:] = int(TokenKind.POOLED)
            grid = [1, 1]
        elif out.ndim == 4:
            grid = list(out.shape[1:3] if self.channels_last else out.shape[2:4])
        else:
            if self.patch_size:
                grid = [x.shape[2] // self.patch_size, x.shape[3] // self.patch_size]
                n_patches = grid[0] * grid[1]
                if T == n_patches + len(self.prefix_kinds):
                    n_prefix = len(self.prefix_kinds)
                elif T != n_patches:
                    raise UsageError(
                        f"hook {self.hook!r} gives {T} tokens; expected {n_patches} patches "
                        f"({grid[0]}x{grid[1]} of {self.patch_size} px) plus {len(self.prefix_kinds)} prefix tokens"
                    )
            else:
                n_prefix = len(self.prefix_kinds)
                grid = None
            if n_prefix:
                kinds[:, :n_prefix] = torch.tensor([int(k) for k in self.prefix_kinds], dtype=torch.uint8)
        # position: index in the token sequence; a patch's index in the grid is position - prefix
        batch = rows_from_tokens(tokens, kinds, 0)
        batch.input_id = torch.as_tensor(list(ids), dtype=torch.int64).repeat_interleave(T)
        items = items if items is not None else [None] * B
        batch.records = [
            {"input_id": int(i), "image": str(it) if isinstance(it, (str, os.PathLike)) else None,
             "grid": grid, "prefix": n_prefix}
            for i, it in zip(ids, items)
        ]
        batch.skipped = list(skipped or [])
        return self._keep(batch)
