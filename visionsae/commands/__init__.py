"""The ``visionsae`` commands: one module a command, the only place argparse is used.

Each command module has two functions:

* ``add_arguments(parser)`` declares its flags (keep heavy imports out of module scope so
  ``--help`` stays fast), and
* ``run(args) -> int`` reads the flags, calls the library and returns the exit status.

``COMMANDS`` maps a command path (``("eval", "zoo")`` is ``visionsae eval zoo``) to its module
and a one-line help. A new command is one new module and one new row here.

Failures a user can fix (bad input, a missing file) are raised as
:class:`visionsae.errors.UsageError` and printed as one line ``visionsae: error: ...`` with exit
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from ..errors import UsageError

# command path -> (module under visionsae.commands, one-line help)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("demo",): ("demo", "Run the main demo on the embedded zoo model (offline)."),
    ("app",): ("app", "Serve the web demo (Gradio, offline, 127.0.0.1): erase concepts, unlearn them in the VQA model, audits."),
    ("train",): ("train", "Train a sparse autoencoder."),
    ("extract",): ("extract", "Store a model's activations at a hook point (resumable)."),
    ("inspect",): ("inspect_sae", "An SAE's statistics and its features' top-activating inputs."),
    ("concepts",): ("concepts", "Build or calibrate a concept set (features + zero-shot classifier thresholds)."),
    ("erase",): ("erase", "Generate with concepts erased (ItD) next to the stock pipeline."),
    ("attack",): ("eval_attack", "Red-team ItD on the zoo: attack success rate of text, white-box and concept-vector attacks (JSON)."),
    ("audit",): ("audit", "Find a generator's blindspots against real images (HTML report + JSON)."),
    ("eval", "zoo"): ("eval_zoo", "Measure the zoo's judge, text-to-image and VQA models against their quality bars."),
    ("eval", "planted"): ("eval_planted", "Train SAEs on planted-feature data and report recovery of the true directions."),
    ("eval", "erasure"): ("eval_erasure", "ItD erasure on the zoo: judge accuracy, pixel identity, classifier recall, latency, memory."),
    ("eval", "unlearning"): ("eval_unlearning", "SAUCE unlearning on the zoo VQA: unlearned / other class accuracy, footwear answers (JSON)."),
    ("eval", "sae"): ("eval_sae", "SAE quality: FVU, L0, dead/dense, AFA check, dark matter, stability, planted recovery, concept agreement."),
    ("eval", "audit"): ("eval_audit", "Blindspot audit on the zoo: every class in turn suppressed (omitted, ItD-erased) and exaggerated, copies, over seeds."),
    ("zoo", "train-judge"): ("zoo_train_judge", "Train the zoo's judge (reproduces assets/zoo/judge)."),
    ("zoo", "train-t2i"): ("zoo_train_t2i", "Train the zoo's text-to-image model (reproduces assets/zoo/fashion-t2i; resumable)."),
    ("zoo", "train-vqa"): ("zoo_train_vqa", "Train the zoo's VQA model (reproduces assets/zoo/fashion-vqa; resumable)."),
    ("zoo", "text-sae"): ("zoo_text_sae", "Train the zoo's text SAE and fit its class concepts (assets/zoo/fashion-text-sae)."),
    ("zoo", "vqa-sae"): ("zoo_vqa_sae", "Train the zoo VQA's SAE (FAST and shuffled) and its class concepts (assets/zoo/fashion-vqa-sae)."),
    ("zoo", "harden"): ("zoo_harden", "Attack-style select-family prompts drawn as their class (hardening.json; optional, not shipped)."),
}

# groups of commands (the first words of multi-word command paths) -> help
GROUPS: dict[str, str] = {
    "eval": "Evaluations (JSON out).",
    "zoo": "Rebuild the zoo's models (each reproduces its shipped folder; see assets/zoo/README.md).",
}

__all__ = ["COMMANDS", "GROUPS", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visionsae",
        description="Sparse autoencoders to see and control concepts in vision and diffusion models.",
    )
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for path in sorted(COMMANDS):
        module_name, help_text = COMMANDS[path]
        if len(path) == 1:
            sub = top.add_parser(path[0], help=help_text, description=help_text)
        else:
            group, name = path
            if group not in groups:
                gp = top.add_parser(group, help=GROUPS.get(group, ""), description=GROUPS.get(group, ""))
                groups[group] = gp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
            sub = groups[group].add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(f"{__name__}.{module_name}")
        module.add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module = args._module
    for name in ("_module", "command", "subcommand"):  # a command sees its own flags only
        vars(args).pop(name, None)
    try:
        return int(module.run(args) or 0)
    except UsageError as exc:  # a mistake the user can fix; anything else is a bug and keeps its traceback
        print(f"visionsae: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("visionsae: interrupted", file=sys.stderr)
        return 130
