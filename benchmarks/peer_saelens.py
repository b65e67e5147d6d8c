"""SAELens's TopK SAE trained by SAELens's own ``SAETrainer`` at its defaults, on the planted
data of ``benchmarks.train_throughput``.

Runs in ``.venv-peers`` (created by ``benchmarks.run_all``). The SAE is a
``TopKTrainingSAE`` of a ``TopKTrainingSAEConfig`` with only d_in, d_sae and k set; the
trainer an ``SAETrainer`` of an ``SAETrainerConfig`` with only the sample budget and batch
size set, fed the pre-generated batches as its data provider; its training settings are those of a
default ``LanguageModelSAERunnerConfig`` (``to_sae_trainer_config()``), so its optimizer,
learning rate, schedule, gradient clipping and dead-latent bookkeeping are the library's
(installed 6.54: Adam lr 3e-4, constant schedule, no warm-up, clipping at norm 1). ``seconds`` times its
``fit()`` (which is only its training loop here: no evaluator, no checkpoints, no wandb).

Run: ``.venv-peers/bin/python -m benchmarks.peer_saelens --out results.json``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import torch

from benchmarks import current_rss_mb, write_json
from benchmarks.train_throughput import (SETTINGS, add_run_arguments, floors, planted_batches, rates, run_fields,
                                         setting_dict)
from visionsae.planted import PlantedConfig, PlantedData, recovery
from visionsae.sae.metrics import FVU

os.environ.setdefault("TQDM_DISABLE", "1")


def saelens_trainer(d_in: int, n_latents: int, k: int, steps: int, batch: int, batches):
    """SAELens's ``SAETrainer`` of a TopK SAE with the training settings of a default
    ``LanguageModelSAERunnerConfig`` (what ``sae_lens`` users start from), only the shape, k,
    the sample budget and the batch size set (and no wandb, checkpoints or output files)."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae_cfg = TopKTrainingSAEConfig(d_in=d_in, d_sae=n_latents, k=k)
    runner = LanguageModelSAERunnerConfig(sae=sae_cfg, training_tokens=steps * batch, train_batch_size_tokens=batch,
                                          logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None,
                                          output_path=None, verbose=False)
    return SAETrainer(runner.to_sae_trainer_config(), TopKTrainingSAE(sae_cfg), data_provider=iter(batches))


def check_defaults() -> dict:
    """The baseline runs at SAELens's defaults, read from the installed library: every field
    of ``LanguageModelSAERunnerConfig`` and ``TopKTrainingSAEConfig`` the benchmark does not
    set is the dataclass default, and the trainer's optimizer and schedule are built from them."""
    import dataclasses

    from sae_lens import LanguageModelSAERunnerConfig, TopKTrainingSAEConfig

    def defaults(cls, skip):
        return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                for f in dataclasses.fields(cls) if f.name not in skip and (f.default is not dataclasses.MISSING
                                                                             or f.default_factory is not dataclasses.MISSING)}

    trainer = saelens_trainer(32, 128, 4, 10, 64, [])
    sae_defaults = defaults(TopKTrainingSAEConfig, {"d_in", "d_sae", "k", "metadata"})
    changed = {k: v for k, v in sae_defaults.items() if getattr(trainer.sae.cfg, k) != v}
    if changed:
        raise AssertionError(f"the baseline changes SAELens's SAE defaults: {changed}")
    runner = defaults(LanguageModelSAERunnerConfig, set())
    group = trainer.optimizer.param_groups[0]
    got = {"lr": group["lr"], "adam_beta1": group["betas"][0], "adam_beta2": group["betas"][1],
           "lr_scheduler_name": trainer.cfg.lr_scheduler_name, "lr_warm_up_steps": trainer.cfg.lr_warm_up_steps,
           "lr_decay_steps": trainer.cfg.lr_decay_steps, "dead_feature_window": trainer.cfg.dead_feature_window,
           "feature_sampling_window": trainer.cfg.feature_sampling_window}
    changed = {k: (v, runner[k]) for k, v in got.items() if v != runner[k]}
    if changed:
        raise AssertionError(f"the baseline's training settings are not SAELens's defaults: {changed}")
    import torch.optim

    if type(trainer.optimizer) is not torch.optim.Adam:
        raise AssertionError(f"SAETrainer's optimizer is {type(trainer.optimizer).__name__}, not Adam")
    return {"optimizer": type(trainer.optimizer).__name__, **got, "sae_defaults_kept": sorted(sae_defaults)}


def run(name: str, samples: int, seed: int = 0, setting: dict | None = None, score_quality: bool = True) -> dict:
    s = setting or SETTINGS[name]
    planted = PlantedConfig(d_in=s["d_in"], n_true=s["n_true"], mean_active=s["mean_active"], seed=seed)
    steps = samples // s["batch"]
    batches = planted_batches(planted, s["batch"], steps)
    torch.manual_seed(seed)
    baseline_rss = current_rss_mb()
    trainer = saelens_trainer(s["d_in"], s["n_latents"], s["k"], steps, s["batch"], batches)
    measured = rates(s["batch"], s["d_in"], s["n_latents"])
    start = time.perf_counter()
    sae = trainer.fit()
    seconds = time.perf_counter() - start
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    after = rates(s["batch"], s["d_in"], s["n_latents"])
    measured = {key: max(v, after[key]) for key, v in measured.items()}
    floor = floors(s["batch"], s["d_in"], s["n_latents"], s["k"], measured, "float32")
    step_time = seconds / steps
    quality = {}
    if score_quality:
        data = PlantedData(planted)
        sae.eval()
        with torch.no_grad():
            fvu, l0 = FVU(), 0.0
            for i in range(4):
                x = data.batch(10_000_000 + i, 1024)
                acts = sae.encode(x)
                x_hat = sae.decode(acts)
                fvu.update(x, x_hat)
                l0 += float((acts > 0).sum(-1).float().mean())
        W_dec = sae.W_dec.detach()
        quality = {"fvu": fvu.value, "l0": l0 / 4, "recovered": recovery(W_dec / W_dec.norm(dim=1, keepdim=True), data.directions)["recovered"]}
    return {
        "library": "saelens",
        "setting": name,
        **s,
        "optimizer": type(trainer.optimizer).__name__,
        "lr": trainer.cfg.lr,
        "lr_scheduler": trainer.cfg.lr_scheduler_name,
        "train_samples": steps * s["batch"],
        "seconds": seconds,
        "samples_per_s": steps * s["batch"] / seconds,
        "step_ms": step_time * 1e3,
        **run_fields(measured, floor, step_time, peak_rss, baseline_rss),
        **quality,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, sorted(SETTINGS), "default")
    parser.add_argument("--check", action="store_true", help="only check the baseline's settings against the installed library")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.check:
        print(json.dumps(check_defaults()))
        return 0
    res = run(args.setting, args.samples, setting=setting_dict(args.setting, args.n_latents, args.k),
              score_quality=not args.no_quality)
    print(json.dumps(res), flush=True)
    write_json(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
