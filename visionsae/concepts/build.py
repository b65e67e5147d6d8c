"""Build a calibrated concept set: select each concept's features, then set its threshold.

    cs = build_concept_set(sae, source, concept_prompts, keep_prompts,
                           heldout_prompts, keep_heldout, target_recall=0.95)

``concept_prompts[name]`` select the features (with ``keep_prompts`` as what must not be
erased); ``heldout_prompts[name]`` and ``keep_heldout`` (never seen in selection) set and
check the threshold. Every concept's calibration dict records recall, false-positive rate,
precision and AUROC on those held-out prompts.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ..sae import SparseAutoencoder
from .classifier import calibrate, concept_scores
from .conceptset import Concept, ConceptSet, sae_fingerprint, starts_with_special
from .linear import calibrate_fpr, fit_linear, pooled_codes
from .normalize import Normalizer, as_read, vocabulary
from .select import prompt_activations, prompt_stats, select_features
from ..errors import UsageError


@torch.no_grad()
def score_prompts(sae: SparseAutoencoder, source, prompts: Sequence[str], groups: Sequence[torch.Tensor],
                  kind: str = "itd", batch_size: int = 64, skip_first: bool = True) -> torch.Tensor:
    """Concept scores ``[P, C]`` of ``prompts`` for ``C`` feature groups."""
    out = []
    for acts in prompt_activations(source, prompts, batch_size):
        out.append(concept_scores(sae, acts, sae.encode(acts), groups, kind, skip_first))
    return torch.cat(out)


def build_concept_set(
    sae: SparseAutoencoder,
    source,
    concept_prompts: Mapping[str, Sequence[str]],
    keep_prompts: Sequence[str],
    heldout_prompts: Mapping[str, Sequence[str]],
    keep_heldout: Sequence[str],
    target_recall: float = 0.95,
    score: str = "itd",
    method: str = "itd",
    top_n: int = 8,
    min_frequency: float = 0.1,
    keep_tolerance: float = 0.05,
    percentile: float = 99.5,
    max_features: int | None = 32,
    others_as_keep: bool = True,
    broad_edit: bool = False,
    progress: bool = True,
) -> ConceptSet:
    """Select and calibrate every concept (see the module docstring).

    With ``others_as_keep`` (for mutually exclusive concepts such as classes), each
    concept's features must also be rare in the other concepts' prompts, and its
    false-positive rate counts the other concepts' held-out prompts too
    (``calibration['fpr_other_concepts']``).

    With ``broad_edit`` (and ``others_as_keep``), each concept's ``edit_features`` are its
    features plus those selected against the keep prompts alone: the classifier tells the
    classes apart with the specific features, while an erasure also removes the features a
    class shares with related classes ("footwear", "a pair of"), which would otherwise let the
    generator draw the nearest related class.
    """
    missing = sorted(set(concept_prompts) - set(heldout_prompts))
    if missing:
        raise UsageError(f"concepts {missing} have no held-out prompts to calibrate on")
    skip = starts_with_special(getattr(source, "tokenizer", None))  # CLIP / BERT: leave the start token out
    keep = prompt_stats(sae, source, keep_prompts, top_n, skip_first=skip, progress=progress)
    hook = getattr(source, "hook", None) or sae.cfg.hook
    cs = ConceptSet(hook, sae_fingerprint(sae), sae.n_latents, {}, score, skip)
    keep_scores_all = None
    selected: dict[str, tuple[list[int], list[float]]] = {}
    edit_features: dict[str, list[int]] = {}
    stats = {name: prompt_stats(sae, source, prompts, top_n, skip_first=skip) for name, prompts in concept_prompts.items()}
    for name in concept_prompts:
        negatives = [keep] + ([stats[o] for o in stats if o != name] if others_as_keep else [])
        ids, scores = select_features(stats[name], negatives, method, min_frequency, keep_tolerance, percentile, max_features)
        if not ids:
            raise UsageError(f"no feature of this SAE is specific to concept {name!r}; give more or clearer prompts")
        selected[name] = (ids, scores)
        if broad_edit and others_as_keep:
            broad, _ = select_features(stats[name], [keep], method, min_frequency, keep_tolerance, percentile, max_features)
            edit_features[name] = sorted(set(ids) | set(broad))
    names = list(selected)
    groups = [torch.tensor(selected[n][0]) for n in names]
    keep_scores_all = score_prompts(sae, source, keep_heldout, groups, score, skip_first=skip)
    heldout_scores = {n: score_prompts(sae, source, heldout_prompts[n], groups, score, skip_first=skip) for n in names}
    for c, name in enumerate(names):
        pos = heldout_scores[name][:, c]
        neg = keep_scores_all[:, c]
        others = [heldout_scores[o][:, c] for o in names if o != name]
        if others_as_keep and others:
            neg = torch.cat([neg, *others])
        cal = calibrate(pos, neg, target_recall)
        cal["fpr_keep"] = float((keep_scores_all[:, c] >= cal["threshold"]).float().mean())
        if others:
            cal["fpr_other_concepts"] = float((torch.cat(others) >= cal["threshold"]).float().mean())
        cal["heldout_prompts"] = len(heldout_prompts[name])
        ids, scores = selected[name]
        cs.concepts[name] = Concept(
            name, ids, scores, cal["threshold"], cal,
            {"method": method, "top_n": top_n, "min_frequency": min_frequency, "keep_tolerance": keep_tolerance,
             "percentile": percentile, "max_features": max_features, "prompts": len(concept_prompts[name]),
             "keep_prompts": len(keep_prompts), "broad_edit": bool(broad_edit and others_as_keep)},
            edit_features.get(name),
        )
    return cs


def build_linear_concept_set(
    sae: SparseAutoencoder,
    source,
    concept_prompts: Mapping[str, Sequence[str]],
    keep_prompts: Sequence[str],
    heldout_prompts: Mapping[str, Sequence[str]],
    keep_heldout: Sequence[str],
    near_misses: Mapping[str, Sequence[str]] | None = None,
    near_misses_heldout: Mapping[str, Sequence[str]] | None = None,
    max_fpr: float = 0.005,
    l1: float = 3e-4,
    others_as_keep: bool = True,
    normalize: bool = True,
    progress: bool = True,
    extra_positives: Mapping[str, Sequence[str]] | None = None,
) -> ConceptSet:
    """Concepts scored by a sparse linear read-out of their features (:mod:`.linear`).

    ``extra_positives[name]`` are more prompts of the concept for the fit only (e.g. attack-style
    prompts the generator still draws as it): they add no word to the concept's vocabulary and
    set no threshold.

    Per concept: the weights are fitted on ``concept_prompts[name]`` against ``keep_prompts``,
    its ``near_misses`` and (with ``others_as_keep``) the other concepts' prompts; the threshold
    is the lowest that keeps the false-positive rate of each held-out group (``keep_heldout``,
    ``near_misses_heldout[name]``, the other concepts' ``heldout_prompts``) at most ``max_fpr``.
    Every held-out prompt is scored as the eraser scores it: the higher of its own score and
    its normal form's (with ``normalize``; the vocabulary is each concept's marking words).
    ``calibration`` records the held-out recall and each group's false-positive rate.
    """
    from tqdm.auto import tqdm

    names = list(concept_prompts)
    extra = dict(extra_positives or {})
    _check_names(names, heldout_prompts, extra)
    near_misses, near_misses_heldout = dict(near_misses or {}), dict(near_misses_heldout or {})
    vocab = {n: vocabulary(concept_prompts[n], [*keep_prompts, *near_misses.get(n, ()),
                                                 *(p for o in names if o != n for p in concept_prompts[o])])
             for n in names}
    normalizer = Normalizer(w for ws in vocab.values() for w in ws) if normalize else None

    skip = starts_with_special(getattr(source, "tokenizer", None))  # CLIP / BERT: leave the start token out
    scorer = _Scorer(sae, source, skip, normalizer)
    codes = scorer.codes
    bar = tqdm(total=2 * len(names) + 2, desc="build concepts", disable=not progress, unit="step")
    keep = codes(keep_prompts)
    own = {n: codes([*concept_prompts[n], *extra.get(n, ())]) for n in names}
    near = {n: codes(near_misses.get(n, ())) for n in names}
    bar.update(1)
    fits = _fit_read_outs(own, keep, near, others_as_keep, l1, bar)

    def read(prompts):
        return scorer.read(fits, prompts)

    held = {n: read(heldout_prompts[n]) for n in names}
    keep_held = read(keep_heldout)
    bar.update(1)
    hook = getattr(source, "hook", None) or sae.cfg.hook
    cs = ConceptSet(hook, sae_fingerprint(sae), sae.n_latents, {}, "linear", skip)
    for n in names:
        groups = {"keep": keep_held[n], "near_misses": read(near_misses_heldout.get(n, ()))[n]}
        if others_as_keep:
            groups["other_concepts"] = torch.cat([held[o][n] for o in names if o != n] or [torch.zeros(0)])
        cal = calibrate_fpr(held[n][n], groups, max_fpr)
        cal["heldout_prompts"] = len(heldout_prompts[n])
        fit = fits[n]
        cs.concepts[n] = Concept(
            n, fit.features, fit.weights, cal["threshold"], cal,
            {"method": "linear", "l1": l1, "max_fpr": max_fpr, "prompts": len(concept_prompts[n]),
             "keep_prompts": len(keep_prompts), "near_misses": len(near_misses.get(n, ())),
             "extra_positives": len(extra.get(n, ())),
             "others_as_keep": others_as_keep, "normalize": normalize},
            edit_features=sorted(fit.positive), weights=fit.weights, bias=fit.bias, vocabulary=vocab[n],
        )
        bar.update(1)
    bar.close()
    return cs


def _check_names(names: Sequence[str], heldout_prompts: Mapping, extra: Mapping) -> None:
    missing = sorted(set(names) - set(heldout_prompts))
    if missing:
        raise UsageError(f"concepts {missing} have no held-out prompts to calibrate on")
    unknown = sorted(set(extra) - set(names))
    if unknown:
        raise UsageError(f"extra positives for {unknown}, which are not among the concepts {names}")


def _fit_read_outs(own: dict, keep, near: dict, others_as_keep: bool, l1: float, bar) -> dict:
    """Each concept's read-out, fitted against three negative groups of equal weight: generic
    prompts, its near misses and (with ``others_as_keep``) the other concepts' prompts."""
    fits = {}
    for n in own:
        others = [own[o].coalesce() for o in own if o != n] if others_as_keep else []
        negatives = [keep, near[n], *([torch.cat(others)] if others else [])]
        fits[n] = fit_linear(own[n], negatives, l1=l1)
        bar.update(1)
    return fits


class _Scorer:
    """Pooled SAE codes of prompts, and each fitted read-out's score of them as the eraser reads
    them: the higher of the prompt's own score and its normal form's."""

    def __init__(self, sae: SparseAutoencoder, source, skip_first: bool, normalizer) -> None:
        self.sae, self.source, self.skip_first, self.normalizer = sae, source, skip_first, normalizer

    def codes(self, prompts) -> torch.Tensor:
        prompts = list(prompts)
        if not prompts:
            return torch.zeros(0, self.sae.n_latents).to_sparse()
        return pooled_codes(self.sae, self.source, prompts, skip_first=self.skip_first)

    def read(self, fits: Mapping, prompts) -> dict[str, torch.Tensor]:
        prompts = list(prompts)
        if not prompts:
            return {n: torch.zeros(0) for n in fits}
        raw = self.codes(prompts)
        scores = {n: f.score(raw) for n, f in fits.items()}
        if self.normalizer is not None:
            read_as = as_read(self.source.tokenizer, prompts)
            normal = [self.normalizer(t) for t in read_as]
            changed = [i for i, (a, b) in enumerate(zip(read_as, normal)) if a != b]
            if changed:
                alt = self.codes([normal[i] for i in changed])
                for n, f in fits.items():
                    scores[n][changed] = torch.maximum(scores[n][changed], f.score(alt))
        return scores
