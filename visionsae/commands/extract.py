"""``visionsae extract``: run a model over inputs and store the activations at a hook point."""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = """\
models: a diffusers pipeline dir (its text encoder; --encoder text_encoder_2 for SDXL's second CLIP
or Flux's T5, text_encoder_3 for SD3's T5),
a transformers model dir (text encoder, DINOv2/ViT, LLaVA), timm:NAME, open_clip:ARCH
(--weights FILE), efficientnet-lite0, or py:MODULE:FUNCTION.
inputs: an image folder, a .txt of prompts (one a line), or a .jsonl of {"text"}, {"image"} or
{"image", "question"} records.
A stopped extraction resumes when rerun with the same arguments.

examples:
  visionsae extract --model sd-pipe/ --hook text_model.encoder.layers.8 --inputs prompts.txt --out acts/
  visionsae extract --model sd3-pipe/ --encoder text_encoder_3 --hook encoder.block.12 --inputs prompts.txt --out t5/
  visionsae extract --model efficientnet-lite0 --hook _blocks.15 --inputs photos/ --out acts/ --dtype float16
  visionsae extract --model llava-dir/ --layer 12 --inputs vqa.jsonl --out acts/ --kinds image,text
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("--model", required=True, help="model spec (see below)")
    p.add_argument("--hook", help="module path whose output is stored, e.g. text_model.encoder.layers.8")
    p.add_argument("--layer", type=int, help="VLMs: language-model layer index (instead of --hook)")
    p.add_argument("--inputs", required=True, help="image folder, prompts .txt, or .jsonl records")
    p.add_argument("--out", required=True, help="store directory (created; resumed if it holds this extraction)")
    p.add_argument("--batch-size", type=int, default=32, help="inputs per forward pass (default 32)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="dtype on disk (default float32)")
    p.add_argument("--format", dest="shard_format", choices=["safetensors", "npy"], default="safetensors",
                   help="shard format (default safetensors)")
    p.add_argument("--shard-rows", type=int, default=65536, help="rows per shard (default 65536)")
    p.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming")
    p.add_argument("--limit", type=int, help="use only the first N inputs")
    p.add_argument("--kinds", help="keep only these token kinds, e.g. patch or text,end (default all)")
    p.add_argument("--device", default="auto",
                   help="torch device (default auto: this process's GPU under accelerate launch, else cuda if any, else cpu)")
    p.add_argument("--no-stop-early", dest="stop_early", action="store_false",
                   help="run the whole forward pass (default: stop after the hooked module)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g = p.add_argument_group("text encoders")
    g.add_argument("--encoder", default="text_encoder",
                   help="pipeline text encoder: text_encoder, text_encoder_2 (SDXL's second CLIP, Flux's T5) "
                        "or text_encoder_3 (SD3's T5)")
    g.add_argument("--max-length", type=int,
                   help="pad/truncate length (default the tokenizer's, 77 for CLIP; a pipeline's T5: its "
                        "max_sequence_length, SD3 256, Flux 512)")
    g.add_argument("--padding", choices=["max_length", "longest"], default="max_length",
                   help="pad to --max-length as the pipelines do (default) or to the longest prompt")
    g.add_argument("--attention-mask", choices=["auto", "on", "off"], default="auto",
                   help="pass the attention mask (auto: as diffusers, only if the config says use_attention_mask)")
    g.add_argument("--skip-start", action="store_true", help="leave out the start token's row")
    g.add_argument("--skip-padding", action="store_true", help="leave out padding rows")
    g = p.add_argument_group("images")
    g.add_argument("--weights", help="weights file for timm:/open_clip: models")
    g.add_argument("--skip-unreadable", action="store_true",
                   help="leave out (and list in the manifest) images that cannot be read, instead of failing")
    g.add_argument("--no-nhwc", dest="nhwc", action="store_const", const=False, default=None,
                   help="run a convolutional backbone in its usual layout (default: channels-last, same values, "
                        "faster on CPUs)")


def run(args: argparse.Namespace) -> int:
    from visionsae.errors import UsageError, check_writable_dir
    from visionsae.sources.extract import extract
    from visionsae.sources.loading import build_source, load_model, read_inputs
    from visionsae.store import TokenKind

    for flag, value in (("--batch-size", args.batch_size), ("--shard-rows", args.shard_rows), ("--limit", args.limit)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be a positive integer, got {value}")
    check_writable_dir(args.out, "--out")  # before the model is loaded and run
    if args.device == "auto":
        args.device = _auto_device()
    kind, inputs = read_inputs(args.inputs)
    if args.limit is not None:
        inputs = inputs[: args.limit]
    try:
        loaded = load_model(args.model, encoder=args.encoder, weights=args.weights, device=args.device)
    except OSError as exc:  # a file missing or unreadable inside the model directory
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UsageError(f"cannot load model {args.model}: {reason}") from None
    source = build_source(
        loaded, kind, hook=args.hook, layer=args.layer, device=args.device, stop_early=args.stop_early,
        keep_kinds=TokenKind.parse(args.kinds) if args.kinds else None,
        max_length=args.max_length, padding=args.padding,
        attention_mask={"auto": None, "on": True, "off": False}[args.attention_mask],
        skip_start=args.skip_start, skip_padding=args.skip_padding,
        on_error="skip" if args.skip_unreadable else "raise", nhwc=args.nhwc,
    )
    description = {**loaded.info, **source.describe(), "inputs": str(args.inputs), "limit": args.limit}
    manifest = extract(
        source, inputs, args.out, batch_size=args.batch_size, dtype=args.dtype, shard_format=args.shard_format,
        shard_rows=args.shard_rows, overwrite=args.overwrite, description=description, progress=args.progress,
    )
    skipped = [s for sh in manifest["shards"] for s in sh["skipped"]] + manifest.get("skipped", [])
    summary = {"out": str(args.out), "rows": manifest["rows"], "d_in": manifest["d_in"],
               "shards": len(manifest["shards"]), "inputs": len(inputs), "skipped": len(skipped),
               "complete": manifest["complete"]}
    for s in skipped:
        print(f"skipped {s['input']}: {s['reason']}", file=sys.stderr)
    print(json.dumps(summary))
    if manifest["rows"] == 0:
        raise UsageError(f"no input gave an activation row ({len(skipped)} of {len(inputs)} skipped as unreadable"
                         f"{', the rest filtered out by --kinds' if args.kinds else ''}): the store at {args.out} is empty")
    return 0


def _auto_device() -> str:
    import os

    import torch

    if not torch.cuda.is_available():
        return "cpu"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        return str(PartialState().device)  # one GPU per process
    return "cuda"
