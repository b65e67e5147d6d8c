"""``visionsae zoo vqa-sae``: train the zoo VQA's SAE (FAST and shuffled) and its class concepts (assets/zoo/fashion-vqa-sae). See :mod:`visionsae.zoo.training.vqa_sae`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..zoo.training import vqa_sae

    parser.description = vqa_sae.__doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--out", default=None, help=f"output folder (default: assets/zoo/{vqa_sae.SAE_DIR})")
    parser.add_argument("--layer", type=int, default=vqa_sae.LAYER, help=f"Llama decoder layer to hook (default: {vqa_sae.LAYER})")
    parser.add_argument("--n-latents", type=int, default=1024)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--conversations", type=int, default=12_000, help="training conversations (one per train image)")
    parser.add_argument("--heldout", type=int, default=2_000, help="held-out conversations for the FVU comparison")
    parser.add_argument("--samples", type=int, default=1_500_000, help="training rows per variant")
    parser.add_argument("--variants", default="fast,shuffled", help="comma-separated variants to train and compare")
    parser.add_argument("--ship", choices=["best", *vqa_sae.VARIANTS], default="fast",
                        help="which variant to save in --out (default fast; best: lowest held-out FVU over all tokens)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concepts-only", action="store_true", help="keep the SAE in --out, rebuild its concept set")


def run(args: argparse.Namespace) -> int:
    from ..zoo.training.vqa_sae import build

    return build(args)
