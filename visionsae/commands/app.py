"""``visionsae app`` / ``make app``: serve the web demo (:mod:`visionsae.demos.app`), offline."""

from __future__ import annotations

import argparse
import logging
from ..errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="zoo",
                        help="'zoo' (the embedded fashion model), or a Stable Diffusion 1.x/2.x diffusers folder or "
                             "Hugging Face id (default: zoo)")
    parser.add_argument("--sae", default=None, help="SAE folder on the text encoder (default for the zoo: its text SAE)")
    parser.add_argument("--concepts", default=None, help="concept set JSON of --sae (default for the zoo: its ten classes)")
    parser.add_argument("--label-prompts", default=None, metavar="FILE",
                        help="prompts (one a line) whose top activations label the features (default: the zoo's "
                             "captions and 200 ImageNet-class prompts; for other models 500 ImageNet-class prompts)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--no-vqa", dest="vqa", action="store_false", help="leave out the VQA tab")
    parser.add_argument("--no-audit", dest="audit", action="store_false", help="leave out the blindspot audit tab")
    parser.add_argument("--audit-dir", default="runs/app-audit",
                        help="where audits run from the page write their images and report (default: runs/app-audit)")


def run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from ..demos.app import build_ui, launch
    from ..demos.app_audit import Auditor
    from ..demos.app_backend import Eraser
    from ..demos.app_vqa import Asker
    from ..sources.loading import read_prompts

    labels = read_prompts(args.label_prompts) if args.label_prompts else None
    if args.model == "zoo":
        eraser = Eraser.zoo(args.device, labels)
    else:
        if not args.sae or not args.concepts:
            raise UsageError("--sae and --concepts are needed for a model other than the zoo")
        eraser = Eraser.from_paths(args.model, args.sae, args.concepts, args.device, labels)
    print(f"Labelling the SAE's features with their top prompts ({len(eraser.label_prompts)} prompts)...", flush=True)
    eraser.feature_labels([])  # once, now, rather than in the first user's request
    asker = Asker(args.device) if args.vqa and args.model == "zoo" else None
    auditor = Auditor(args.audit_dir) if args.audit else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(f"visionsae app on http://{args.host}:{args.port} (Ctrl+C to stop)", flush=True)
    launch(build_ui(eraser, asker, auditor), args.host, args.port)
    return 0
