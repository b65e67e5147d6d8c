"""``visionsae zoo train-t2i``: train the zoo's text-to-image model (reproduces assets/zoo/fashion-t2i; resumable). See :mod:`visionsae.zoo.training.train_t2i`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..zoo.training import train_t2i
    from ._args import add_zoo_run_arguments

    parser.add_argument("--out", default="assets/zoo/fashion-t2i", help="where the pipeline folder is written")
    parser.add_argument("--workdir", default="runs/zoo/fashion-t2i", help="checkpoint and caches (resumes when present)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=1200)
    parser.add_argument("--vae-batch-size", type=int, default=64)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--kl-weight", type=float, default=1e-6)
    parser.add_argument("--unet-steps", type=int, default=3000)
    parser.add_argument("--unet-batch-size", type=int, default=128)
    parser.add_argument("--unet-lr", type=float, default=1e-3)
    parser.add_argument("--caption-dropout", type=float, default=0.1, help="probability of training on the empty prompt")
    parser.add_argument("--min-snr-gamma", type=float, default=5.0)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    add_zoo_run_arguments(parser, train_t2i, 100, "the current stage")


def run(args: argparse.Namespace) -> int:
    from ..zoo.training.train_t2i import train

    return train(args)
