"""The web demo's back ends, free of any UI: erasure (:class:`Eraser`, here), VQA
(:class:`~visionsae.demos.app_vqa.Asker`) and the blindspot audit
(:class:`~visionsae.demos.app_audit.Auditor`), with the Markdown the page shows. ``demos/app.py``
puts them in a Gradio page; they can be scripted without it::

    eraser = Eraser.zoo()
    result = eraser.erase("a photo of a sneaker", ["sneaker"])
    result.decisions["sneaker"]      # {score, threshold, flagged}
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

from visionsae.errors import UsageError

log = logging.getLogger("visionsae.app")

MAX_PROMPT_CHARS = 1000
LABEL_PROMPTS = 3  # top-activating prompts shown per feature


class AppError(UsageError):
    """Bad input, explained to the user in the page."""


# --------------------------------------------------------------------------- erasure


@dataclass
class EraseResult:
    """What one erase request produced."""

    prompt: str
    stock: Any  # [H, W, 3] float32 in [0, 1]
    erased: Any  # [H, W, 3] float32 in [0, 1]
    decisions: dict[str, dict]  # concept -> {score, threshold, flagged}
    identical: bool  # the erased image is the stock image, bit for bit
    features: list[dict]  # the erased features that fired on the prompt (see Eraser.fired_features)
    new_concept: dict | None = None  # selection / calibration of a concept typed in the request
    mode: str = "zero"
    value: float = 0.0
    seconds: float = 0.0
    seed: int = 0
    steps: int = 0


@dataclass
class Eraser:
    """The app's erasure back end: one ItD pipeline, its SAE and concept set, one request at a time."""

    pipe: Any  # an ItDStableDiffusionPipeline
    sae: Any  # the SparseAutoencoder on pipe.text_encoder
    concepts: Any  # its ConceptSet
    settings: dict  # sampling defaults (height, width, num_inference_steps, guidance_scale)
    mode: str = "zero"  # default edit mode
    value: float = 0.0  # default scale factor
    default_erase: list[str] = field(default_factory=list)
    default_prompt: str = ""
    label_prompts: list[str] = field(default_factory=list)
    keep_prompts: list[str] = field(default_factory=list)  # generic prompts a typed concept must not share features with
    device: str = "cpu"

    def __post_init__(self) -> None:
        from visionsae.sources.text import TextEncoderSource

        hook = self.concepts.hook or self.sae.cfg.hook
        self.source = TextEncoderSource(self.pipe.text_encoder, self.pipe.tokenizer, hook)
        self._lock = threading.Lock()
        self._labels: tuple[Any, Any] | None = None  # (values [K, n], prompt ids [K, n]) of the top label prompts
        self._keep_stats = None
        self._keep_codes = None  # pooled SAE codes of the generic prompts (a typed linear concept)
        self._typed: dict[tuple, Any] = {}  # (name, examples) -> Concept
        self._eraser_key: tuple | None = None  # the (concepts, mode, value, typed concept) the pipeline's eraser has

    # -- construction

    @classmethod
    def zoo(cls, device: str = "cpu", label_prompts: Sequence[str] | None = None) -> "Eraser":
        """The embedded zoo model with its text SAE and class concepts, with ``visionsae demo``'s defaults."""
        from visionsae.pipelines.itd import ItDStableDiffusionPipeline
        from visionsae.concepts import ConceptSet
        from visionsae.sae import SparseAutoencoder
        from visionsae.zoo import NUM_CLASSES, load_fashion_pipeline, zoo_dir
        from visionsae.zoo.captions import sample_prompts
        from visionsae.zoo.settings import DEMO_ERASE, DEMO_PROMPTS, ERASE_MODE, ERASE_VALUE, TEXT_SAE_DIR as SAE_DIR

        stock = load_fashion_pipeline(device=device)
        pipe = ItDStableDiffusionPipeline.from_pipe(stock)
        pipe.set_progress_bar_config(disable=True)
        sae = SparseAutoencoder.from_pretrained(zoo_dir() / SAE_DIR).to(device).eval()
        concepts = ConceptSet.load(zoo_dir() / SAE_DIR / "concepts.json")
        generic = _imagenet_prompts(200)
        if label_prompts is None:
            label_prompts = [p for c in range(NUM_CLASSES) for p in sample_prompts(c, 30, "train", seed=0)] + generic
        return cls(pipe, sae, concepts, dict(stock.zoo_settings), ERASE_MODE, ERASE_VALUE, list(DEMO_ERASE), DEMO_PROMPTS[0],
                   list(label_prompts), generic, device)

    @classmethod
    def from_paths(cls, model: str, sae: str, concepts: str, device: str = "cpu",
                   label_prompts: Sequence[str] | None = None) -> "Eraser":
        """A Stable Diffusion 1.x / 2.x pipeline (folder or Hugging Face id) with an SAE and concept set."""
        from visionsae.pipelines.itd import ItDStableDiffusionPipeline
        from visionsae.concepts import ConceptSet
        from visionsae.sae import SparseAutoencoder

        pipe = ItDStableDiffusionPipeline.from_pretrained(model).to(device)  # float32: diffusers' default dtype
        pipe.set_progress_bar_config(disable=True)
        sae_model = SparseAutoencoder.from_pretrained(sae).to(device).eval()
        cs = ConceptSet.load(concepts)
        cs.check_sae(sae_model)
        generic = _imagenet_prompts(500)
        return cls(pipe, sae_model, cs, {"num_inference_steps": 30, "guidance_scale": 7.5}, "zero", 0.0,
                   cs.names()[:1], "a photo of a cat", list(label_prompts or generic), generic[:200], device)

    # -- checks

    def check_prompt(self, prompt: Any, what: str = "prompt") -> str:
        """The stripped prompt, or an AppError saying what is wrong with it."""
        from visionsae.sources.text import check_prompt_text

        if not isinstance(prompt, str) or not prompt.strip():
            raise AppError(f"The {what} is empty: type what the image should show, e.g. {self.default_prompt!r}.")
        try:
            prompt = check_prompt_text(prompt, f"The {what}").strip()
        except UsageError as exc:
            raise AppError(f"{exc}; retype it.") from None
        limit = self.pipe.tokenizer.model_max_length
        if len(prompt) > MAX_PROMPT_CHARS:
            raise AppError(f"The {what} is {len(prompt)} characters long; keep it under {MAX_PROMPT_CHARS}.")
        n = len(self.pipe.tokenizer(prompt, truncation=False, verbose=False)["input_ids"])
        if n > limit:
            raise AppError(f"The {what} is {n} tokens long but this model's text encoder reads at most {limit} "
                           f"(the rest would be cut off silently); shorten it.")
        return prompt

    def check_names(self, names: Sequence[str] | None) -> list[str]:
        names = [n for n in (names or []) if n]
        unknown = [n for n in names if n not in self.concepts.concepts]
        if unknown:
            raise AppError(f"Unknown concept {unknown[0]!r}; this model's concept set has "
                           f"{', '.join(self.concepts.names())}. To erase something else, type it as a new concept "
                           "with a few example prompts.")
        return names

    # -- a concept typed in the page

    def typed_concept(self, name: str, examples: Sequence[str]):
        """A :class:`~visionsae.concepts.Concept` from a few example prompts: its features selected
        against generic prompts, its threshold the lowest example score (so every example is flagged)."""
        from visionsae.concepts import Concept, calibrate, prompt_stats, select_features
        from visionsae.concepts.build import score_prompts

        key = (name, tuple(examples))
        if key in self._typed:
            return self._typed[key]
        if self.concepts.score == "linear":
            self._typed[key] = self._typed_linear_concept(name, examples)
            return self._typed[key]
        if self._keep_stats is None:
            self._keep_stats = prompt_stats(self.sae, self.source, self.keep_prompts, top_n=8,
                                            skip_first=self.concepts.skip_first)
        stats = prompt_stats(self.sae, self.source, examples, top_n=8, skip_first=self.concepts.skip_first)
        ids, scores = select_features(stats, self._keep_stats, "itd", min_frequency=0.5, keep_tolerance=0.05,
                                      max_features=32)
        if not ids:
            raise AppError(f"No SAE feature is specific to {name!r} in these {len(examples)} examples (a feature must "
                           "be among the strongest in at least half of them and rare in generic prompts); give more "
                           "or clearer examples.")
        group = [self._tensor(ids)]
        pos = score_prompts(self.sae, self.source, examples, group, self.concepts.score,
                            skip_first=self.concepts.skip_first)[:, 0]
        neg = score_prompts(self.sae, self.source, self.keep_prompts, group, self.concepts.score,
                            skip_first=self.concepts.skip_first)[:, 0]
        cal = calibrate(pos, neg, target_recall=1.0)
        concept = Concept(name, ids, scores, cal["threshold"], cal,
                          {"method": "itd", "top_n": 8, "min_frequency": 0.5, "keep_tolerance": 0.05,
                           "max_features": 32, "prompts": len(examples), "keep_prompts": len(self.keep_prompts)})
        self._typed[key] = concept
        return concept

    def _typed_linear_concept(self, name: str, examples: Sequence[str]):
        """A linear concept (the zoo's kind) fitted on the examples against the generic prompts;
        its threshold the lowest example score, so every example is flagged."""
        from visionsae.concepts import Concept
        from visionsae.concepts.linear import fit_linear, pooled_codes

        if self._keep_codes is None:
            self._keep_codes = pooled_codes(self.sae, self.source, self.keep_prompts, skip_first=self.concepts.skip_first)
        pos = pooled_codes(self.sae, self.source, list(examples), skip_first=self.concepts.skip_first)
        try:
            fit = fit_linear(pos, self._keep_codes, min_support=max(1, len(examples) // 2))
        except ValueError:
            fit = None
        if fit is None or not fit.positive:
            raise AppError(f"No SAE feature is specific to {name!r} in these {len(examples)} examples (a feature must "
                           "fire in at least half of them and weigh against generic prompts); give more or clearer "
                           "examples.")
        threshold = float(fit.score(pos).min())
        fpr = float((fit.score(self._keep_codes) >= threshold).float().mean())
        cal = {"threshold": threshold, "recall": 1.0, "fpr": fpr, "n_positive": len(examples),
               "n_keep": len(self.keep_prompts)}
        return Concept(name, fit.features, fit.weights, threshold, cal,
                       {"method": "linear", "prompts": len(examples), "keep_prompts": len(self.keep_prompts)},
                       edit_features=sorted(fit.positive), weights=fit.weights, bias=fit.bias)

    @staticmethod
    def _tensor(ids):
        import torch

        return torch.tensor(ids, dtype=torch.long)

    # -- generation

    def erase(self, prompt: str, names: Sequence[str] | None = None, new_name: str = "", new_examples: str = "",
              mode: str | None = None, value: float | None = None, seed: int = 0, steps: int | None = None) -> EraseResult:
        """Generate ``prompt`` stock and with ``names`` (and a typed concept) erased, at the same seed."""
        import time

        import numpy as np
        import torch

        from visionsae.concepts import ConceptSet

        prompt = self.check_prompt(prompt)
        names = self.check_names(names)
        new_name = (new_name or "").strip()
        examples = [line.strip() for line in (new_examples or "").splitlines() if line.strip()]
        if examples and not new_name:
            raise AppError("Name the new concept (the examples are there, its name is missing).")
        if new_name and not examples:
            raise AppError(f"Give a few example prompts of {new_name!r}, one a line, so its features can be selected.")
        if new_name in self.concepts.concepts:
            raise AppError(f"{new_name!r} is already in the concept set; tick it instead, or give the new concept "
                           "another name.")
        if not names and not new_name:
            raise AppError("Pick at least one concept to erase, or type a new one with a few example prompts.")
        mode, value, seed, settings = self._request_settings(mode, value, seed, steps)
        with self._lock:
            start = time.perf_counter()
            cs = self.concepts
            new_concept = None
            if new_name:
                for i, example in enumerate(examples):
                    self.check_prompt(example, f"example prompt {i + 1} of {new_name!r}")
                concept = self.typed_concept(new_name, examples)
                cs = ConceptSet(cs.hook, cs.sae_fingerprint, cs.n_latents, {**cs.concepts, new_name: concept}, cs.score,
                                cs.skip_first)
                names = names + [new_name]
                new_concept = {"name": new_name, "features": list(concept.features), "examples": len(examples),
                               "threshold": concept.threshold, "fpr_generic": concept.calibration["fpr"],
                               "generic_prompts": len(self.keep_prompts)}
            key = (tuple(names), mode, value, new_name, tuple(examples))
            if key != self._eraser_key:  # the eraser is kept while requests erase the same concepts alike
                self._eraser_key = None
                self.pipe.set_eraser(self.sae, cs, names, mode=mode, value=value)
                self._eraser_key = key
            gen = lambda: torch.Generator(self.device).manual_seed(seed)  # noqa: E731
            self.pipe.itd_enabled = False  # the stock image from the same pipeline object
            try:
                stock = self.pipe(prompt, generator=gen(), output_type="np", **settings).images[0]
            finally:
                self.pipe.itd_enabled = True
            out = self.pipe(prompt, generator=gen(), output_type="np", **settings)
            features = self.fired_features(prompt, cs, names)
            seconds = time.perf_counter() - start
        erased = out.images[0]
        for name, image in (("stock", stock), ("erased", erased)):
            if not np.isfinite(image).all():
                raise AppError(f"The {name} image came out as NaN"
                               + (f": scaling the features by {value:g} drove the text embedding out of range; use a "
                                  "smaller strength." if name == "erased" else "; try other settings."))
        return EraseResult(prompt=prompt, stock=stock, erased=erased, decisions=out.concept_decisions[0],
                           identical=bool(np.array_equal(stock, erased)), features=features, new_concept=new_concept,
                           mode=mode, value=value, seconds=seconds, seed=seed, steps=settings["num_inference_steps"])

    def _request_settings(self, mode, value, seed, steps) -> tuple[str, float, int, dict]:
        """(mode, value, seed, sampling settings) of a request, each checked; the defaults where not given."""
        mode = mode or self.mode
        if mode not in ("zero", "scale"):
            raise AppError(f"Unknown edit mode {mode!r}; expected 'zero' or 'scale'.")
        try:
            value = self.value if value is None else float(value)
        except (TypeError, ValueError):
            raise AppError(f"The strength must be a number, got {value!r}.") from None
        if mode == "scale" and not (math.isfinite(value) and value < 0):
            raise AppError(f"The strength of 'scale' must be a finite negative factor (it pushes the features the "
                           f"other way), got {value:g}.")
        if mode == "zero":
            value = 0.0
        seed = _whole_number(seed, "The seed")
        if not 0 <= seed < 2**64:
            raise AppError(f"The seed must be between 0 and 2**64 - 1, got {seed}.")
        settings = dict(self.settings)
        if steps is not None:
            steps = _whole_number(steps, "Steps")
            if not 1 <= steps <= 200:
                raise AppError(f"Steps must be between 1 and 200, got {steps}.")
            settings["num_inference_steps"] = steps
        return mode, value, seed, settings

    # -- features and their labels

    def fired_features(self, prompt: str, cs, names: Sequence[str]) -> list[dict]:
        """The features the edit of the named concepts changes (:attr:`Concept.erased`, which for
        a linear read-out are its positive-weight features, not every feature it reads) that are
        active on ``prompt`` (first token left out, as the classifier does), strongest first:
        feature, concept, activation, peak token, label prompts."""
        import torch

        from visionsae.concepts import prompt_activations

        with torch.no_grad():
            acts = next(prompt_activations(self.source, [prompt]))  # [1, T, d]
            values, indices = self.sae.encode(acts.to(self.device))
        values, indices = values[0, 1:].float().cpu(), indices[0, 1:].cpu()  # [T-1, k]
        ids = self.source.tokenize([prompt])["input_ids"][0].tolist()
        tokens = self.pipe.tokenizer.convert_ids_to_tokens(ids)[1:]
        rows = []
        for name in names:
            for f in cs[name].erased:
                per_token = (values * (indices == f)).abs().sum(-1)  # [T-1]
                if per_token.numel() == 0 or float(per_token.max()) <= 0:
                    continue
                t = int(per_token.argmax())
                rows.append({"feature": int(f), "concept": name, "activation": float(per_token[t]),
                             "token": tokens[t] if t < len(tokens) else "<pad>"})
        rows.sort(key=lambda r: -r["activation"])
        labels = self.feature_labels([r["feature"] for r in rows])
        for r in rows:
            r["top_prompts"] = labels[r["feature"]]
        return rows

    def feature_labels(self, features: Sequence[int]) -> dict[int, list[str]]:
        """Each feature's top-activating prompts among :attr:`label_prompts` (computed once, on first use)."""
        import torch

        from visionsae.concepts import prompt_activations, prompt_maxes

        if self._labels is None:
            n = self.sae.n_latents
            top_v = torch.zeros(0, n)
            top_i = torch.zeros(0, n, dtype=torch.long)
            batch = 64 if n <= 65536 else 8  # [batch, n_latents] per step, whatever the SAE's width
            seen = 0
            with torch.no_grad():
                for acts in prompt_activations(self.source, self.label_prompts, batch):
                    maxes = prompt_maxes(self.sae.encode(acts.to(self.device)), n).cpu()  # [B, n]
                    ids = torch.arange(seen, seen + len(maxes)).unsqueeze(1).expand(-1, n)
                    seen += len(maxes)
                    v, i = torch.cat([top_v, maxes]), torch.cat([top_i, ids])
                    order = v.topk(min(LABEL_PROMPTS, len(v)), dim=0)
                    top_v, top_i = order.values, i.gather(0, order.indices)
            self._labels = (top_v, top_i)
        top_v, top_i = self._labels
        return {f: [self.label_prompts[int(top_i[j, f])] for j in range(len(top_v)) if float(top_v[j, f]) > 0]
                for f in features}


def _whole_number(value: Any, what: str) -> int:
    """``value`` as an int (a float such as 3.0 from a slider too), or an AppError naming ``what``."""
    try:
        number = float(value) if not isinstance(value, int) else value
        if isinstance(value, bool) or not float(number).is_integer():
            raise ValueError
        return int(number)
    except (TypeError, ValueError, OverflowError):
        raise AppError(f"{what} must be a whole number, got {value!r}.") from None


def _imagenet_prompts(n: int) -> list[str]:
    from visionsae.sources.corpus import sample_prompts

    return [p.text for p in sample_prompts(n, seed=0)]


# --------------------------------------------------------------------------- formatting


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ").replace("*", "\\*").replace("_", "\\_")


def format_verdict(r: EraseResult) -> str:
    """The classifier's verdict per concept, as Markdown."""
    flagged = [n for n, d in r.decisions.items() if d["flagged"]]
    how = "zeroed" if r.mode == "zero" else f"scaled by {r.value:g}"
    if flagged:
        head = (f"**Erased: {', '.join(flagged)}.** The classifier found {'it' if len(flagged) == 1 else 'them'} in "
                f"the prompt, so {'its' if len(flagged) == 1 else 'their'} SAE features were {how} before the UNet "
                f"saw the prompt; the erased image {'is nonetheless identical to' if r.identical else 'differs from'} "
                "the stock one.")
    else:
        head = ("**Nothing erased.** No chosen concept was found in the prompt, so it reached the UNet untouched: "
                f"the erased image {'is the stock image, bit for bit' if r.identical else 'differs from the stock one'}.")
    lines = [head, "", "| concept | verdict | score | threshold |", "| --- | --- | --- | --- |"]
    for name, d in r.decisions.items():
        verdict = "flagged, erased" if d["flagged"] else "not flagged"
        sign = ">=" if d["flagged"] else "<"
        lines.append(f"| {_md(name)} | {verdict} | {d['score']:.3f} | {sign} {d['threshold']:.3f} |")
    if r.new_concept:
        c = r.new_concept
        lines += ["", f"New concept {_md(repr(c['name']))}: {len(c['features'])} SAE features selected from "
                      f"{c['examples']} examples against {c['generic_prompts']} generic prompts; threshold "
                      f"{c['threshold']:.3f} (the lowest example score), which flags {c['fpr_generic']:.1%} of the "
                      "generic prompts."]
    lines += ["", f"Stock and erased generation took {r.seconds:.2f} s."]
    return "\n".join(lines)


def format_features(r: EraseResult) -> str:
    if not r.features:
        return "No feature the erasure changes fired on this prompt."
    lines = ["**SAE features that fired** (the features the erasure of the chosen concepts changes; label: the "
             "prompts that activate each most)", "", "| feature | concept | activation | strongest on token | top-activating prompts |",
             "| --- | --- | --- | --- | --- |"]
    for f in r.features:
        label = "; ".join(_md(p) for p in f["top_prompts"]) or "-"
        lines.append(f"| {f['feature']} | {_md(f['concept'])} | {f['activation']:.2f} | {_md(f['token'])} | {label} |")
    return "\n".join(lines)


def display_image(image) -> Any:
    """uint8 [H, W, 3] of a float image in [0, 1] or a PIL image; images under 256 px are
    enlarged (nearest neighbour) to be seen."""
    import numpy as np

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (arr * 255).round().clip(0, 255).astype(np.uint8)
    scale = max(1, 256 // max(arr.shape[:2]))
    return arr.repeat(scale, 0).repeat(scale, 1) if scale > 1 else arr


def error_text(exc: BaseException) -> str:
    """What the page shows for an exception: the message of bad input, a short note otherwise."""
    if isinstance(exc, (AppError, FileNotFoundError)):
        return f"**Error:** {exc}"
    if isinstance(exc, (ValueError, KeyError)):
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        return f"**Error:** {msg}"
    return (f"**Something went wrong** ({type(exc).__name__}: {str(exc)[:200]}). The server log has the details; "
            "please try again or report it.")
