"""``visionsae audit``: find a generator's blindspots against real images (HTML + JSON out).

Inputs, either:

* ``--real DIR --generated DIR [--generated DIR ...]``: image folders (recursive), unpaired;
  each generated folder is one generator (named after the folder); where every image of a
  folder sits in a subfolder (``real/bag/1.png``), the subfolder is its group (below);
* ``--jsonl FILE``: one record per caption, ``{"caption": ..., "real": PATH, "generated": G}``
  where G is a path, a list of paths (several samples of one generator) or an object
  ``{"generator name": path or list, ...}``; relative paths are read from the file's folder.
  A real image and the images generated from its caption are paired in the bootstrap.
  An optional ``"group"`` (e.g. the caption's class; every record or none) ranks concepts by
  the energy the most affected group misses or gains, so a class the generator has lost tops
  the suppressed list, and the report names the group ("concepts of captions like X").

The backbone is a model spec of ``visionsae extract`` (``--model``): a DINOv2 ViT-B/14 with
registers by default (timm, with ``--weights``), a transformers DINOv2 directory, or the real
offline ``efficientnet-lite0``. Without ``--sae`` an RA-SAE is trained on the real set.
Extraction is resumable: rerun the same command after a stop and it continues.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..audit.inputs import DEFAULT_MODEL, DEFAULT_RESOLUTIONS
    from ._args import add_dataclass_arguments
    from ..audit.core import AuditConfig

    parser.add_argument("--real", help="folder of real images")
    parser.add_argument("--generated", action="append", help="folder of generated images (repeat for several generators)")
    parser.add_argument("--jsonl", help="JSONL of {caption, real, generated} records (instead of folders)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"backbone spec as for `visionsae extract` (default: {DEFAULT_MODEL}, which needs --weights; "
                             "efficientnet-lite0 runs offline)")
    parser.add_argument("--weights", default=None, help="weights file of a timm: / open_clip: backbone")
    parser.add_argument("--hook", default=None, help="module path whose tokens are read (default: the last block of the "
                                                        "default backbones)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="side in pixels of the square image the backbone sees (resize, centre crop); default: "
                             + ", ".join(f"{v} for {k}" for k, v in DEFAULT_RESOLUTIONS.items())
                             + " (the setting `visionsae eval audit` measured: planted classes at median rank 1), "
                               "else the backbone's own")
    parser.add_argument("--sae", default=None, help="an SAE directory to use (default: train an RA-SAE on the real set)")
    parser.add_argument("--out-dir", default="runs/audit", help="stores, SAE, audit.json and report.html go here")
    parser.add_argument("--device", default="cpu")
    add_dataclass_arguments(parser, AuditConfig, title="audit")


def run(args: argparse.Namespace) -> int:
    from ..audit.inputs import build_source, read_folders, read_jsonl
    from ..errors import UsageError
    from ._args import dataclass_from_args
    from ..audit.core import AuditConfig, run_audit
    from ..audit.report import write_report

    if args.jsonl:
        if args.real or args.generated:
            raise UsageError("give either --jsonl or --real/--generated folders, not both")
        real, generated = read_jsonl(args.jsonl)
    elif args.real and args.generated:
        real, generated = read_folders(args.real, args.generated)
    else:
        raise UsageError("give --real DIR and at least one --generated DIR, or --jsonl FILE")
    cfg = dataclass_from_args(AuditConfig, args)
    source = build_source(args.model, args.hook, args.weights, args.device, args.resolution)
    result = run_audit(source, real, generated, args.out_dir, sae=args.sae, cfg=cfg)
    sae = None
    if args.sae:
        from ..sae import SparseAutoencoder

        sae = SparseAutoencoder.from_pretrained(args.sae)
    report = write_report(result, Path(args.out_dir) / "report.html", real=real, generated=generated, sae=sae)
    for g in generated:
        t = result.concepts[g.name]
        mem = result.memorisation[g.name]
        print(f"{g.name}: {len(t['suppressed'])} suppressed, {len(t['exaggerated'])} exaggerated of "
              f"{sum(t['supported'])} ranked concepts; top suppressed {t['rank_suppressed'][:5]}, top exaggerated "
              f"{t['rank_exaggerated'][:5]}; {mem['flagged']} memorisation candidates")
        if t["ranking"] == "group":
            print(f"  missing most: concepts of the captions of groups {[t['group_suppressed'][k] for k in t['rank_suppressed'][:3]]}; "
                  f"over-drawn most: {[t['group_exaggerated'][k] for k in t['rank_exaggerated'][:3]]}")
    print(f"report: {report}\nJSON: {Path(args.out_dir) / 'audit.json'}")
    return 0
