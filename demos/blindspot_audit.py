"""Blindspot audit script: which concepts does a generator suppress or exaggerate, and does it
copy real images? Writes a self-contained HTML report (open it in any browser) and JSON.

    python demos/blindspot_audit.py                 # the zoo, offline: Fashion-MNIST against the zoo
                                                    # generator with planted blindspots and a copy
    python demos/blindspot_audit.py --real DIR --generated DIR [--model efficientnet-lite0] [...]
    python demos/blindspot_audit.py --jsonl pairs.jsonl [...]   # {caption, real, generated} records

With --real / --jsonl every flag of `visionsae audit` applies (see `visionsae audit --help`).
"""

from __future__ import annotations

import sys
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]
if (_CHECKOUT / "visionsae").is_dir():  # run from a checkout without installing (installed: visionsae.demos)
    sys.path.insert(0, str(_CHECKOUT))

from visionsae.cli import main as cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("--real", "--jsonl", "-h", "--help") for a in argv):
        return cli(["audit", *argv])
    out = "runs/blindspot-audit"
    print("Auditing the zoo generator against Fashion-MNIST (planted: sneakers erased, trousers over-generated, "
          f"one copied image); 20 images per class, offline. Report: {out}/report.html", flush=True)
    return cli(["eval", "audit", "--single", "--out-dir", out, "--per-class", "20", "--no-stability", *argv])


if __name__ == "__main__":
    sys.exit(main())
