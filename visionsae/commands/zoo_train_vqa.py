"""``visionsae zoo train-vqa``: train the zoo's VQA model (reproduces assets/zoo/fashion-vqa; resumable). See :mod:`visionsae.zoo.training.train_vqa`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..zoo.training import train_vqa
    from ._args import add_zoo_run_arguments

    parser.add_argument("--out", default="assets/zoo/fashion-vqa", help="where the model folder is written")
    parser.add_argument("--workdir", default="runs/zoo/fashion-vqa", help="checkpoint (resumes when present)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vision-steps", type=int, default=5000)
    parser.add_argument("--vision-batch-size", type=int, default=128)
    parser.add_argument("--vision-lr", type=float, default=2e-3)
    parser.add_argument("--lm-steps", type=int, default=3000)
    parser.add_argument("--lm-batch-size", type=int, default=64)
    parser.add_argument("--lm-lr", type=float, default=2e-3)
    parser.add_argument("--tower-lr-scale", type=float, default=0.1, help="stage-2 learning rate of the vision tower, relative to --lm-lr")
    parser.add_argument("--shift", type=int, default=2, help="random translation of training images, in pixels")
    add_zoo_run_arguments(parser, train_vqa, 100, "the current stage")


def run(args: argparse.Namespace) -> int:
    from ..zoo.training.train_vqa import train

    return train(args)
