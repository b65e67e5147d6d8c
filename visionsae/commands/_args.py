"""Argument helpers shared by the commands: one ``--flag`` per dataclass field (its docstring
as help), the dataclass built back from the flags, and the zoo's ItD edit flags."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
import types
import typing
from typing import Any, Sequence

from ..errors import UsageError


def add_erase_arguments(parser: argparse.ArgumentParser) -> None:
    """--mode / --value of an ItD edit on the zoo, with the zoo's measured defaults."""
    from ..zoo.settings import ERASE_MODE, ERASE_VALUE

    parser.add_argument("--mode", choices=["zero", "scale"], default=ERASE_MODE,
                        help=f"deactivate by zeroing the features or scaling them by --value (default: {ERASE_MODE})")
    parser.add_argument("--value", type=float, default=ERASE_VALUE,
                        help=f"factor of --mode scale (default: {ERASE_VALUE:g}, chosen on the calibrate prompt family)")


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


def add_zoo_run_arguments(parser: argparse.ArgumentParser, script, checkpoint_every: int, stop_what: str) -> None:
    """What the zoo's resumable training scripts share: ``script``'s docstring as the description,
    --threads, --checkpoint-every and --max-steps."""
    parser.description = script.__doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: same result on any machine, and fastest on a shared one)")
    parser.add_argument("--checkpoint-every", type=int, default=checkpoint_every)
    parser.add_argument("--max-steps", type=int, default=None, help=f"stop {stop_what} after this many steps (to time a run)")
