"""``make bench`` (benchmarks.run_all) runs every benchmark module the README lists."""

import re
from pathlib import Path

from benchmarks.run_all import BENCHMARKS

ROOT = Path(__file__).resolve().parents[1]


def test_make_bench_runs_every_benchmark_module_and_the_readme_lists_each():
    modules = {p.stem for p in (ROOT / "benchmarks").glob("*.py")} - {"__init__", "run_all"}
    assert {module.removeprefix("benchmarks.") for _, module, _, _ in BENCHMARKS.values()} == modules
    readme = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"python -m benchmarks\.(\w+)", readme))
    assert modules <= listed
