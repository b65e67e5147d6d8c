"""``make bench``: run every benchmark, each in its own process, JSON into benchmarks/results/.

Each entry of BENCHMARKS is (name, python executable, module, extra arguments); the
module is run as ``python -m MODULE --out benchmarks/results/NAME.json ...``. Peer
libraries run in ``.venv-peers`` (created here on first use) so they never share the
project's environment. A benchmark that fails is reported and the others still run;
the exit status is non-zero if any failed.

    python -m benchmarks.run_all [--only NAME ...] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PEERS = ROOT / ".venv-peers"

# name -> (environment, module, args, quick args)
BENCHMARKS: dict[str, tuple[str, str, list[str], list[str]]] = {
    "train_throughput": ("project", "benchmarks.train_throughput", [], ["--setting", "default", "--samples", "204800"]),
    "peer_sparsify": ("peers", "benchmarks.peer_sparsify", [], ["--samples", "204800"]),
    "peer_saelens": ("peers", "benchmarks.peer_saelens", [], ["--samples", "204800"]),
    "train_vs_sparsify": ("project", "benchmarks.train_vs_sparsify", [], ["--samples", "204800", "--repeats", "1"]),
    "train_sweep": ("project", "benchmarks.train_sweep", [], ["--sizes", "4096,16384", "--steps", "5", "--repeats", "1"]),
    "extract_throughput": ("project", "benchmarks.extract_throughput", [], ["--prompts", "256", "--images", "16", "--repeats", "1"]),
    "store_read": ("project", "benchmarks.store_read", [], []),
    "audit_throughput": ("project", "benchmarks.audit_throughput", [], ["--images", "64", "--repeats", "1"]),
    "app_latency": ("project", "benchmarks.app_latency", [], ["--requests", "3"]),
    "attack_asr": ("project", "benchmarks.attack_asr", [], ["--erase", "sneaker", "--prompts", "2"]),
    "interop": ("peers", "benchmarks.interop", [], []),
    "erasure_memory": ("project", "benchmarks.erasure_memory", ["--dense"], ["--tokens", "77,512", "--n-latents", "131072"]),
}


# the peer libraries, at the versions the README's figures and tests/sae/interop/ come from
# (both install under the torch pin of constraints.txt)
PEER_PACKAGES = ["eai-sparsify==1.3.3", "sae-lens==6.54.12"]


def peers_python() -> str:
    py = PEERS / "bin" / "python"
    if not py.exists():
        print(f"creating .venv-peers ({', '.join(PEER_PACKAGES)}) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEERS)], check=True)
    if subprocess.run([str(py), "-c", "import sparsify, sae_lens"], capture_output=True).returncode != 0:
        subprocess.run([str(py), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), *PEER_PACKAGES], check=True)
    return str(py)


def check_peers(python: str) -> None:
    """Check that the peer baselines run at the installed peers' own defaults (each module's
    ``--check``); a failed check stops ``make bench`` before any peer figure is written."""
    for module in ("benchmarks.peer_sparsify", "benchmarks.peer_saelens"):
        subprocess.run([python, "-m", module, "--check"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="run only these")
    parser.add_argument("--quick", action="store_true", help="smaller budgets (a smoke run)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if any(env == "peers" or module in ("benchmarks.train_vs_sparsify", "benchmarks.train_sweep")
           for name, (env, module, _, _) in BENCHMARKS.items() if not args.only or name in args.only):
        check_peers(peers_python())
    summary, failed = {}, []
    for name, (env, module, extra, quick) in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        python = peers_python() if env == "peers" else sys.executable
        out = RESULTS / f"{name}.json"
        cmd = [python, "-m", module, "--out", str(out), *(quick if args.quick else extra)]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if proc.returncode != 0 or not out.exists():
            failed.append(name)
            continue
        summary[name] = {"seconds": time.perf_counter() - start, "result": json.loads(out.read_text())}
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {RESULTS / 'summary.json'}" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
