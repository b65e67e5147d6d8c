"""SAUCE: selective concept unlearning in a vision-language model with an SAE.

An SAE on a language-model layer of a LLaVA-style VLM. A concept's features are selected
from images of the concept and other images, all asked the same questions
(:func:`select_concepts`): per conversation each latent's max activation over the chosen
tokens, then per latent either

* ``mean_diff`` (SAUCE's score): the concept images' mean share of activation on the latent
  (max / sum of maxes of that conversation) minus the other images' mean share, or
* ``ratio``: the concept images' mean activation over the other images' mean activation;

and the top ``top_n`` latents (or those above the ``percentile``-th percentile of positive
scores) are kept. The result is a :class:`~visionsae.concepts.ConceptSet` (JSON), as for ItD.

At inference (:class:`SAUCEUnlearner`) the concepts' features are suppressed on the image
tokens only (``tokens="image"``) or wherever they fire (``"all"``) — zeroed, scaled by a
negative factor or clamped — with the SAE's reconstruction error kept. It is
:class:`FeatureEdit` s gated per token: inside a call of the model, the image-token positions
of that call's ``input_ids`` (or every token); outside one, nothing. Concepts that share a
setting are one edit over the union of their features; ``enabled`` switches them off without
touching the model.

How many of a concept's features to suppress and how hard is a per-concept choice
(:func:`calibrate_unlearning`): on calibration images, the mildest setting that stops the
answers naming the concept while leaving other images' answers as they were. On the zoo one
setting does not fit every class (measured in ``visionsae.zoo.training.vqa_sae``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..concepts import Concept, ConceptSet, feature_union, sae_fingerprint, select_features
from ..concepts.select import stats_of
from ..sae import SparseAutoencoder
from ..sources.base import resolve_hook
from .edit import EditSpec, FeatureEdit
from ..errors import UsageError

SELECT_METHODS = ("mean_diff", "ratio")
TOKEN_SCOPES = ("image", "all")


def image_token_id(model: nn.Module) -> int:
    """The image placeholder id of a LLaVA-style model's config."""
    cfg = getattr(model, "config", None)
    for name in ("image_token_id", "image_token_index"):
        value = getattr(cfg, name, None)
        if value is not None:
            return int(value)
    raise UsageError(f"{type(model).__name__}'s config has no image_token_id / image_token_index; "
                     "the image-token policy needs one (or use tokens='all')")


def layer_hook(model: nn.Module, hook: str | None = None, layer: int | None = None) -> str:
    """The module path of a language-model decoder layer of ``model``.

    ``hook`` as recorded by an SAE is used when it resolves; otherwise (the path moved between
    transformers releases: ``language_model.model.layers.N`` in 4.x, ``model.language_model.layers.N``
    in 5.x) its trailing layer index is found under this model's decoder layers. ``layer``
    alone picks a layer by index (negative counts from the end).
    """
    from ..sources.vlm import decoder_layers_path

    if hook is None and layer is None:
        raise UsageError("no hook point: pass hook= or layer=, or use an SAE / concept set that records one")
    if hook is not None:
        try:
            return resolve_hook(model, hook)
        except ValueError:
            tail = hook.rsplit(".", 2)
            if len(tail) < 2 or tail[-2] != "layers" or not tail[-1].isdigit():
                raise
            layer = int(tail[-1])
    path = decoder_layers_path(model)
    n = len(model.get_submodule(path))
    if not -n <= layer < n:
        raise UsageError(f"layer {layer} is out of range: {type(model).__name__}'s language model has {n} layers")
    return f"{path}.{layer % n}"


# ----------------------------------------------------------------------------- selection
@torch.no_grad()
def conversation_maxes(model: nn.Module, processor: Any, sae: SparseAutoencoder, images: Sequence[Any],
                       questions: Sequence[str], hook: str, tokens: str = "image", batch_size: int = 64,
                       progress: bool = False) -> torch.Tensor:
    """Per (image, question) conversation, each latent's max activation ``[N, n_latents]``
    over the image tokens (``tokens="image"``) or all image and text tokens (``"all"``; the
    start token left out, as in concept selection for text)."""
    from ..sources import VLMSource

    if tokens not in TOKEN_SCOPES:
        raise UsageError(f"unknown token scope {tokens!r}; expected one of {TOKEN_SCOPES}")
    if len(images) != len(questions):
        raise UsageError(f"got {len(images)} images but {len(questions)} questions; pass one question per image")
    src = VLMSource(model, processor, hook=hook, keep_kinds=["image"] if tokens == "image" else ["image", "text"])
    n = sae.n_latents
    records = [{"image": im, "question": q} for im, q in zip(images, questions)]
    out = torch.zeros(len(records), n)
    for start in tqdm(range(0, len(records), batch_size), desc="encode conversations", disable=not progress, unit="batch"):
        chunk = records[start : start + batch_size]
        batch = src.encode(chunk, 0)
        code = sae.encode(batch.acts.to(sae.W_enc.device, sae.W_enc.dtype))  # [rows, k]
        flat = (batch.input_id.to(code.indices.device)[:, None] * n + code.indices).reshape(-1)
        buf = torch.zeros(len(chunk) * n, device=code.values.device)
        buf.scatter_reduce_(0, flat, code.values.abs().reshape(-1).float(), reduce="amax")
        out[start : start + len(chunk)] = buf.view(len(chunk), n).cpu()
    return out


def score_features(concept: torch.Tensor, others: torch.Tensor | Sequence[torch.Tensor], method: str = "mean_diff",
                   top_n: int | None = 16, percentile: float = 99.0) -> tuple[list[int], list[float]]:
    """Latent ids and scores, best first, from conversation maxes of the concept's images
    ``[N_c, n]`` and of other images: one ``[N_o, n]`` group or several (e.g. one per other
    concept). Against several groups a latent scores against the group that uses it most,
    so a feature the concept shares with one other concept (a shoe feature, for sneakers
    and boots) scores low however rare it is in the rest."""
    if method not in SELECT_METHODS:
        raise UsageError(f"unknown selection method {method!r}; expected one of {SELECT_METHODS}")
    groups = [others] if isinstance(others, torch.Tensor) else list(others)
    if concept.shape[0] == 0 or not groups or any(g.shape[0] == 0 for g in groups):
        raise UsageError("selection needs at least one concept conversation and one conversation in every other group")
    if top_n is not None and top_n < 1:
        raise UsageError(f"top_n must be >= 1 or None, got {top_n}")
    if method == "mean_diff":
        # the shared mean-difference rule of visionsae.concepts (percentile 0 = every positive score)
        return select_features(stats_of(concept), [stats_of(g) for g in groups], method="mean_diff",
                               percentile=0.0 if top_n is not None else percentile, max_features=top_n)
    c_mean = concept.mean(0)
    o_mean = torch.stack([g.mean(0) for g in groups]).amax(0)
    floor = max(float(o_mean[o_mean > 0].min()) if (o_mean > 0).any() else 1e-6, 1e-6)
    score = c_mean / (o_mean + floor)  # a latent the others never use scores by its own strength
    score[c_mean == 0] = 0
    positive = score[score > 0]
    if positive.numel() == 0:
        return [], []
    if top_n is not None:
        ids = score.argsort(descending=True)[: min(top_n, positive.numel())]
    else:
        cut = torch.quantile(positive.double(), percentile / 100).float()
        ids = (score >= cut).nonzero().squeeze(-1)
        ids = ids[score[ids].argsort(descending=True)]
    return ids.tolist(), [float(score[i]) for i in ids]


def select_concepts(model: nn.Module, processor: Any, sae: SparseAutoencoder, examples: Mapping[str, Sequence[Any]],
                    questions: Sequence[str], *, others: Sequence[Any] | None = None, hook: str | None = None,
                    method: str = "mean_diff", top_n: int | None = 16, percentile: float = 99.0, tokens: str = "image",
                    against: str = "pooled", ask: str = "one", batch_size: int = 64, seed: int = 0, progress: bool = False) -> ConceptSet:
    """A concept set from example images: ``examples`` maps each concept name to its images.

    Each image is asked one of ``questions`` (``ask="one"``: cycled in a seeded order, so
    every group gets the same questions) or every one of them (``ask="all"``). A concept is scored against ``others`` (images of none of the
    concepts) if given, else against the other concepts' images: all of them as one group
    (``against="pooled"``) or each concept's as a group of its own (``"each"``, see
    :func:`score_features`).
    """
    if against not in ("pooled", "each"):
        raise UsageError(f"against must be 'pooled' or 'each', got {against!r}")
    if ask not in ("one", "all"):
        raise UsageError(f"ask must be 'one' or 'all', got {ask!r}")
    if not examples:
        raise UsageError("no concepts given: examples maps a concept name to its images")
    if not questions:
        raise UsageError("no questions given: every example image is asked one of them")
    hook = layer_hook(model, hook or sae.cfg.hook)
    rng = torch.Generator().manual_seed(seed)

    def maxes_of(images: Sequence[Any]) -> torch.Tensor:
        if ask == "all":
            pairs = [(im, q) for im in images for q in questions]
        else:
            order = torch.randperm(len(images), generator=rng).tolist()
            pairs = [(im, questions[order[i] % len(questions)]) for i, im in enumerate(images)]
        return conversation_maxes(model, processor, sae, [p[0] for p in pairs], [p[1] for p in pairs], hook, tokens,
                                  batch_size, progress)

    per_concept = {name: maxes_of(images) for name, images in examples.items()}
    other_maxes = maxes_of(others) if others is not None else None
    concepts = {}
    for name, mx in per_concept.items():
        rest = [other_maxes] if other_maxes is not None else [m for n, m in per_concept.items() if n != name]
        if against == "pooled" and len(rest) > 1:
            rest = [torch.cat(rest)]
        if not rest:
            raise UsageError(f"concept {name!r} has nothing to be compared with: pass others= or a second concept")
        ids, scores = score_features(mx, rest, method, top_n, percentile)
        if not ids:
            raise UsageError(f"no SAE latent is more active on {name!r}'s images than on the others'")
        concepts[name] = Concept(name, ids, scores, selection={
            "method": f"sauce_{method}", "tokens": tokens, "top_n": top_n,
            "percentile": None if top_n is not None else percentile, "questions": len(questions), "ask": ask,
            "concept_conversations": int(mx.shape[0]), "other_conversations": sum(int(r.shape[0]) for r in rest),
            "against": "others" if other_maxes is not None else f"other concepts ({against})"})
    return ConceptSet(hook, sae_fingerprint(sae), sae.n_latents, concepts)


# ----------------------------------------------------------------------------- unlearning
class SAUCEUnlearner:
    """Suppress ``names`` (default: every concept of the set) in ``model`` (a LLaVA-style VLM).

    ``tokens``: ``image`` edits the image-token positions only, ``all`` every token where a
    chosen feature fires (prompt and generated tokens). ``mode`` / ``value``: ``zero``,
    ``scale`` by ``value`` (negative pushes the features the other way) or ``clamp`` to
    ``value``; ``mode=None`` uses each concept's calibrated setting
    (:func:`calibrate_unlearning`; ``zero`` for a concept without one). Concepts that share a
    setting are one :class:`FeatureEdit` over the union of their features. The edits run only
    inside calls of ``model`` itself (so a wrapper that shares its layers with another model
    object does not edit that one); ``enabled`` toggles them.
    """

    def __init__(self, model: nn.Module, sae: SparseAutoencoder, concepts: ConceptSet, names: Sequence[str] | None = None,
                 hook: str | None = None, tokens: str = "image", mode: str | None = "zero", value: float = 0.0,
                 keep_error: bool = True) -> None:
        if tokens not in TOKEN_SCOPES:
            raise UsageError(f"unknown token scope {tokens!r}; expected one of {TOKEN_SCOPES}")
        if mode not in ("zero", "scale", "clamp", None):
            raise UsageError(f"SAUCE suppresses with mode 'zero', 'scale' or 'clamp' (or None: calibrated), not {mode!r}")
        concepts.check_sae(sae)
        self.names = list(names) if names is not None else concepts.names()
        if not self.names:
            raise UsageError("no concepts to unlearn")
        self.model = model
        self.tokens = tokens
        self.image_token_id = image_token_id(model) if tokens == "image" else None
        hook = layer_hook(model, hook or concepts.hook or sae.cfg.hook)
        groups: dict[tuple[str, float], list[str]] = {}
        for name in self.names:
            c = concepts[name]
            setting = (mode, value) if mode is not None else (c.calibration.get("mode", "zero"), float(c.calibration.get("value", 0.0)))
            groups.setdefault(setting, []).append(name)
        self.edits = [FeatureEdit(model, hook, sae, EditSpec(feature_union(concepts, group).tolist(), mode=m, value=v,
                                                            tokens="active", keep_error=keep_error), gate=self._gate)
                      for (m, v), group in groups.items()]
        self.settings = {n: {"mode": m, "value": v} for (m, v), group in groups.items() for n in group}
        self._tokens: torch.Tensor | None = None  # [B, T, 1] of the model's call under way; None outside one
        self._handles: list = []

    @property
    def sae(self) -> SparseAutoencoder:
        return self.edits[0].sae

    @property
    def features(self) -> list[int]:
        return sorted({f for e in self.edits for f in e._feature_ids.tolist()})

    @property
    def enabled(self) -> bool:
        return all(e.enabled for e in self.edits)

    @enabled.setter
    def enabled(self, on: bool) -> None:
        for edit in self.edits:
            edit.enabled = bool(on)

    def _before(self, module, args, kwargs) -> None:
        """A call of the model begins: the tokens its edits may change."""
        if self.tokens == "all":
            self._tokens = torch.ones(1, 1, 1, dtype=torch.bool)
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            if not self.enabled:
                return
            raise UsageError("SAUCE on image tokens needs input_ids (it finds the image positions there), "
                             "not inputs_embeds; pass input_ids or unlearn with tokens='all'")
        self._tokens = (ids == self.image_token_id)[:, :, None]  # [B, T, 1]; no image token after the prompt

    def _after(self, module, args, kwargs, output) -> None:
        self._tokens = None

    def _gate(self, h: torch.Tensor, code) -> torch.Tensor:
        """The edits' gate: the tokens of the model's call under way, none outside one (a wrapper
        sharing the layers with another model object is not edited)."""
        if self._tokens is None:
            return torch.zeros(h.shape[0], dtype=torch.bool)
        mask = self._tokens
        if mask.shape[0] not in (1, h.shape[0]) or mask.shape[1] not in (1, h.shape[1]):
            raise UsageError(f"the model's input_ids have shape {tuple(mask.shape[:2])}, the hooked layer's activations "
                             f"{tuple(h.shape[:2])} (batch, tokens): SAUCE on image tokens needs them to match")
        return mask.expand(h.shape[0], -1, -1)

    def attach(self) -> "SAUCEUnlearner":
        if not self._handles:
            for edit in self.edits:
                edit.attach()
            self._handles = [self.model.register_forward_pre_hook(self._before, with_kwargs=True),
                             self.model.register_forward_hook(self._after, with_kwargs=True, always_call=True)]
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        for edit in self.edits:
            edit.detach()

    def __enter__(self) -> "SAUCEUnlearner":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()


# ----------------------------------------------------------------------------- calibration
Ask = Callable[[Sequence[Any], Sequence[str]], list]
"""ask(images, questions) -> one answer string per image, through the (hooked) model."""


def calibrate_unlearning(model: nn.Module, sae: SparseAutoencoder, concepts: ConceptSet, name: str, ask: Ask,
                         concept_images: Sequence[Any], concept_questions: Sequence[str], other_images: Sequence[Any],
                         other_questions: Sequence[str], *, feature_counts: Sequence[int] = (4, 8, 12, 16, 24),
                         values: Sequence[float] = (-0.5, -1.0, -2.0), mode: str = "scale", tokens: str = "all",
                         words: Sequence[str] | None = None, max_named: float = 0.05, max_changed: float = 0.02,
                         progress: bool = False) -> dict:
    """Choose how many of ``name``'s features (best first) to suppress and how hard.

    Each setting (``feature_counts`` x ``values``) is tried on calibration images: the share
    of the concept's answers that still name it (any of ``words``, default the concept's
    name) must be at most ``max_named``, and the share of other images' answers that change
    at most ``max_changed``; of the settings that pass, the one that changes the fewest other
    answers wins (then fewer features, then the milder value). The concept in ``concepts``
    is updated in place (features cut to the chosen count, the setting and its measurements
    in ``calibration``); the measurements are returned. Use images the evaluation does not.
    """
    if len(concept_images) != len(concept_questions) or len(other_images) != len(other_questions):
        raise UsageError("pass one question per calibration image")
    concept = concepts[name]
    words = [w.lower() for w in (words or [name])]
    stock_other = ask(other_images, other_questions)
    stock_named = sum(any(w in a for w in words) for a in ask(concept_images, concept_questions)) / max(1, len(concept_images))
    all_features = list(concept.features)
    trials = []
    settings = [(n, v) for n in feature_counts if n <= len(all_features) for v in values]
    for n, v in tqdm(settings, desc=f"calibrate {name}", disable=not progress, unit="setting"):
        trial = ConceptSet(concepts.hook, concepts.sae_fingerprint, concepts.n_latents,
                           {name: Concept(name, all_features[:n], concept.scores[:n])})
        with SAUCEUnlearner(model, sae, trial, [name], tokens=tokens, mode=mode, value=v):
            named = sum(any(w in a for w in words) for a in ask(concept_images, concept_questions)) / max(1, len(concept_images))
            changed = sum(a != b for a, b in zip(ask(other_images, other_questions), stock_other)) / max(1, len(other_images))
        trials.append({"features": n, "value": v, "named": named, "others_changed": changed,
                       "passes": named <= max_named and changed <= max_changed})
    if not trials:
        raise UsageError(f"concept {name!r} has {len(all_features)} features, fewer than every count in {tuple(feature_counts)}")
    passing = [t for t in trials if t["passes"]]
    best = min(passing, key=lambda t: (t["others_changed"], t["features"], abs(t["value"]))) if passing else \
        min(trials, key=lambda t: (t["named"], t["others_changed"], t["features"], abs(t["value"])))
    result = {"mode": mode, "value": best["value"], "features": best["features"], "tokens": tokens, "met": bool(passing),
              "named": best["named"], "named_stock": stock_named, "others_changed": best["others_changed"],
              "max_named": max_named, "max_changed": max_changed, "concept_images": len(concept_images),
              "other_images": len(other_images), "trials": trials}
    concept.features = all_features[: best["features"]]
    concept.scores = concept.scores[: best["features"]]
    concept.calibration = result
    return result
