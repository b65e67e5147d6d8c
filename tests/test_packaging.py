"""The distribution's package list: every package folder is installed, under one top-level name."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed_under_visionsae():
    cfg = _setuptools()
    mapped = {name: ROOT / folder for name, folder in cfg["package-dir"].items()}
    on_disk = set()
    for base_name, base in [("visionsae", ROOT / "visionsae"), *mapped.items()]:
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            on_disk.add(".".join((base_name, *rel)))
    assert set(cfg["packages"]) == on_disk
    assert {p.split(".")[0] for p in cfg["packages"]} == {"visionsae"}


def test_pipeline_classes_import_from_the_package():
    import visionsae.pipelines as pipelines

    assert pipelines.ItDStableDiffusionPipeline.__module__ == "visionsae.pipelines.itd"
    assert pipelines.SAUCELlavaForConditionalGeneration.__module__ == "visionsae.pipelines.sauce"
    assert set(pipelines.__all__) <= set(dir(pipelines))
