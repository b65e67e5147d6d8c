"""Drop-in diffusers / transformers pipelines with SAE feature edits (ItD, SAUCE).

Installed as ``visionsae.pipelines``::

    from visionsae.pipelines import ItDStableDiffusionPipeline, SAUCELlavaForConditionalGeneration

The classes are imported on first use, so importing this package does not import diffusers
or transformers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ItDStableDiffusionPipeline": "itd",
    "ItDStableDiffusionXLPipeline": "itd",
    "ItDStableDiffusion3Pipeline": "itd",
    "ItDFluxPipeline": "itd",
    "ItDPipelineOutput": "itd",
    "ItDXLPipelineOutput": "itd",
    "ItDSD3PipelineOutput": "itd",
    "ItDFluxPipelineOutput": "itd",
    "SAUCELlavaForConditionalGeneration": "sauce",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
