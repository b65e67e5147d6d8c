"""The judge: a small CNN that classifies Fashion-MNIST images and scores generated ones.

Saved as a directory with ``config.json`` (the :class:`JudgeConfig` fields) and
``model.safetensors``. ``FashionJudge.predict(images)`` takes PIL images, a uint8 array /
tensor ``(N, 28, 28)`` as Fashion-MNIST stores it, or a float tensor ``(N, C, H, W)`` in
[0, 1] (the pipeline's ``output_type="pt"``): colour is averaged to grey and the image
resized to 28x28; the text-to-image pipeline's 32x32 images (28x28 content in a 2-pixel
black border, as it was trained) are cropped to their content instead.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .captions import CLASS_NAMES
from ..errors import InputNotFoundError, UsageError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class JudgeConfig:
    channels: tuple[int, ...] = (32, 64, 128)
    """Output channels of the conv stages; each stage is conv3x3-BN-ReLU + 2x2 max-pool."""
    hidden: int = 256
    """Width of the hidden fully connected layer."""
    dropout: float = 0.3
    """Dropout before each fully connected layer (training only)."""
    image_size: int = 28
    """Side of the square grey input, in pixels."""
    border: int = 2
    """Black border around the content of the zoo pipeline's images (32 = 28 + 2 * 2): inputs of
    side ``image_size + 2 * border`` are cropped to ``image_size``, other sizes are resized."""
    mean: float = 0.2860
    """Mean pixel value of Fashion-MNIST train images in [0, 1], subtracted before the network."""
    std: float = 0.3530
    """Standard deviation of Fashion-MNIST train pixels in [0, 1], divided out before the network."""
    class_names: tuple[str, ...] = CLASS_NAMES
    """Name of each output class, in label order."""

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JudgeConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UsageError(f"unknown judge config fields {sorted(unknown)}; expected some of {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class FashionJudge(nn.Module):
    """Small CNN classifier of 28x28 grey Fashion-MNIST images (logits over 10 classes)."""

    def __init__(self, config: JudgeConfig | None = None):
        super().__init__()
        self.config = config or JudgeConfig()
        layers: list[nn.Module] = []
        in_ch = 1
        size = self.config.image_size
        for i, out_ch in enumerate(self.config.channels):
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()]
            layers.append(nn.MaxPool2d(2))
            in_ch, size = out_ch, size // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(self.config.dropout),
            nn.Linear(in_ch * size * size, self.config.hidden),
            nn.ReLU(),
            nn.Dropout(self.config.dropout),
            nn.Linear(self.config.hidden, len(self.config.class_names)),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, classes)`` of normalised grey images ``(N, 1, 28, 28)`` (see :meth:`preprocess`)."""
        return self.head(self.features(pixels))

    # ---- inputs -------------------------------------------------------------------------
    def preprocess(self, images: Any) -> torch.Tensor:
        """Normalised grey ``(N, 1, S, S)`` float tensor from PIL images, uint8 ``(N, H, W)``
        arrays/tensors (a batch), or float ``(N, C, H, W)`` / ``(C, H, W)`` tensors in [0, 1]."""
        pixels = _to_unit_grey(images, self.config.image_size, self.config.border)
        device = next(self.parameters()).device
        return ((pixels - self.config.mean) / self.config.std).to(device)

    @torch.no_grad()
    def predict_proba(self, images: Any, batch_size: int = 512) -> torch.Tensor:
        """Class probabilities ``(N, classes)`` of ``images`` (any form :meth:`preprocess` takes)."""
        was_training = self.training
        self.eval()
        pixels = self.preprocess(images)
        probs = [self(pixels[i : i + batch_size]).softmax(-1) for i in range(0, len(pixels), batch_size)]
        self.train(was_training)
        return torch.cat(probs).cpu()

    def predict(self, images: Any, batch_size: int = 512) -> torch.Tensor:
        """Predicted class labels ``(N,)`` of ``images``."""
        return self.predict_proba(images, batch_size).argmax(-1)

    # ---- files --------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, dtype: torch.dtype = torch.float16) -> None:
        """Write ``config.json`` + ``model.safetensors`` (floats stored as ``dtype``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        (directory / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "FashionJudge":
        """Load a judge saved by :meth:`save_pretrained`, in float32 and eval mode."""
        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).exists():
                raise InputNotFoundError(f"{directory / name} not found: a judge directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
        model = cls(JudgeConfig.from_dict(json.loads((directory / CONFIG_NAME).read_text())))
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(directory / WEIGHTS_NAME)).items()}
        model.load_state_dict(state)
        return model.eval()


def _to_unit_grey(images: Any, size: int, border: int = 0) -> torch.Tensor:
    """Float ``(N, 1, size, size)`` tensor in [0, 1] from the input forms the judge accepts.
    Colour is averaged to grey (the same for tensors and PIL images)."""
    if hasattr(images, "convert"):  # one PIL image
        images = [images]
    if isinstance(images, (list, tuple)) and images and all(hasattr(im, "convert") for im in images):
        rgb = [torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0) for im in images]
        return torch.cat([_resize(t.permute(2, 0, 1)[None].mean(1, keepdim=True), size, border) for t in rgb])
    if isinstance(images, (torch.Tensor, np.ndarray)):
        tensor = torch.as_tensor(images)
        from_uint8 = tensor.dtype == torch.uint8
        if from_uint8:
            tensor = tensor.float() / 255.0
        elif not tensor.is_floating_point():
            raise UsageError(f"image tensors must be uint8 or float in [0, 1], got {tensor.dtype}")
        tensor = tensor.float()
        if tensor.ndim == 2:  # (H, W)
            tensor = tensor[None, None]
        elif tensor.ndim == 3:  # uint8 (N, H, W) as datasets store it; float (C, H, W) of one image
            tensor = tensor[:, None] if from_uint8 else tensor[None]
        elif tensor.ndim != 4:
            raise UsageError(f"image tensors must have shape (N, C, H, W), (N, H, W) or (H, W); got {tuple(tensor.shape)}")
        if tensor.shape[1] not in (1, 3, 4):
            raise UsageError(f"images must have 1, 3 or 4 channels in dim 1, got shape {tuple(tensor.shape)}")
        return _resize(tensor[:, :3].mean(1, keepdim=True), size, border)
    raise UsageError(
        "images must be PIL images, a uint8 array (N, 28, 28) or a float tensor (N, C, H, W) in [0, 1]; "
        f"got {type(images).__name__}"
    )


def _resize(pixels: torch.Tensor, size: int, border: int = 0) -> torch.Tensor:
    if pixels.shape[-2:] == (size, size):
        return pixels
    framed = size + 2 * border
    if border and pixels.shape[-2:] == (framed, framed):
        return pixels[..., border : border + size, border : border + size]
    return F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
