"""How long the web demo (demos/app.py) takes to answer one erase request on the zoo.

Measures, at the zoo's defaults (20 steps, 32x32, "a photo of a sneaker", sneaker erased):

* ``load_s``: building the app's back end (zoo pipeline, SAE, concept set);
* ``first_request_s``: the first erase (it also labels the features: a pass over the label prompts);
* ``backend_s``: later erases in the back end (stock + erased generation, features, verdict);
* ``browser_s``: a user's wait in headless Chromium, from the click on Erase until the verdict
  and both images are shown (served by Gradio on 127.0.0.1; skipped without chromium).

    python -m benchmarks.app_latency --out benchmarks/results/app_latency.json [--requests 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import time
from pathlib import Path

WAIT_ANSWER = """([sel, old]) => {
    const e = document.querySelector(sel);
    if (!e || e.querySelector('[data-testid=status-tracker]:not(.hide)') || e.querySelector('.pending')) return false;
    const text = e.querySelector('[data-testid=markdown]').innerText.trim();
    return text !== '' && text !== old;
}"""


def _stats(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs), "all": xs}


def browser_latency(url: str, requests: int, chromium: str) -> list[float]:
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(url, wait_until="networkidle")
        for i in range(requests + 1):
            page.locator("#seed input").fill(str(100 + i))  # a new seed: a new answer to wait for
            before = page.locator("#erase-status [data-testid=markdown]").inner_text().strip()
            start = time.perf_counter()
            page.locator("#erase-button").click()
            page.wait_for_function(WAIT_ANSWER, arg=["#erase-status", before], timeout=120_000)
            page.locator("#stock-image img").wait_for()
            page.locator("#erased-image img").wait_for()
            times.append(time.perf_counter() - start)
        browser.close()
    return times[1:]  # the first one warms the page up


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/app_latency.json")
    parser.add_argument("--requests", type=int, default=10, help="timed requests of each kind (default: 10)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = parser.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import torch

    torch.set_num_threads(args.threads)
    from visionsae.demos.app import build_ui, launch
    from visionsae.demos.app_backend import Eraser

    start = time.perf_counter()
    eraser = Eraser.zoo()
    load_s = time.perf_counter() - start
    prompt, names = eraser.default_prompt, eraser.default_erase
    first = eraser.erase(prompt, names, seed=0).seconds
    backend = [eraser.erase(prompt, names, seed=1 + i).seconds for i in range(args.requests)]
    result = {
        "benchmark": "app_latency",
        "setting": {"prompt": prompt, "erase": names, "mode": eraser.mode, "value": eraser.value, **eraser.settings,
                    "threads": args.threads, "requests": args.requests},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "load_s": load_s,
        "first_request_s": first,
        "backend_s": _stats(backend),
    }
    chromium = os.environ.get("VISIONSAE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if Path(chromium).is_file():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ui = build_ui(eraser)
        launch(ui, "127.0.0.1", port, block=False)
        try:
            result["browser_s"] = _stats(browser_latency(f"http://127.0.0.1:{port}/", args.requests, chromium))
        finally:
            ui.close()
    else:
        result["browser_s"] = None
        result["browser_skipped"] = f"no chromium at {chromium}"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    brief = {k: (v["median"] if isinstance(v, dict) and "median" in v else v) for k, v in result.items()
             if k.endswith("_s")}
    print(json.dumps(brief))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
