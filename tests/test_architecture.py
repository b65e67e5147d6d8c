"""The layering the README's Layout promises, read from the source (every import, at module
scope or inside a function): the core never imports the drop-in pipelines or the demos, and
argparse lives in the commands only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "visionsae"
CORE = ["sae", "train", "sources", "concepts", "control", "audit", "attack", "zoo", "store", "atomic.py", "planted.py",
        "inspection.py", "errors.py", "compat.py", "memory.py"]


def _modules_imported(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = list(path.relative_to(root).parent.parts)  # visionsae/zoo/t2i.py -> visionsae.zoo
    if package in (["pipelines"], ["demos"]):
        package = ["visionsae", *package]  # installed as visionsae.pipelines / visionsae.demos
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names |= {f"{module}.{a.name}" for a in node.names}  # `from visionsae import pipelines`
    return names


def _files(*parts: str) -> list[Path]:
    out: list[Path] = []
    for part in parts:
        p = PACKAGE / part
        out += sorted(p.rglob("*.py")) if p.is_dir() else ([p] if p.exists() else [])
    return out


def test_the_layout_is_what_this_test_reads():
    """The folders this test checks exist, so an emptied list cannot pass by reading nothing."""
    assert len(_files(*CORE)) > 40
    assert (PACKAGE / "commands" / "__init__.py").exists()


@pytest.mark.parametrize("path", _files(*CORE), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_never_imports_pipelines_or_demos(path):
    bad = sorted(n for n in _modules_imported(path)
                 if n.split(".")[:2] in (["visionsae", "pipelines"], ["visionsae", "demos"]) or n.split(".")[0] in ("pipelines", "demos"))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_argparse_only_in_the_commands():
    users = sorted(str(p.relative_to(ROOT)) for p in list(PACKAGE.rglob("*.py")) + list((ROOT / "pipelines").glob("*.py"))
                   + list((ROOT / "demos").glob("*.py"))
                   if "argparse" in _modules_imported(p) and (PACKAGE / "commands") not in p.parents)
    assert users == []


def test_the_reader_sees_an_import_of_pipelines(tmp_path):
    """The check itself: a function-level relative import of the pipelines is caught."""
    zoo = tmp_path / "visionsae" / "zoo"
    zoo.mkdir(parents=True)
    f = zoo / "m.py"
    f.write_text("def g():\n    from ..pipelines.itd import X\n    import argparse\n")
    names = _modules_imported(f, root=tmp_path)
    assert "visionsae.pipelines.itd" in names and "argparse" in names


def _sources() -> list[Path]:
    return sorted(list(PACKAGE.rglob("*.py")) + list((ROOT / "pipelines").glob("*.py")) + list((ROOT / "demos").glob("*.py")))


def test_every_module_is_under_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in _sources() if (n := p.read_text().count("\n")) >= 500}
    assert long == {}


def test_every_function_is_under_80_lines_or_says_why():
    """A longer function carries a comment just above its ``def`` that says why it is one piece."""
    long = []
    for p in _sources():
        lines = p.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if node.end_lineno - start + 1 >= 80 and not lines[start - 2].lstrip().startswith("#"):
                    long.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - start + 1} lines)")
    assert long == []
