"""The web demo's blindspot-audit back end (:class:`Auditor`): open a report, run a small
audit of the zoo generator."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from .app_backend import AppError

REPORT_MARK = "<h1>Blindspot audit</h1>"  # the heading of every report visionsae.audit.report writes
MAX_REPORT_BYTES = 200 * 2**20


@dataclass
class Auditor:
    """Opens blindspot audit reports and runs small audits of the zoo generator (``visionsae eval audit``)."""

    out_dir: str | Path = "runs/app-audit"  # where audits run from the page go, one folder per run

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @staticmethod
    def name_of(path: str | None) -> str:
        return Path(path).name if path else ""

    def open_report(self, path: str | None) -> str:
        """The HTML of an audit report file, or an AppError saying why it is not one."""
        if not path:
            raise AppError("Upload a report.html written by `visionsae audit` first.")
        p = Path(path)
        if p.stat().st_size > MAX_REPORT_BYTES:
            raise AppError(f"{p.name!r} is {p.stat().st_size / 2**20:.0f} MB; reports here are read up to "
                           f"{MAX_REPORT_BYTES // 2**20} MB.")
        try:
            page = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise AppError(f"{p.name!r} is not a text file; expected the report.html of a blindspot audit.") from None
        if REPORT_MARK not in page:
            raise AppError(f"{p.name!r} is not a blindspot audit report (no 'Blindspot audit' heading); open the "
                           "report.html that `visionsae audit` or `demos/blindspot_audit.py` wrote.")
        return page

    def run_small(self, per_class: int) -> tuple[str, str]:
        """Audit the zoo generator (planted blindspots) on ``per_class`` real images per class:
        (Markdown summary, report HTML)."""
        import time

        from visionsae.eval.audit import evaluate

        per_class = int(per_class)
        if not 2 <= per_class <= 50:
            raise AppError(f"Real images per class must be between 2 and 50, got {per_class}.")
        with self._lock:
            out = Path(self.out_dir) / time.strftime("%Y%m%d-%H%M%S")
            start = time.perf_counter()
            res = evaluate(out, per_class, stability=False, second_generator=False, progress=False)
            seconds = time.perf_counter() - start
        page = (out / "report.html").read_text(encoding="utf-8")
        return format_audit(res, seconds, out), page


def format_audit(res: dict, seconds: float, out: Path) -> str:
    """What a small audit of the zoo found about its planted blindspots, as Markdown."""
    ranks, mem = res["ranks"], res["memorisation"]

    def rank(side: str) -> str:
        r = ranks[side]
        got = r["rank_of_first_class_concept"]
        return (f"the first {r['class']} concept ranks **#{got}** of {r['ranked_concepts']} {side} concepts"
                if got else f"no {r['class']} concept is ranked {side}")

    copy = ("**flagged** as a memorisation candidate" if mem["copy_flagged"] else "**not flagged**")
    if mem["copy_similarity"] is not None:
        copy += f" (cosine {mem['copy_similarity']:.3f} to its original)"
    return (f"Audit of {res['setting']['real_images']} real images against the zoo generator in {seconds:.0f} s "
            f"(folder `{out}`). Planted suppression: {rank('suppressed')}. Planted exaggeration: {rank('exaggerated')}. "
            f"The copied real image is {copy}; {mem['other_flagged']} other generated images are flagged.")
