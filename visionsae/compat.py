"""Small adapters to the libraries visionsae builds on (no heavy import at module scope)."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def diffusers_errors_only():
    """Silence diffusers' warnings (not its errors) for the duration, then restore its level.

    For warnings that are wrong for our use: "Expected types for text_encoder: CLIPTextModel,
    got BertModel" when the zoo pipeline loads its MiniLM encoder, and "modules that should be
    kept in float32: []" when ``from_pipe`` re-casts components to the dtype they already have
    (diffusers 0.42 warns even when no module needs float32)."""
    from diffusers.utils import logging as diffusers_logging

    previous = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(previous)
