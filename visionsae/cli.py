"""The ``visionsae`` command line.

Each command lives in its own module with two functions:

* ``add_arguments(parser)`` declares its flags (keep heavy imports out of module scope so
  ``--help`` stays fast), and
* ``run(args) -> int`` does the work and returns the exit status.

``COMMANDS`` maps a command path (``("eval", "zoo")`` is ``visionsae eval zoo``) to that
module and a one-line help. A new command is one new module and one new row here.

Failures a user can fix (bad input, a missing file) are raised as ``CLIError``,
``ValueError``, ``FileNotFoundError`` or ``KeyError`` and printed as one line
``visionsae: error: ...`` with exit status 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import json
import sys
import textwrap
import types
import typing
from typing import Any, Sequence

# command path -> (module, one-line help)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("demo",): ("visionsae.demo_main", "Run the main demo on the embedded zoo model (offline)."),
    ("app",): ("visionsae.demos.app", "Serve the web demo (Gradio, offline, 127.0.0.1): erase concepts, unlearn them in the VQA model, audits."),
    ("train",): ("visionsae.train.command", "Train a sparse autoencoder."),
    ("extract",): ("visionsae.sources.command", "Store a model's activations at a hook point (resumable)."),
    ("inspect",): ("visionsae.inspect_command", "An SAE's statistics and its features' top-activating inputs."),
    ("eval", "zoo"): ("visionsae.eval.zoo", "Measure the zoo's judge, text-to-image and VQA models against their quality bars."),
    ("eval", "planted"): (
        "visionsae.eval.planted",
        "Train SAEs on planted-feature data and report recovery of the true directions.",
    ),
    ("concepts",): ("visionsae.concepts.command", "Build or calibrate a concept set (features + zero-shot classifier thresholds)."),
    ("erase",): ("visionsae.control.erase_command", "Generate with concepts erased (ItD) next to the stock pipeline."),
    ("eval", "erasure"): ("visionsae.eval.erasure", "ItD erasure on the zoo: judge accuracy, pixel identity, classifier recall, latency, memory."),
    ("eval", "unlearning"): ("visionsae.eval.unlearning", "SAUCE unlearning on the zoo VQA: unlearned / other class accuracy, footwear answers (JSON)."),
    ("eval", "sae"): (
        "visionsae.eval.sae",
        "SAE quality: FVU, L0, dead/dense, AFA check, dark matter, stability, planted recovery, concept agreement.",
    ),
    ("attack",): ("visionsae.eval.attack", "Red-team ItD on the zoo: attack success rate of text, white-box and concept-vector attacks (JSON)."),
    ("audit",): ("visionsae.audit.command", "Find a generator's blindspots against real images (HTML report + JSON)."),
    ("eval", "audit"): ("visionsae.eval.audit", "Blindspot audit on the zoo: every class in turn suppressed (omitted, ItD-erased) and exaggerated, copies, over seeds."),
}

# groups of commands (the first words of multi-word command paths) -> help
GROUPS: dict[str, str] = {
    "eval": "Evaluations (JSON out).",
}


from .errors import UsageError


class CLIError(UsageError):
    """A failure the user can fix; printed as one line without a traceback."""


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (read from its source)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def _scalar_type(annotation: Any) -> tuple[type, bool]:
    """(base type, optional) of an annotation such as ``int | None``."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"Any": Any}, {})  # field annotations of our own dataclasses
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        base = [a for a in args if a is not type(None)]
        return base[0], len(base) < len(args)
    return annotation, False


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = (), title: str | None = None) -> None:
    """One ``--flag`` per field of ``cls``, with the field's docstring as help.

    ``None`` is written ``none`` on the command line; dict fields take JSON.
    """
    group = parser.add_argument_group(title or cls.__name__)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        base, optional = _scalar_type(f.type)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif not required:
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "required"
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{docs.get(f.name, '')} (default: {default})".replace("%", "%%")
        if base is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        if typing.get_origin(base) is dict or base is dict:
            convert: Any = json.loads
        else:
            convert = base

        def parse(text: str, convert=convert, optional=optional, name=flag):
            if optional and text.lower() == "none":
                return None
            try:
                return convert(text)
            except (ValueError, TypeError) as exc:
                raise argparse.ArgumentTypeError(f"{name} expects {getattr(convert, '__name__', 'a value')}, got {text!r}") from exc

        group.add_argument(flag, dest=f.name, type=parse, default=None, required=required, help=help_text, metavar=f.name.upper())


def dataclass_from_args(cls: type, args: argparse.Namespace, **overrides: Any):
    """Build ``cls`` from the flags given (unset flags keep the dataclass defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    try:
        return cls(**{**values, **overrides})
    except UsageError as exc:  # name the flag the user typed ("--grad-clip"), not the field
        msg = str(exc)
        for name in values:
            msg = msg.replace(f"{cls.__name__}.{name} ", f"--{name.replace('_', '-')} ")
        raise UsageError(msg) from None


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
        module = importlib.import_module(module_name)
        module.add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except (CLIError, ValueError, FileNotFoundError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"visionsae: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("visionsae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
