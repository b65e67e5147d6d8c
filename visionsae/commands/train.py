"""``visionsae train``: train an SAE on a stored activation set (or planted data).

Every SAEConfig and TrainConfig field is a flag; ``--resume`` continues a killed run from
``OUT_DIR/checkpoint.safetensors``. Under ``accelerate launch`` / ``torchrun`` each process
reads its own shards of the store (``ActivationStore.batches(rank=, world_size=)``).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ._args import add_dataclass_arguments
    from ..sae.config import SAEConfig
    from ..train.config import TrainConfig

    data = parser.add_argument_group("data")
    src = data.add_mutually_exclusive_group(required=True)
    src.add_argument("--store", metavar="DIR", help="an activation store written by `visionsae extract`")
    src.add_argument("--planted", action="store_true", help="planted-feature data of width --d-in (a self-test with known answers)")
    data.add_argument("--batch-size", type=int, default=1024, help="rows per training step (default: 1024)")
    data.add_argument("--kinds", default=None, help="only these token kinds from the store, e.g. 'patch' or 'patch,cls'")
    data.add_argument("--d-in", type=int, default=None, help="input width; read from the store when omitted")
    data.add_argument("--sequential", action="store_true",
                      help="FAST: read the store's sequences whole and in order, every token kind (special tokens "
                           "included) unless --kinds says otherwise, instead of shuffled rows")
    add_dataclass_arguments(parser, SAEConfig, skip=("d_in", "extra"), title="SAE")
    add_dataclass_arguments(parser, TrainConfig, title="training")


def run(args: argparse.Namespace) -> int:
    import json

    from ..errors import UsageError
    from ._args import dataclass_from_args
    from ..sae.config import SAEConfig
    from ..train.config import TrainConfig
    from ..train.trainer import NonFiniteBatchError, Trainer

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    if args.d_in is not None and args.d_in < 1:
        raise UsageError(f"--d-in must be a positive integer, got {args.d_in}")
    train_cfg = dataclass_from_args(TrainConfig, args)
    store = None
    if args.store:
        from ..store import ActivationStore

        store = ActivationStore.open(args.store)
        if args.d_in is not None and args.d_in != store.d_in:
            raise UsageError(f"--d-in {args.d_in} does not match the store's d_in {store.d_in} ({args.store})")
        kinds = args.kinds.split(",") if args.kinds else None
        if kinds:
            from ..store import TokenKind

            TokenKind.parse(kinds)  # an unknown kind is named now, not at the first batch
        sae_cfg = dataclass_from_args(
            SAEConfig, args, d_in=store.d_in,
            hook=args.hook or store.hook, model=args.model or store.source.get("model"),
            extra={"store": str(args.store), "kinds": kinds, "order": "sequential" if args.sequential else "shuffled"},
        )

        def batches(rank: int, world_size: int):  # each process its own shards
            return store.batches(args.batch_size, seed=train_cfg.seed, shuffle=True, loop=True, kinds=kinds,
                                 sequential=args.sequential, rank=rank, world_size=world_size)
    else:
        if args.sequential:
            raise UsageError("--sequential reads a store's sequences in order; it needs --store")
        from ..planted import PlantedConfig, PlantedData

        planted = PlantedConfig(d_in=PlantedConfig.d_in if args.d_in is None else args.d_in, seed=train_cfg.seed)
        sae_cfg = dataclass_from_args(SAEConfig, args, d_in=planted.d_in, extra={"planted": planted.to_dict()})
        batches = PlantedData(planted).batches(args.batch_size)
    import torch.distributed as dist

    ours = dist.is_available() and not dist.is_initialized()  # under torchrun, the Trainer's Accelerator starts the group
    trainer = Trainer(sae_cfg, train_cfg)
    try:
        sae = trainer.fit(batches)
    except NonFiniteBatchError as exc:
        if store is None:
            raise
        bad = store.nonfinite_rows(progress=train_cfg.progress)
        if not bad["rows"]:
            raise
        where = "; ".join(f"shard {r['shard']!r} row {r['row']} (input {r['input_id']})" for r in bad["first"])
        more = bad["rows"] - len(bad["first"])
        raise UsageError(
            f"the store {args.store} holds NaN or Inf in {bad['rows']} rows: {where}"
            f"{f' and {more} more' if more else ''}; training stopped at step {exc.step}, before any update from them "
            "(re-extract those inputs, or train on another store)"
        ) from None
    if trainer.accelerator.is_main_process:
        print(json.dumps({"sae": f"{train_cfg.out_dir}/sae", "d_in": sae.cfg.d_in, "n_latents": sae.cfg.n_latents, "sparsity": sae.cfg.sparsity}))
    if ours and dist.is_initialized():
        # A group this command started ends with it, after a run every process finished (PyTorch's
        # shutdown rule: left to interpreter exit, gloo's threads may outlive the work they hold
        # and abort the process after the run succeeded)
        trainer.accelerator.wait_for_everyone()
        dist.destroy_process_group()
    return 0
