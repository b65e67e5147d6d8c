"""Blindspot-audit throughput and memory: the audit end to end (images/s) against the bare
backbone forward on the same images in the same run, and the audit's peak memory at 1x and
4x the number of images (each in a fresh process).

Real EfficientNet-Lite0 (block 15 at 128 px, the `visionsae eval audit` backbone) on real
Fashion-MNIST test images written as PNG files, half "real" and half "generated". The
audit figure includes everything but the one-off SAE training: decoding and preprocessing
the files, the backbone up to the hook, checksummed store shards, the SAE codes, the
bootstrap and top-image accumulators, the descriptors and the memorisation search. The bare
figure is only the forward pass up to the hook on tensors prepared beforehand. The two are
interleaved and the medians kept, so load from other processes hits both alike.

    python -m benchmarks.audit_throughput --out audit_throughput.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# ru_maxrss survives fork + exec on Linux (a child starts with its parent's peak), so the
# probe reads VmHWM / VmRSS from /proc and resets the high-water mark before the audit.
_MEMORY_PROBE = """
import json, sys, torch
torch.set_num_threads(1)
from benchmarks.audit_throughput import audit_once, write_images, _proc_mb
from visionsae.eval.audit import efficientnet_source
n, tmp, sae = int(sys.argv[1]), sys.argv[2], sys.argv[3]
efficientnet_source()  # imports and weights loaded before the baseline
before = _proc_mb("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
seconds = audit_once(n, tmp, sae)
print(json.dumps({"images": 2 * n, "rss_before_audit_mb": before, "peak_rss_mb": _proc_mb("VmHWM"),
                  "peak_growth_during_audit_mb": _proc_mb("VmHWM") - before, "seconds": seconds}))
"""


def _proc_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def write_images(n: int, folder: Path, offset: int = 0) -> list[str]:
    """``n`` Fashion-MNIST test images (from ``offset``) framed to 32x32 RGB PNG files."""
    from PIL import Image

    from visionsae.eval.audit import _framed
    from visionsae.zoo.data import load_fashion_mnist

    imgs, _ = load_fashion_mnist("test")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(offset, offset + n):
        p = folder / f"{i:05d}.png"
        if not p.exists():
            Image.fromarray(_framed(imgs[i % len(imgs)].numpy())).save(p)
        paths.append(str(p))
    return paths


def audit_once(n: int, tmp: str, sae: str, progress: bool = False, pixel_side: int | None = None) -> float:
    """Seconds of one audit of ``n`` real against ``n`` generated images (fresh stores)."""
    import shutil

    from visionsae.audit import AuditConfig, ImageSet, run_audit
    from visionsae.eval.audit import efficientnet_source

    root = Path(tmp)
    real = ImageSet("real", write_images(n, root / "images" / "real"))
    gen = ImageSet("gen", write_images(n, root / "images" / "gen", offset=5000))
    out = root / f"audit-{n}"
    shutil.rmtree(out, ignore_errors=True)
    src = efficientnet_source()
    t = time.perf_counter()
    extra = {} if pixel_side is None else {"pixel_side": pixel_side}
    run_audit(src, real, [gen], out, sae=sae, cfg=AuditConfig(progress=progress, **extra))
    return time.perf_counter() - t


def bare_once(src, pixels: list[torch.Tensor]) -> float:
    t = time.perf_counter()
    with torch.no_grad():
        for x in pixels:
            src._capture(lambda: src._forward(x))
    return time.perf_counter() - t


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="audit_throughput.json")
    parser.add_argument("--images", type=int, default=256, help="real images (as many generated) of the throughput run and of the 1x memory run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-only", action="store_true", help="skip the throughput runs")
    parser.add_argument("--pixel-side", type=int, default=None,
                        help="the audit's pixel view of memorisation (default: the audit's own; 0 measures the feature view alone)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from visionsae.audit import AuditConfig, ImageSet
    from visionsae.audit.core import extract_set, train_audit_sae
    from visionsae.eval.audit import efficientnet_source

    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
        root = Path(tmp)
        n = args.images
        # the SAE, trained once on the real images (not timed: a one-off per audit)
        cfg = AuditConfig(progress=False)
        src = efficientnet_source()
        store = extract_set(src, ImageSet("real", write_images(n, root / "images" / "real")), root / "sae-store", cfg)
        t = time.perf_counter()
        train_audit_sae(store, root / "sae-train", cfg)
        sae_seconds = time.perf_counter() - t
        sae = str(root / "sae-train" / "sae")
        # bare forward on the same 2n images, preprocessed beforehand, same batch size
        paths = write_images(n, root / "images" / "real") + write_images(n, root / "images" / "gen", offset=5000)
        pixels = [src.pixel_values(paths[i : i + cfg.batch_size], i)[0] for i in range(0, len(paths), cfg.batch_size)]
        bare, audit = [], []
        if not args.memory_only:
            bare_once(src, pixels[:1])
            audit_once(n, tmp, sae, pixel_side=args.pixel_side)  # warm-up
        for _ in range(0 if args.memory_only else args.repeats):
            bare.append(2 * n / bare_once(src, pixels))
            audit.append(2 * n / audit_once(n, tmp, sae, pixel_side=args.pixel_side))
        memory = []
        for count in (n, 4 * n):
            out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(count), tmp, sae], capture_output=True,
                                 text=True, check=True, cwd=Path(__file__).resolve().parents[1])
            memory.append(json.loads(out.stdout.strip().splitlines()[-1]))
    result = {
        "backbone": "efficientnet-lite0 _blocks.15 @ 128px (4x4 tokens of 320)",
        "images_per_run": 2 * n,
        "threads": args.threads,
        "pixel_side": args.pixel_side if args.pixel_side is not None else AuditConfig().pixel_side,
        "bare_forward_images_per_s": statistics.median(bare) if bare else None,
        "audit_images_per_s": statistics.median(audit) if audit else None,
        "ratio": statistics.median(audit) / statistics.median(bare) if bare else None,
        "target_ratio": 0.85,
        "ratios": [a / b for a, b in zip(audit, bare)],
        "sae_training_seconds": sae_seconds,
        "memory": memory,
        "peak_rss_4x_over_1x": memory[1]["peak_rss_mb"] / memory[0]["peak_rss_mb"],
        "audit_growth_mb_1x_4x": [m["peak_growth_during_audit_mb"] for m in memory],
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine()},
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
