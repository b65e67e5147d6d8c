"""``visionsae zoo text-sae``: train the zoo's text SAE and fit its class concepts (assets/zoo/fashion-text-sae). See :mod:`visionsae.zoo.training.text_sae`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..zoo.training import text_sae

    parser.description = text_sae.__doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--out", default=None, help="output folder (default: assets/zoo/fashion-text-sae)")
    parser.add_argument("--hook", default=text_sae.HOOK, help=f"MiniLM module to hook (default: {text_sae.HOOK})")
    parser.add_argument("--n-latents", type=int, default=2048)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--samples", type=int, default=400_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concepts-only", action="store_true", help="keep the SAE in --out, rebuild its concept set")
    parser.add_argument("--hardening", default=None,
                        help="a `visionsae zoo harden` file whose positives join the fit (default: --out's "
                             "hardening.json when it exists; 'none': without)")


def run(args: argparse.Namespace) -> int:
    from ..zoo.training.text_sae import build

    return build(args)
