"""Training configuration."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from ..sae.config import check_field_types

SELECT_DTYPES = ("auto", "same", "bfloat16", "float16")
B_DEC_INITS = ("geometric_median", "mean", "zeros")
# Fields that change neither the weights nor the data order: a resumed run may set them anew.
RESUME_FREE = ("out_dir", "resume", "overwrite", "progress", "log_every", "checkpoint_every")


@dataclass(frozen=True)
class TrainConfig:
    """How to train an SAE; every field is also a ``visionsae train`` flag."""

    out_dir: str = "runs/sae"
    """Directory for metrics.jsonl, checkpoint.safetensors and the final SAE (out_dir/sae)."""
    total_samples: int = 1_024_000
    """Stop after this many activation rows (summed over processes)."""
    lr: float | None = None
    """Adam learning rate; None picks 2e-3 * sqrt(4096 / n_latents) * sqrt(batch / 256): larger SAEs need smaller steps, larger batches (rows per step over all processes) take larger ones."""
    warmup_steps: int = 50
    """Linear warm-up from 0 to lr over this many steps."""
    schedule: str = "cosine"
    """After warm-up: 'cosine' decay to lr * min_lr_ratio at the last step, or 'constant'."""
    min_lr_ratio: float = 0.1
    """Final learning rate of the cosine schedule, as a fraction of lr."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.999
    """Adam beta2."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value (None: no clipping)."""
    sparse_decoder_grad: bool = True
    """Keep the decoder's gradient as the rows a step used (a TopK-family SAE's other rows get none) and apply Adam's own update from them, instead of a dense copy of W_dec (1.5 GiB at 768 x 2^19); one process only (data parallel reduces dense gradients)."""
    aux_k: int | None = None
    """Dead latents used by the AuxK loss; None picks d_in // 2."""
    aux_coefficient: float = 1.0 / 32
    """Weight of the AuxK loss (Gao et al. use 1/32)."""
    dead_after_samples: int = 10_000_000
    """A latent that has not fired for this many samples counts as dead (AuxK, metrics); 10M as in Gao et al. and sparsify."""
    b_dec_init: str = "geometric_median"
    """How to initialise b_dec from the first batch: geometric_median, mean or zeros."""
    log_every: int = 50
    """Write a metrics line every this many steps."""
    checkpoint_every: int = 500
    """Write checkpoint.safetensors every this many steps (0: only at the end)."""
    select_dtype: str = "auto"
    """Precision of the training matmul that only chooses the active latents of a TopK-family rule (their values and all gradients stay in the SAE's dtype): 'same' (exact choice), 'bfloat16', 'float16', or 'auto' (bfloat16 for a float32 SAE on CUDA or on a CPU with native bf16 matmul, else 'same')."""
    seed: int = 0
    """Seed of the SAE's initialisation."""
    resume: bool = False
    """Continue from out_dir/checkpoint.safetensors if it exists (the run's settings, batch size and data must be the same)."""
    overwrite: bool = False
    """Start afresh in an out_dir that holds an earlier run, deleting its checkpoint, metrics and SAE (without it, or resume, such an out_dir is refused)."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        check_field_types(self)
        checks = [
            ("total_samples", self.total_samples >= 1, "a positive integer"),
            ("lr", self.lr is None or self.lr > 0, "a positive number or None"),
            ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "in [0, 1] (a fraction of lr)"),
            ("beta1", 0 <= self.beta1 < 1, "in [0, 1)"),
            ("beta2", 0 <= self.beta2 < 1, "in [0, 1)"),
            ("grad_clip", self.grad_clip is None or self.grad_clip > 0, "a positive number, or None for no clipping"),
            ("aux_k", self.aux_k is None or self.aux_k >= 1, "a positive integer, or None for d_in // 2"),
            ("aux_coefficient", self.aux_coefficient >= 0, ">= 0"),
            ("dead_after_samples", self.dead_after_samples >= 1, "a positive integer"),
            ("log_every", self.log_every >= 1, "a positive integer"),
            ("checkpoint_every", self.checkpoint_every >= 0, ">= 0 (0: only at the end)"),
            ("seed", 0 <= self.seed < 2**64, "in [0, 2**64)"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise UsageError(f"TrainConfig.{name} must be {expected}, got {getattr(self, name)!r}")
        if self.schedule not in ("cosine", "constant"):
            raise UsageError(f"unknown schedule {self.schedule!r}; expected 'cosine' or 'constant'")
        if self.select_dtype not in SELECT_DTYPES:
            raise UsageError(f"unknown select_dtype {self.select_dtype!r}; expected one of {', '.join(SELECT_DTYPES)}")
        if self.b_dec_init not in B_DEC_INITS:
            raise UsageError(f"unknown b_dec_init {self.b_dec_init!r}; expected one of {', '.join(B_DEC_INITS)}")
        if self.resume and self.overwrite:
            raise UsageError("resume and overwrite exclude each other: continue the run in out_dir, or start it afresh")

    def learning_rate(self, n_latents: int, batch_rows: int = 256) -> float:
        """``lr``, or the default for an SAE of ``n_latents`` trained on ``batch_rows`` rows
        per optimizer step. The square-root batch scaling keeps Adam's step noise level as the
        batch grows (measured on planted data: at batch 1024 the unscaled rate recovered 93%
        of the directions, the scaled one 99%; README, Benchmarks)."""
        if self.lr is not None:
            return self.lr
        return _default_lr(n_latents) * math.sqrt(batch_rows / 256)

    def select_torch_dtype(self, sae_dtype: torch.dtype, device: torch.device) -> torch.dtype | None:
        """The dtype of the choosing matmul, or None for the SAE's own (``select_dtype``)."""
        if self.select_dtype == "same":
            return None
        if self.select_dtype != "auto":
            chosen = getattr(torch, self.select_dtype)
            return None if chosen == sae_dtype else chosen
        if sae_dtype != torch.float32:
            return None
        if device.type == "cuda" or (device.type == "cpu" and _cpu_has_native_bf16()):
            return torch.bfloat16
        return None

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def lr_factor(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _default_lr(n_latents: int) -> float:
    return 2e-3 * math.sqrt(4096 / n_latents)


@lru_cache(maxsize=1)
def _cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere a bf16
    matmul is emulated and no faster than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def original_defaults(n_latents: int, total_samples: int) -> dict[str, Any]:
    """The trainer's first defaults (learning rate not scaled with the batch, dead-latent
    window total_samples // 16, exact latent choice): the settings the shipped zoo SAEs and
    the audit's measured figures were produced with, so their commands still reproduce them."""
    return {
        "lr": _default_lr(n_latents),
        "dead_after_samples": min(10_000_000, max(1, total_samples // 16)),
        "select_dtype": "same",
    }
