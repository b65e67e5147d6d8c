"""The zoo: tiny real models trained by this project on Fashion-MNIST.

* ``load_fashion_pipeline()``: a diffusers ``StableDiffusionPipeline`` (MiniLM text encoder,
  small VAE and UNet) that draws 32x32 Fashion-MNIST-like images from prompts;
* ``load_fashion_judge()``: a CNN classifier that scores images (the ground truth of
  erasure evaluations);
* ``load_fashion_vqa()``: a transformers ``LlavaForConditionalGeneration`` and its
  ``LlavaProcessor`` that answer short questions about Fashion-MNIST images.

Weights live in ``assets/zoo/`` of the repository and ship inside the distribution as
``visionsae/zoo/assets/`` (``VISIONSAE_ZOO`` overrides the folder; :func:`zoo_dir` finds it);
the model card is ``assets/zoo/README.md``. Everything loads offline. Heavy libraries are
imported when a loader is called, not when this package is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

from .captions import CLASS_NAMES, NUM_CLASSES
from ..errors import InputNotFoundError

__all__ = [
    "CLASS_NAMES",
    "NUM_CLASSES",
    "zoo_dir",
    "load_fashion_pipeline",
    "load_fashion_judge",
    "load_fashion_vqa",
]

T2I_DIR, JUDGE_DIR, VQA_DIR = "fashion-t2i", "judge", "fashion-vqa"


def zoo_dir() -> Path:
    """The folder holding the zoo's weights: ``$VISIONSAE_ZOO``, else the package data of an
    installed distribution (``visionsae/zoo/assets``, pyproject maps ``assets/zoo`` there), else
    the source checkout's ``assets/zoo`` (an editable install reads the repository itself)."""
    if os.environ.get("VISIONSAE_ZOO"):
        return Path(os.environ["VISIONSAE_ZOO"])
    here = Path(__file__).resolve().parent
    installed = here / "assets"
    return installed if installed.is_dir() else here.parents[1] / "assets" / "zoo"


def _model_dir(path: str | os.PathLike | None, name: str) -> Path:
    folder = Path(path) if path is not None else zoo_dir() / name
    if not folder.is_dir():
        raise InputNotFoundError(
            f"zoo model folder {folder} not found; it ships in the distribution (visionsae/zoo/assets/{name}) "
            f"and the repository (assets/zoo/{name}); set VISIONSAE_ZOO to the folder holding it"
        )
    return folder


def load_fashion_pipeline(path: str | os.PathLike | None = None, device: str = "cpu", dtype=None):
    """The fashion text-to-image ``StableDiffusionPipeline`` (float32 unless ``dtype`` says).

    Sample as with any Stable Diffusion pipeline; the defaults the model card measured are in
    ``pipe.zoo_settings`` (32x32, 20 steps, the guidance scale)::

        pipe = load_fashion_pipeline()
        image = pipe("a photo of a sneaker", generator=torch.Generator().manual_seed(0),
                     **pipe.zoo_settings).images[0]
    """
    import torch

    from .t2i import load_pipeline, read_settings

    folder = _model_dir(path, T2I_DIR)
    pipe = load_pipeline(folder, device=device, dtype=dtype or torch.float32)
    settings = read_settings(folder)
    pipe.zoo_settings = {k: settings[k] for k in ("height", "width", "num_inference_steps", "guidance_scale")}
    return pipe


def load_fashion_judge(path: str | os.PathLike | None = None, device: str = "cpu"):
    """The Fashion-MNIST judge (:class:`visionsae.zoo.judge.FashionJudge`), float32, eval mode."""
    from .judge import FashionJudge

    return FashionJudge.from_pretrained(_model_dir(path, JUDGE_DIR)).to(device)


def load_fashion_vqa(path: str | os.PathLike | None = None, device: str = "cpu"):
    """The fashion VQA model as :class:`visionsae.zoo.vqa.FashionVQA` (``.model`` is the
    ``LlavaForConditionalGeneration``, ``.processor`` the ``LlavaProcessor``)."""
    from .vqa import FashionVQA

    return FashionVQA.from_pretrained(_model_dir(path, VQA_DIR), device=device)
