"""``visionsae zoo train-judge``: train the zoo's judge (reproduces assets/zoo/judge). See :mod:`visionsae.zoo.training.train_judge`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..zoo.training import train_judge
    from ._args import add_zoo_run_arguments

    parser.add_argument("--out", default="assets/zoo/judge", help="where the trained judge is written")
    parser.add_argument("--checkpoint", default="runs/zoo/judge/state.safetensors", help="training state file (resumes when present)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--label-smoothing", type=float, default=0.05)
    parser.add_argument("--shift", type=int, default=2, help="random translation of training images, in pixels")
    parser.add_argument("--blur", type=float, default=0.5, help="share of training images blurred")
    parser.add_argument("--max-blur-sigma", type=float, default=1.0, help="largest Gaussian blur sigma, in pixels")
    add_zoo_run_arguments(parser, train_judge, 300, "the run")


def run(args: argparse.Namespace) -> int:
    from ..zoo.training.train_judge import train

    return train(args)
