"""scripts/system-packages.sh, the Makefile's Debian step, where it cannot install: one line
naming what to install, and make goes on. (As root with apt it installs; that path is proved
on a bare Debian chroot, see the issue-18 report, and runs on every CI machine.)"""

import sys
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "system-packages.sh"


def _run(tmp_path, target, uid, with_apt, python=None):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")  # who the script thinks it is
    (bin_dir / "id").chmod(0o755)
    if with_apt:
        (bin_dir / "apt-get").write_text("#!/bin/sh\necho apt-get must not run here >&2\nexit 1\n")
        (bin_dir / "apt-get").chmod(0o755)
    empty = tmp_path / "empty"
    empty.mkdir(exist_ok=True)
    env = {"PATH": str(bin_dir), "VISIONSAE_FASHION_MNIST": str(empty), "VISIONSAE_CHROMIUM": str(empty / "chromium")}
    args = ["/bin/sh", str(SCRIPT), target] + ([python] if python else [])
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)


def test_without_root_one_line_names_the_packages(tmp_path):
    out = _run(tmp_path, "test", 1000, with_apt=True)
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.splitlines()
    assert line.startswith("visionsae: 'make test' needs Debian packages it cannot install without root: sudo apt-get install")
    assert "dataset-fashion-mnist" in line and "chromium" in line
    app = _run(tmp_path, "app", 1000, with_apt=True).stdout
    assert "dataset-fashion-mnist" in app and "chromium" not in app  # the app needs the data only


def test_without_apt_one_line_says_so(tmp_path):
    out = _run(tmp_path, "test", 0, with_apt=False)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 1
    assert "no apt-get here" in out.stdout and "dataset-fashion-mnist" in out.stdout


def test_a_python_that_cannot_make_a_venv_needs_python3_venv(tmp_path):
    no_venv = tmp_path / "python3"
    no_venv.write_text("#!/bin/sh\nexit 1\n")  # `import ensurepip` fails, as on Debian without python3-venv
    no_venv.chmod(0o755)
    out = _run(tmp_path, "demo", 1000, with_apt=True, python=str(no_venv))
    assert "sudo apt-get install python3-venv" in out.stdout
    assert _run(tmp_path, "demo", 1000, with_apt=True, python=sys.executable).stdout == ""  # the demo needs nothing else


def test_unknown_target_is_an_error(tmp_path):
    out = _run(tmp_path, "bench", 0, with_apt=True)
    assert out.returncode == 2 and "unknown target 'bench'" in out.stderr
