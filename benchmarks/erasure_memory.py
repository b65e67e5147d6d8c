"""The ItD edit's extra memory per prompt against the sequence length: CLIP's 77 tokens (SD,
SDXL, SD3's CLIPs), SD3's T5 at 256 and Flux's T5 at 512, for wide SAEs (2^16 and 2^19
latents, k 32). Each figure is :func:`visionsae.eval.erasure.sae_memory_probe` in a fresh
process: the rise of the peak resident set during one edit of one prompt, and the largest
single allocation of any op (torch profiler), beside the size of the dense
[tokens x latents] pre-activation matrix the sparse path never holds. With ``--dense``, the
same probe on one unchunked encode (what the dense path would cost) at the shortest length.

Inputs are random (the figures are memory, not quality: no data chose anything).

    python -m benchmarks.erasure_memory --out erasure_memory.json
"""

from __future__ import annotations

import argparse
import json
import platform

from benchmarks import write_json


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write the JSON result here (default: stdout only)")
    ap.add_argument("--tokens", default="77,256,512", help="sequence lengths (default 77,256,512)")
    ap.add_argument("--n-latents", default="65536,524288", help="SAE widths (default 65536,524288)")
    ap.add_argument("--d-in", type=int, default=64, help="SAE input width (default 64; the dense matrix does not depend on it)")
    ap.add_argument("--dense", action="store_true", help="also probe one unchunked encode at the shortest length")
    args = ap.parse_args(argv)
    import torch

    from visionsae.eval.erasure import sae_memory_probe

    results = []
    for n in _ints(args.n_latents):
        for t in _ints(args.tokens):
            r = sae_memory_probe(n_latents=n, tokens=t, d_in=args.d_in)
            results.append({**r, "path": "sparse", "peak_extra_over_dense": r["peak_extra_mb"] / r["dense_pre_acts_mb"]})
            print(json.dumps(results[-1]), flush=True)
        if args.dense:
            r = sae_memory_probe(n_latents=n, tokens=min(_ints(args.tokens)), d_in=args.d_in, chunk_elements=1 << 40)
            results.append({**r, "path": "dense", "peak_extra_over_dense": r["peak_extra_mb"] / r["dense_pre_acts_mb"]})
            print(json.dumps(results[-1]), flush=True)
    out = {
        "benchmark": "erasure_memory",
        "what": "extra memory of one ItD edit (encode, deactivate 64 latents on every token, decode, error kept) of one "
                "prompt of `tokens` tokens with an `n_latents` TopK SAE (k 32), each in a fresh process: the rise of "
                "peak RSS (MB) and the largest single allocation (MB, torch profiler), against the dense "
                "[tokens x latents] fp32 pre-activations (MB). 77: CLIP (SD, SDXL, SD3's CLIPs); 256: SD3's T5; 512: "
                "Flux's T5. Random inputs: memory, not quality (no split).",
        "d_in": args.d_in,
        "machine": {"python": platform.python_version(), "torch": torch.__version__},
        "results": results,
    }
    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
