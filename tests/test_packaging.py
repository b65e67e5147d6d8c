"""The distribution: one top-level import name, every package folder listed, the zoo inside
the wheel, and an installed (non-editable) wheel running the zoo's commands from another folder."""

import base64
import hashlib
import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "assets" / "zoo"
# what a fresh clone does not have, left out of the copy the wheel is built from
NOT_SOURCE = {".git", ".venv", ".venv-peers", "build", "dist", "runs", "test-artifacts", "__pycache__", ".pytest_cache",
              ".hypothesis", "results"}


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed_under_visionsae():
    cfg = _setuptools()
    mapped = {name: ROOT / folder for name, folder in cfg["package-dir"].items()}
    code = set()
    for base_name, base in [("visionsae", ROOT / "visionsae"), *mapped.items()]:
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            code.add(".".join((base_name, *rel)))
    data = {p for p in cfg["packages"] if p.startswith("visionsae.zoo.assets")}  # the zoo's weights, no code
    assert set(cfg["packages"]) == code | data
    assert all((mapped["visionsae.zoo.assets"] / Path(*p.split(".")[3:])).is_dir() for p in data)
    assert {p.split(".")[0] for p in cfg["packages"]} == {"visionsae"}


def test_pipeline_classes_import_from_the_package():
    import visionsae.pipelines as pipelines

    assert pipelines.ItDStableDiffusionPipeline.__module__ == "visionsae.pipelines.itd"
    assert pipelines.SAUCELlavaForConditionalGeneration.__module__ == "visionsae.pipelines.sauce"
    assert set(pipelines.__all__) <= set(dir(pipelines))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    """(the wheel, the build's output) built from a copy of the source tree as a clone has it."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=lambda d, names: [n for n in names if n in NOT_SOURCE or n.endswith(".egg-info")])
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = (tmp / "dist").glob("visionsae-*.whl")
    return whl, proc.stdout + proc.stderr


def _record(whl: Path) -> dict[str, str]:
    """path -> sha256 (urlsafe base64, as RECORD writes it) of every file in the wheel."""
    with zipfile.ZipFile(whl) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/RECORD")]
        rows = csv.reader(io.StringIO(z.read(name).decode()))
        return {row[0]: row[1].removeprefix("sha256=") for row in rows}


def test_wheel_claims_only_the_visionsae_import_name(wheel):
    whl, log = wheel
    record = _record(whl)
    tops = {path.split("/")[0] for path in record}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"visionsae"}
    with zipfile.ZipFile(whl) as z:
        (top_level,) = [n for n in z.namelist() if n.endswith(".dist-info/top_level.txt")]
        assert z.read(top_level).decode().split() == ["visionsae"]
    assert "visionsae/pipelines/itd.py" in record and "visionsae/demos/app.py" in record
    # setuptools names every data folder it would stop shipping if the package list missed it
    assert "is absent from the `packages` configuration" not in log


def test_wheel_ships_every_zoo_file_unchanged(wheel):
    record = _record(wheel[0])
    files = [f for f in ZOO.rglob("*") if f.is_file()]
    assert len(files) >= 20
    for f in files:
        digest = base64.urlsafe_b64encode(hashlib.sha256(f.read_bytes()).digest()).rstrip(b"=").decode()
        assert record.get(f"visionsae/zoo/assets/{f.relative_to(ZOO).as_posix()}") == digest, f


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """(environment, command folder, working folder): the wheel installed on its own (not the
    editable checkout) and an empty working folder elsewhere."""
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target),
                           str(wheel[0])], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the wheel's folder comes first on sys.path, before the editable install's finder
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("VISIONSAE_ZOO", None)
    cwd = tmp_path_factory.mktemp("elsewhere")
    return env, target / "bin", cwd


def test_installed_wheel_finds_its_own_zoo(installed):
    env, _, cwd = installed
    out = subprocess.run([sys.executable, "-c", "import visionsae, visionsae.zoo as z; print(visionsae.__file__); "
                          "print(z.zoo_dir())"], env=env, cwd=cwd, capture_output=True, text=True, check=True)
    module, zoo = out.stdout.split()
    target = Path(env["PYTHONPATH"])
    assert Path(module).is_relative_to(target) and Path(zoo) == target / "visionsae" / "zoo" / "assets"


def test_installed_wheel_runs_demo_app_and_eval_zoo_from_another_folder(installed):
    """The console script serves the app while ``visionsae demo`` and ``visionsae eval zoo`` run
    (one process, so imports are paid once), all from an empty folder and offline."""
    from gradio_client import Client

    env, bin_dir, cwd = installed
    port = _free_port()
    server = subprocess.Popen([str(bin_dir / "visionsae"), "app", "--port", str(port), "--no-vqa", "--no-audit"],
                              env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        commands = ("from visionsae.cli import main; "
                    "assert main(['demo', '--prompt', 'a photo of a sneaker', '--prompt', 'a dress on a white background']) == 0; "
                    "assert main(['eval', 'zoo', '--models', 'judge', '--judge-images', '500', '--out', 'zoo.json']) == 0")
        jobs = subprocess.run([sys.executable, "-c", commands], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
        assert jobs.returncode == 0, jobs.stdout + jobs.stderr
        decisions = json.loads((cwd / "runs" / "demo" / "decisions.json").read_text())
        assert [d["prompt"] for d in decisions] == ["a photo of a sneaker", "a dress on a white background"]
        assert [d["flagged"] for d in decisions] == [["sneaker"], []]
        assert (cwd / "runs" / "demo" / "demo.png").stat().st_size > 0
        report = json.loads((cwd / "zoo.json").read_text())
        assert report["judge"]["images"] == 500 and report["passed"]["judge_test_accuracy"]

        lines = []
        for line in server.stdout:  # the app prints its address once its features are labelled
            lines.append(line)
            if f"127.0.0.1:{port}" in line:
                break
        assert server.poll() is None, "".join(lines)
        for _ in range(300):
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:  # not yet serving
                time.sleep(0.2)
        status, stock, erased, verdict, _ = client.predict("a photo of a sneaker", ["sneaker"], "", "", "scale", -2.0, 0, 4,
                                                           api_name="/erase")
        assert "seed 0, 4 steps" in status and verdict.startswith("**Erased: sneaker.**")
        assert Path(stock).is_file() and Path(erased).is_file()
    finally:
        server.terminate()
        server.wait(timeout=60)
