"""SAE-quality evaluations: ``visionsae eval sae`` (JSON out).

* :func:`reconstruction_metrics` -- FVU, L0, dead and dense fractions, and the AFA check
  (the code's norm against the norm of the input it encodes);
* :func:`dark_matter` -- how much of the reconstruction error is linearly predictable from
  the input (Engels et al. 2024, "Decomposing The Dark Matter of Sparse Autoencoders");
* :func:`stability` -- Hungarian-matched decoder cosines across independently initialised SAEs;
* :func:`planted_recovery` -- recovery of the true directions of planted data;
* :func:`concept_agreement` -- on a real text model, whether the SAE has features that agree
  with supervised concept directions (difference of means between prompts of a concept and
  the rest, as in Makelov et al. 2024, "Towards Principled Evaluations of Sparse Autoencoders").
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F

from ..sae import SparseAutoencoder
from ..sae.losses import decoded_norm
from ..sae.metrics import FVU
from ..errors import UsageError

# ImageNet-1k class ids of the concepts of :func:`concept_agreement` (open_clip's class order).
CONCEPT_CLASSES: dict[str, tuple[int, ...]] = {
    "dog": tuple(range(151, 269)),
    "bird": tuple(range(7, 25)) + tuple(range(80, 101)) + tuple(range(127, 147)),
    "snake": tuple(range(52, 69)),
    "insect": tuple(range(300, 320)),
    "fruit": tuple(range(948, 958)),
    "vehicle": (),  # filled from visionsae.sources.corpus.vehicle_class_ids() (by name)
}


# -------------------------------------------------------------------- reconstruction
@torch.no_grad()
def reconstruction_metrics(
    sae: SparseAutoencoder, batches: Iterable[torch.Tensor], *, dense_threshold: float = 0.1, max_rows: int | None = None
) -> dict[str, float]:
    """FVU, L0, dead / dense fractions and the AFA check over ``batches`` of ``[B, d_in]`` rows.

    A latent is dead if it never fires on these rows, dense if it fires on more than
    ``dense_threshold`` of them. The AFA check compares, per row, the norm of the code's
    decoded contribution under orthogonal decoder rows, ``sqrt(sum_j (f_j |d_j|)^2)``, with
    the norm of the centred input ``|x - b_dec|`` it encodes (Lee et al. 2025): a ratio near
    1 means the code carries the input's energy.
    """
    sae.eval()
    n = sae.n_latents
    rows = 0
    fvu = FVU()
    l0_sum = l0_sq = 0.0
    fires = torch.zeros(n, dtype=torch.int64)
    ratios, code_norms, input_norms = [], [], []
    for x in batches:
        if max_rows is not None and rows >= max_rows:
            break
        if max_rows is not None:
            x = x[: max_rows - rows]
        x = x.float()
        code = sae.encode(x)
        x_hat = sae.decode(code).float()
        fvu.update(x, x_hat)
        l0 = code.l0().double()
        l0_sum += float(l0.sum())
        l0_sq += float(l0.pow(2).sum())
        active = code.values != 0
        fires += torch.bincount(code.indices[active].cpu(), minlength=n)
        got = decoded_norm(code.values, code.indices, sae.W_dec).float()
        target = sae._centered(x).norm(dim=-1).float()
        code_norms.append(got.cpu())
        input_norms.append(target.cpu())
        ratios.append((got / target.clamp_min(1e-12)).cpu())
        rows += x.shape[0]
    if rows == 0:
        raise UsageError("no activation rows to evaluate the SAE on")
    ratio = torch.cat(ratios)
    code_norm, input_norm = torch.cat(code_norms), torch.cat(input_norms)
    freq = fires.double() / rows
    return {
        "rows": rows,
        "fvu": fvu.value,
        "l0": l0_sum / rows,
        "l0_std": math.sqrt(max(l0_sq / rows - (l0_sum / rows) ** 2, 0.0)),
        "dead_fraction": float((fires == 0).double().mean()),
        "dense_fraction": float((freq > dense_threshold).double().mean()),
        "dense_threshold": dense_threshold,
        "afa_ratio_median": float(ratio.median()),
        "afa_ratio_mean": float(ratio.mean()),
        "afa_abs_error_median": float((ratio - 1).abs().median()),
        "afa_norm_correlation": _pearson(code_norm, input_norm),
    }


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-30))


# ----------------------------------------------------------------------- dark matter
def _ridge_fit(x: torch.Tensor, y: torch.Tensor, ridge: float) -> torch.Tensor:
    """Least squares ``[x, 1] @ w ~ y`` with a small ridge on the non-bias weights."""
    xb = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
    gram = xb.T @ xb
    reg = torch.eye(gram.shape[0], dtype=x.dtype) * ridge * gram.diagonal()[:-1].mean()
    reg[-1, -1] = 0
    return torch.linalg.solve(gram + reg, xb.T @ y)


def _r2(y: torch.Tensor, y_hat: torch.Tensor, y_fit_mean: torch.Tensor) -> float:
    return 1.0 - float((y - y_hat).pow(2).sum() / (y - y_fit_mean).pow(2).sum().clamp_min(1e-30))


def min_dark_matter_rows(d_in: int) -> int:
    """Rows :func:`dark_matter` needs: half fit a map of d_in + 1 weights per output (at
    least 5 rows per weight, so the held-out R^2 measures the data, not over-fitting)."""
    return 10 * (d_in + 1)


@torch.no_grad()
def dark_matter(sae: SparseAutoencoder, x: torch.Tensor, *, ridge: float = 1e-3, seed: int = 0) -> dict[str, float]:
    """How much of the SAE's error ``e = x - x_hat`` a linear map of ``x`` predicts.

    Fits ``e ~ [x, 1] A`` and ``|e| ~ [x, 1] w`` by (lightly ridged) least squares on a
    random half of the rows ``x [N, d_in]`` (seeded) and reports R^2 on the other half:
    ``error_r2`` is the share of the error's variance that is linearly predictable (the
    "linear dark matter"), ``error_norm_r2`` the share of the variance of its norm.
    Also the error's share of the input's variance (the FVU on these rows).
    """
    sae.eval()
    x = x.reshape(-1, sae.d_in).float()
    if x.shape[0] < min_dark_matter_rows(sae.d_in):
        raise UsageError(
            f"dark matter needs at least {min_dark_matter_rows(sae.d_in)} rows for a {sae.d_in}-wide input "
            f"(got {x.shape[0]}): the linear fit has d_in + 1 weights per output and is scored on held-out rows"
        )
    err = (x - sae.decode(sae.encode(x)).float()).double()
    xd = x.double()
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    fit, test = order[: x.shape[0] // 2], order[x.shape[0] // 2 :]
    A = _ridge_fit(xd[fit], err[fit], ridge)
    xb_test = torch.cat([xd[test], torch.ones(len(test), 1, dtype=xd.dtype)], 1)
    norm = err.norm(dim=-1, keepdim=True)
    w = _ridge_fit(xd[fit], norm[fit], ridge)
    return {
        "rows": int(x.shape[0]),
        "fvu": float(err.pow(2).sum() / (xd - xd.mean(0)).pow(2).sum().clamp_min(1e-30)),
        "error_r2": _r2(err[test], xb_test @ A, err[fit].mean(0)),
        "error_norm_r2": _r2(norm[test], xb_test @ w, norm[fit].mean(0)),
    }


# ------------------------------------------------------------------------- stability
def _matched_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """One-to-one (Hungarian) matching of the rows of ``a [n, d]`` to rows of ``b [m, d]``
    maximising the total cosine; the matched cosines ``[min(n, m)]``."""
    from scipy.optimize import linear_sum_assignment

    cos = F.normalize(a.detach().float(), dim=1) @ F.normalize(b.detach().float(), dim=1).T
    rows, cols = linear_sum_assignment(cos.numpy(), maximize=True)
    return cos[torch.as_tensor(rows), torch.as_tensor(cols)]


@torch.no_grad()
def stability(saes: Sequence[SparseAutoencoder], threshold: float = 0.9) -> dict[str, Any]:
    """Agreement of independently initialised SAEs: for every pair, decoder rows are
    matched one-to-one (Hungarian, on cosine) and the mean matched cosine and the share of
    matched pairs above ``threshold`` are reported, then averaged over pairs."""
    if len(saes) < 2:
        raise UsageError(f"stability needs at least two SAEs, got {len(saes)}")
    pairs = []
    for i in range(len(saes)):
        for j in range(i + 1, len(saes)):
            if saes[i].d_in != saes[j].d_in:
                raise UsageError(f"SAEs {i} and {j} read different widths ({saes[i].d_in} and {saes[j].d_in})")
            cos = _matched_cosines(saes[i].W_dec, saes[j].W_dec)
            pairs.append({"pair": [i, j], "mean_cosine": float(cos.mean()), "share_above": float((cos > threshold).float().mean())})
    return {
        "threshold": threshold,
        "mean_cosine": sum(p["mean_cosine"] for p in pairs) / len(pairs),
        "share_above": sum(p["share_above"] for p in pairs) / len(pairs),
        "pairs": pairs,
    }


@torch.no_grad()
def planted_recovery(sae: SparseAutoencoder, directions: torch.Tensor, threshold: float = 0.9, signed: bool = False) -> dict[str, float]:
    """Recovery of planted ``directions [n_true, d_in]``: share whose best decoder cosine
    exceeds ``threshold`` (up to sign when ``signed``), and the mean cosine of a one-to-one
    (Hungarian) matching of true directions to decoder rows (a true direction left without
    a row, when there are fewer rows, counts 0)."""
    from ..planted import recovery

    rec = recovery(sae.W_dec, directions, threshold)
    dec = sae.W_dec.detach().float()
    matched = _matched_cosines(directions, torch.cat([dec, -dec]) if signed else dec)
    return {
        "recovered": rec["recovered_abs"] if signed else rec["recovered"],
        "mean_best_cosine": rec["mean_best_cosine"],
        "matched_mean_cosine": float(matched.sum() / directions.shape[0]),
    }


# ------------------------------------------------------------- supervised concepts
def concept_prompts(prompts_per_concept: int, seed: int = 0) -> tuple[list[str], dict[str, list[int]]]:
    """Prompts of each concept of :data:`CONCEPT_CLASSES` and as many of classes in none
    (ImageNet class names x CLIP's templates); returns the prompts and, per concept, the
    indices of its prompts."""
    import random

    from ..sources.corpus import imagenet_prompts, vehicle_class_ids

    classes = dict(CONCEPT_CLASSES, vehicle=vehicle_class_ids())
    rng = random.Random(seed)
    pool = imagenet_prompts("openai")
    by_concept = {c: [p.text for p in pool if p.class_id in set(ids)] for c, ids in classes.items()}
    taken = set().union(*map(set, classes.values()))
    others = [p.text for p in pool if p.class_id not in taken]
    texts: list[str] = []
    members: dict[str, list[int]] = {}
    for concept, candidates in by_concept.items():
        chosen = rng.sample(candidates, min(prompts_per_concept, len(candidates)))
        members[concept] = list(range(len(texts), len(texts) + len(chosen)))
        texts += chosen
    texts += rng.sample(others, prompts_per_concept)
    return texts, members


@torch.no_grad()
def prompt_tokens(source, prompts: Sequence[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The text-token rows ``[N, d_in]`` of ``prompts`` at the source's hook (start, end and
    padding tokens left out) and the prompt index of each row ``[N]``."""
    from ..store import TokenKind

    rows, ids = [], []
    for start in range(0, len(prompts), batch_size):
        batch = source.encode(list(prompts[start : start + batch_size]), start)
        text = batch.kind == int(TokenKind.TEXT)
        rows.append(batch.acts[text].float())
        ids.append(batch.input_id[text])
    return torch.cat(rows), torch.cat(ids)


def pool(values: torch.Tensor, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of the rows ``values [N, w]`` of each of ``n`` groups given by ``ids [N]``."""
    count = torch.bincount(ids, minlength=n).clamp_min(1).to(values.dtype)[:, None]
    return torch.zeros(n, values.shape[1], dtype=values.dtype).index_add_(0, ids, values) / count


@torch.no_grad()
def pooled_codes(sae: SparseAutoencoder, rows: torch.Tensor, ids: torch.Tensor, n: int, batch_size: int = 4096) -> torch.Tensor:
    """Per prompt, the mean SAE code ``[n, n_latents]`` over its token ``rows``."""
    out = torch.zeros(n, sae.n_latents)
    for start in range(0, rows.shape[0], batch_size):
        dense = sae.encode_dense(rows[start : start + batch_size]).float()
        out.index_add_(0, ids[start : start + batch_size], dense)
    return out / torch.bincount(ids, minlength=n).clamp_min(1).float()[:, None]


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for boolean ``labels`` (ties count half)."""
    pos, neg = scores[labels].double(), scores[~labels].double()
    if len(pos) == 0 or len(neg) == 0:
        raise UsageError("AUROC needs positive and negative examples")
    greater = (pos[:, None] > neg[None, :]).double().sum() + 0.5 * (pos[:, None] == neg[None, :]).double().sum()
    return float(greater / (len(pos) * len(neg)))


@torch.no_grad()
def concept_agreement(
    sae: SparseAutoencoder,
    acts: torch.Tensor,
    codes: torch.Tensor,
    members: dict[str, list[int]],
    seed: int = 0,
) -> dict[str, Any]:
    """Do the SAE's features agree with supervised concept directions?

    ``acts [P, d_in]`` and ``codes [P, n_latents]`` are per-prompt pooled activations and
    codes; ``members`` lists each concept's prompts (the rest are its negatives). Prompts
    are split in halves (seeded). On the first half, the supervised direction of a concept
    is the difference of means of the activations of its prompts and the others, and its
    SAE feature is the latent whose mean code differs most (in units of its spread). On
    the held-out half both are scored as concept detectors (AUROC of the projection on the
    direction, of the feature's activation). Also reported: the cosine of the feature's
    decoder row with the direction and the best cosine of any decoder row.
    """
    n_prompts = acts.shape[0]
    order = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed))
    fit = torch.zeros(n_prompts, dtype=torch.bool)
    fit[order[: n_prompts // 2]] = True
    dec = F.normalize(sae.W_dec.detach().float(), dim=1)
    per_concept = {}
    for concept, idx in members.items():
        label = torch.zeros(n_prompts, dtype=torch.bool)
        label[torch.as_tensor(idx, dtype=torch.long)] = True
        pos, neg = fit & label, fit & ~label
        direction = acts[pos].mean(0) - acts[neg].mean(0)
        spread = codes[fit].std(0).clamp_min(1e-6)
        feature = int(((codes[pos].mean(0) - codes[neg].mean(0)) / spread).argmax())
        cos = dec @ F.normalize(direction, dim=0)
        held = ~fit
        per_concept[concept] = {
            "feature": feature,
            "feature_cosine": float(cos[feature]),
            "best_cosine": float(cos.max()),
            "feature_auroc": auroc(codes[held, feature], label[held]),
            "direction_auroc": auroc(acts[held] @ direction, label[held]),
        }
    keys = ("feature_cosine", "best_cosine", "feature_auroc", "direction_auroc")
    mean = {k: sum(c[k] for c in per_concept.values()) / len(per_concept) for k in keys}
    return {"mean": mean, "concepts": per_concept}


def text_source(model_path: str, hook: str):
    """A :class:`~visionsae.sources.TextEncoderSource` on a transformers text encoder."""
    from transformers import AutoModel, AutoTokenizer

    from ..sources import TextEncoderSource

    return TextEncoderSource(
        AutoModel.from_pretrained(model_path), AutoTokenizer.from_pretrained(model_path), hook,
        max_length=32, padding="longest", attention_mask=True, skip_padding=True,
    )


def random_like(sae: SparseAutoencoder, seed: int = 0) -> SparseAutoencoder:
    """An untrained SAE of the same shape and rule (a floor for the scores above): random
    unit decoder rows, tied encoder, the trained one's b_dec and input scale."""
    torch.manual_seed(seed)
    rand = SparseAutoencoder(sae.cfg)
    with torch.no_grad():
        rand.b_dec.copy_(sae.b_dec)
        rand.input_scale.copy_(sae.input_scale)
        for name, buf in sae.rule.named_buffers():  # thresholds of batch rules
            dict(rand.rule.named_buffers())[name].copy_(buf)
    return rand.eval()
