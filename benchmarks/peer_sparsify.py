"""EleutherAI sparsify 1.3.3's TopK SAE, trained as its own ``Trainer`` trains it, on the
planted data of ``benchmarks.train_throughput``.

Runs in its own environment (``.venv-peers``, created by ``benchmarks.run_all`` with
eai-sparsify and SAELens; this repo on the path). The SAE *and its optimizer* come from
sparsify's own ``Trainer``, built with a default ``TrainConfig`` (only the SAE's width and k
set) over a one-layer GPT-2 of the setting's width: what that constructor picks is what
runs (1.3.3: ``optimizer="signum"``, sign descent wrapped in schedule-free averaging,
momentum 0.95, lr 5e-3 / sqrt(n / 2^14), no schedule; ``auxk_alpha`` 0). The step is the
body of ``Trainer.fit`` for ``loss_fn="fvu"`` on activations handed to it instead of a
model's: b_dec from the first batch's mean, unit-norm decoder before the forward, FVU
against the batch's variance, the parallel gradient removed, optimizer step. The SAE is
scored after ``optimizer.eval()`` (the averaged weights sparsify saves). The loop is timed
as ours is (its steps only); ``baseline_rss_mb`` is the process's RSS before the SAE and
optimizer exist.

``--lr`` overrides the learning rate; ``--optimizer adam`` runs sparsify's Adam branch
(with its 1000-step warm-up: the baseline of the README's earlier figures).

Run: ``.venv-peers/bin/python -m benchmarks.peer_sparsify --out results.json``
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
from benchmarks.train_throughput import (SETTINGS, add_run_arguments, floors, planted_batches, rates, run_fields, steady_fields,
                                         setting_dict)
from visionsae.planted import PlantedConfig, PlantedData, recovery
from visionsae.sae.metrics import FVU

# sparsify's Triton decoder needs a GPU driver; on a CPU its own eager fallback is the
# embedding_bag decoder (what it uses when Triton is absent).
os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")


def sparsify_trainer(d_in: int, n_latents: int, k: int, steps: int, seed: int = 0, **overrides):
    """sparsify's own ``Trainer`` for one SAE of ``d_in -> n_latents``, top ``k``, over a
    one-layer GPT-2 of width ``d_in`` (it only sizes the SAE), every other setting at
    sparsify's default unless given in ``overrides`` (``TrainConfig`` fields)."""
    from sparsify import SparseCoderConfig, TrainConfig, Trainer
    from transformers import GPT2Config, GPT2Model

    model = GPT2Model(GPT2Config(n_embd=d_in, n_layer=1, n_head=1, vocab_size=16, n_positions=16))
    cfg = TrainConfig(SparseCoderConfig(num_latents=n_latents, k=k), init_seeds=[seed], **overrides)
    with open(os.devnull, "w") as quiet:  # its constructor prints its plan
        stdout, sys.stdout = sys.stdout, quiet
        try:
            # the dataset only sets the number of batches (Adam's schedule length)
            trainer = Trainer(cfg, range(steps * cfg.batch_size), model)
        finally:
            sys.stdout = stdout
    trainer.model = None  # not used by the step below
    return trainer


def fit_step(trainer, sae, x: torch.Tensor, step: int) -> None:
    """One step of ``Trainer.fit`` (1.3.3, ``loss_fn="fvu"``, one SAE, no gradient
    accumulation) on the activations ``x [B, d_in]``; ``check_against_fit`` compares it
    with the library's own ``fit()``."""
    if step == 0:  # b_dec from the first batch's mean
        sae.b_dec.data = x.mean(0).to(sae.dtype)
    sae.set_decoder_norm_to_unit_norm()
    dead_mask = (trainer.num_tokens_since_fired[next(iter(trainer.saes))] > trainer.cfg.dead_feature_threshold
                 if trainer.cfg.auxk_alpha > 0 else None)
    total_variance = (x - x.mean(0)).pow(2).sum()
    out = sae(x=x, y=x, dead_mask=dead_mask, total_variance=total_variance)
    loss = out.fvu + trainer.cfg.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
    loss.backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    for opt in trainer.optimizers:
        opt.step()
        opt.zero_grad()
    for sched in trainer.lr_schedulers:
        sched.step()
    with torch.no_grad():
        for counts in trainer.num_tokens_since_fired.values():
            counts += x.shape[0]
            counts[out.latent_indices.flatten()] = 0


def check_against_fit(steps: int = 6) -> dict:
    """The baseline is sparsify's trainer at its defaults, checked against the installed
    library itself: every ``TrainConfig`` field the benchmark leaves alone is the dataclass
    default, and :func:`fit_step` over the activations that ``Trainer.fit()`` trained on
    (a one-layer GPT-2, d 32, 128 latents) gives the SAE that ``fit()`` gave, bit for bit."""
    import dataclasses
    import tempfile

    from datasets import Dataset
    from sparsify import SparseCoderConfig, TrainConfig, Trainer
    from transformers import GPT2Config, GPT2Model

    set_fields = {"sae", "init_seeds"}
    made = sparsify_trainer(32, 128, 4, steps).cfg
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                for f in dataclasses.fields(TrainConfig) if f.name not in set_fields}
    changed = {k: (getattr(made, k), v) for k, v in defaults.items()
               if k not in ("hookpoints", "layers") and getattr(made, k) != v}  # those two are filled in by Trainer
    assert not changed, f"the baseline changes sparsify's defaults: {changed}"

    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=1, vocab_size=16, n_positions=16))
    data = Dataset.from_dict({"input_ids": torch.randint(0, 16, (steps * 2, 8)).tolist()}).with_format("torch")
    seen = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(SparseCoderConfig(num_latents=128, k=4), batch_size=2, log_to_wandb=False, save_dir=tmp,
                          init_seeds=[0])
        with open(os.devnull, "w") as quiet:
            stdout, sys.stdout = sys.stdout, quiet
            try:
                real = Trainer(cfg, data, model)  # (its constructor runs the model once to size the SAE)
                handle = model.h[0].register_forward_hook(
                    lambda m, i, o: seen.append((o[0] if isinstance(o, tuple) else o).detach().flatten(0, 1).clone()))
                real.fit()
            finally:
                sys.stdout = stdout
    handle.remove()
    if len(seen) != steps:
        raise AssertionError(f"fit() ran {len(seen)} steps, expected {steps}")
    mine = sparsify_trainer(32, 128, 4, steps)
    (sae,) = mine.saes.values()
    for i, x in enumerate(seen):
        fit_step(mine, sae, x, i)
    for opt in mine.optimizers:  # fit() ends by saving, which swaps to the average and back
        if hasattr(opt, "eval"):
            opt.eval()
            opt.train()
    (theirs,) = real.saes.values()
    differ = [k for k, v in theirs.state_dict().items() if not torch.equal(v, sae.state_dict()[k])]
    if differ:
        raise AssertionError(f"the benchmark's step differs from sparsify's fit() in {differ}")
    opt = mine.optimizers[0]
    return {"sparsify_defaults_kept": sorted(defaults), "steps_compared": steps,
            "optimizer": type(opt).__name__ + (f"({type(opt.base).__name__})" if hasattr(opt, "base") else ""),
            "lr": opt.param_groups[0]["lr"], "lr_schedulers": [type(x).__name__ for x in mine.lr_schedulers]}


def run(name: str, samples: int, lr: float | None = None, optimizer: str | None = None, seed: int = 0,
        setting: dict | None = None, score_quality: bool = True) -> dict:
    s = setting or SETTINGS[name]
    planted = PlantedConfig(d_in=s["d_in"], n_true=s["n_true"], mean_active=s["mean_active"], seed=seed)
    steps = samples // s["batch"]
    batches = planted_batches(planted, s["batch"], steps)
    overrides = {k: v for k, v in (("lr", lr), ("optimizer", optimizer)) if v is not None}
    baseline_rss = current_rss_mb()
    trainer = sparsify_trainer(s["d_in"], s["n_latents"], s["k"], steps, seed, **overrides)
    (sae,) = trainer.saes.values()
    measured = rates(s["batch"], s["d_in"], s["n_latents"])
    start = time.perf_counter()
    marks = [start]
    for i, x in enumerate(batches):
        fit_step(trainer, sae, x, i)
        marks.append(time.perf_counter())
    seconds = marks[-1] - start
    step_times = [b - a for a, b in zip(marks, marks[1:])]
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for opt in trainer.optimizers:  # what sparsify saves: the schedule-free average
        if hasattr(opt, "eval"):
            opt.eval()
    after = rates(s["batch"], s["d_in"], s["n_latents"])  # as train_throughput: the better of before/after
    measured = {k: max(v, after[k]) for k, v in measured.items()}
    floor = floors(s["batch"], s["d_in"], s["n_latents"], s["k"], measured, "float32")  # its step computes in fp32
    step_time = seconds / steps
    quality = {}
    if score_quality:
        data = PlantedData(planted)
        with torch.no_grad():
            fvu, l0 = FVU(), 0.0
            for i in range(4):
                x = data.batch(10_000_000 + i, 1024)
                out = sae(x)
                fvu.update(x, out.sae_out)
                l0 += float((out.latent_acts > 0).sum(-1).float().mean())
        quality = {"fvu": fvu.value, "l0": l0 / 4, "recovered": recovery(sae.W_dec.detach(), data.directions)["recovered"]}
    opt = trainer.optimizers[0]
    return {
        "library": "sparsify",
        "setting": name,
        **s,
        "optimizer": type(opt).__name__ + (f"({type(opt.base).__name__})" if hasattr(opt, "base") else ""),
        "lr": opt.param_groups[0]["lr"],
        "lr_schedulers": [type(x).__name__ for x in trainer.lr_schedulers],
        "train_samples": steps * s["batch"],
        "seconds": seconds,
        "samples_per_s": steps * s["batch"] / seconds,
        "step_ms": seconds / steps * 1e3,
        "first_step_ms": step_times[0] * 1e3,
        **steady_fields(step_times, s["batch"]),
        **run_fields(measured, floor, step_time, peak_rss, baseline_rss),
        **quality,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, sorted(SETTINGS), "default")
    parser.add_argument("--lr", type=float, default=None, help="override sparsify's learning rate")
    parser.add_argument("--optimizer", choices=["signum", "adam", "muon"], default=None,
                        help="override sparsify's optimizer (default: its own default)")
    parser.add_argument("--check", action="store_true",
                        help="only check the baseline against the installed library (its defaults, its fit()) and print JSON")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.check:
        print(json.dumps(check_against_fit()))
        return 0
    res = run(args.setting, args.samples, args.lr, args.optimizer,
              setting=setting_dict(args.setting, args.n_latents, args.k), score_quality=not args.no_quality)
    print(json.dumps(res), flush=True)
    write_json(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
