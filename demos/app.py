"""``visionsae app`` / ``make app``: the web demo (Gradio), offline.

    visionsae app                      # the embedded zoo model, on http://127.0.0.1:7860
    visionsae app --model runwayml/stable-diffusion-v1-5 --sae SAE_DIR --concepts concepts.json

**Erase** (ItD): type a prompt, pick concepts to erase from the concept set (or type a new
concept and a few example prompts: its SAE features are selected on the spot, and its
threshold set so that every example is flagged), choose how to deactivate them and see the
stock and the erased image side by side (same seed), the classifier's verdict per concept
(score against threshold) and the SAE features that fired, each labelled by the prompts
that activate it most. A prompt the classifier does not flag gives the stock image, bit for bit.

**Ask** (VQA, zoo only): ask the zoo's LLaVA about an uploaded image or a Fashion-MNIST
test image.

Users are queued (one generation at a time); the server binds to 127.0.0.1 unless --host
says otherwise. Bad input (an empty or overlong prompt, an unknown concept, a file that is
not an image) becomes a message in the page, never a stack trace.
"""

from __future__ import annotations

import argparse
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger("visionsae.app")

MAX_PROMPT_CHARS = 1000
LABEL_PROMPTS = 3  # top-activating prompts shown per feature
ELEM = {  # element ids the browser tests (and anyone scripting the page) rely on
    "prompt": "prompt", "concepts": "concepts", "new_name": "new-concept-name", "new_examples": "new-concept-examples",
    "mode": "edit-mode", "strength": "strength", "seed": "seed", "steps": "steps", "erase": "erase-button", "status": "erase-status", "stock": "stock-image", "erased": "erased-image",
    "verdict": "verdict", "features": "features", "vqa_file": "vqa-file", "vqa_sample": "vqa-sample",
    "vqa_question": "vqa-question", "vqa_ask": "vqa-ask", "vqa_preview": "vqa-preview", "vqa_answer": "vqa-answer",
}


class AppError(ValueError):
    """Bad input, explained to the user in the page."""


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


# --------------------------------------------------------------------------- erasure


@dataclass
class EraseResult:
    """What one erase request produced."""

    prompt: str
    stock: Any  # [H, W, 3] float32 in [0, 1]
    erased: Any  # [H, W, 3] float32 in [0, 1]
    decisions: dict[str, dict]  # concept -> {score, threshold, flagged}
    identical: bool  # the erased image is the stock image, bit for bit
    features: list[dict]  # the concepts' features that fired on the prompt (see Eraser.fired_features)
    new_concept: dict | None = None  # selection / calibration of a concept typed in the request
    mode: str = "zero"
    value: float = 0.0
    seconds: float = 0.0


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
        self._typed: dict[tuple, Any] = {}  # (name, examples) -> Concept

    # -- construction

    @classmethod
    def zoo(cls, device: str = "cpu", label_prompts: Sequence[str] | None = None) -> "Eraser":
        """The embedded zoo model with its text SAE and class concepts, with ``visionsae demo``'s defaults."""
        from pipelines.itd import ItDStableDiffusionPipeline
        from visionsae.concepts import ConceptSet
        from visionsae.demo_main import PROMPTS
        from visionsae.sae import SparseAutoencoder
        from visionsae.zoo import NUM_CLASSES, load_fashion_pipeline, zoo_dir
        from visionsae.zoo.captions import sample_prompts
        from visionsae.zoo.text_sae import SAE_DIR

        stock = load_fashion_pipeline(device=device)
        pipe = ItDStableDiffusionPipeline.from_pipe(stock)
        pipe.set_progress_bar_config(disable=True)
        sae = SparseAutoencoder.from_pretrained(zoo_dir() / SAE_DIR).to(device).eval()
        concepts = ConceptSet.load(zoo_dir() / SAE_DIR / "concepts.json")
        demo = _demo_defaults()  # `visionsae demo`'s concept and edit, measured on the zoo
        erase = [n.strip() for n in demo.erase.split(",") if n.strip()]
        generic = _imagenet_prompts(200)
        if label_prompts is None:
            label_prompts = [p for c in range(NUM_CLASSES) for p in sample_prompts(c, 30, "train", seed=0)] + generic
        return cls(pipe, sae, concepts, dict(stock.zoo_settings), demo.mode, demo.value, erase, PROMPTS[0],
                   list(label_prompts), generic, device)

    @classmethod
    def from_paths(cls, model: str, sae: str, concepts: str, device: str = "cpu",
                   label_prompts: Sequence[str] | None = None) -> "Eraser":
        """A Stable Diffusion 1.x / 2.x pipeline (folder or Hugging Face id) with an SAE and concept set."""
        import torch

        from pipelines.itd import ItDStableDiffusionPipeline
        from visionsae.concepts import ConceptSet
        from visionsae.sae import SparseAutoencoder

        pipe = ItDStableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32).to(device)
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
        if not isinstance(prompt, str) or not prompt.strip():
            raise AppError(f"The {what} is empty: type what the image should show, e.g. {self.default_prompt!r}.")
        prompt = prompt.strip()
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
        if self._keep_stats is None:
            self._keep_stats = prompt_stats(self.sae, self.source, self.keep_prompts, top_n=8)
        stats = prompt_stats(self.sae, self.source, examples, top_n=8)
        ids, scores = select_features(stats, self._keep_stats, "itd", min_frequency=0.5, keep_tolerance=0.05,
                                      max_features=32)
        if not ids:
            raise AppError(f"No SAE feature is specific to {name!r} in these {len(examples)} examples (a feature must "
                           "be among the strongest in at least half of them and rare in generic prompts); give more "
                           "or clearer examples.")
        group = [self._tensor(ids)]
        pos = score_prompts(self.sae, self.source, examples, group, self.concepts.score)[:, 0]
        neg = score_prompts(self.sae, self.source, self.keep_prompts, group, self.concepts.score)[:, 0]
        cal = calibrate(pos, neg, target_recall=1.0)
        concept = Concept(name, ids, scores, cal["threshold"], cal,
                          {"method": "itd", "top_n": 8, "min_frequency": 0.5, "keep_tolerance": 0.05,
                           "max_features": 32, "prompts": len(examples), "keep_prompts": len(self.keep_prompts)})
        self._typed[key] = concept
        return concept

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
        mode = mode or self.mode
        if mode not in ("zero", "scale"):
            raise AppError(f"Unknown edit mode {mode!r}; expected 'zero' or 'scale'.")
        value = self.value if value is None else float(value)
        if mode == "scale" and not value < 0:
            raise AppError(f"The strength of 'scale' must be a negative factor (it pushes the features the other "
                           f"way), got {value:g}.")
        if mode == "zero":
            value = 0.0
        try:
            seed = int(seed)
        except (TypeError, ValueError):
            raise AppError(f"The seed must be a whole number, got {seed!r}.") from None
        if seed < 0:
            raise AppError(f"The seed must be 0 or more, got {seed}.")
        settings = dict(self.settings)
        if steps is not None:
            steps = int(steps)
            if not 1 <= steps <= 200:
                raise AppError(f"Steps must be between 1 and 200, got {steps}.")
            settings["num_inference_steps"] = steps
        with self._lock:
            start = time.perf_counter()
            cs = self.concepts
            new_concept = None
            if new_name:
                for i, example in enumerate(examples):
                    self.check_prompt(example, f"example prompt {i + 1} of {new_name!r}")
                concept = self.typed_concept(new_name, examples)
                cs = ConceptSet(cs.hook, cs.sae_fingerprint, cs.n_latents, {**cs.concepts, new_name: concept}, cs.score)
                names = names + [new_name]
                new_concept = {"name": new_name, "features": list(concept.features), "examples": len(examples),
                               "threshold": concept.threshold, "fpr_generic": concept.calibration["fpr"],
                               "generic_prompts": len(self.keep_prompts)}
            self.pipe.set_eraser(self.sae, cs, names, mode=mode, value=value)
            try:
                gen = lambda: torch.Generator(self.device).manual_seed(seed)  # noqa: E731
                self.pipe.itd_enabled = False
                stock = self.pipe(prompt, generator=gen(), output_type="np", **settings).images[0]
                self.pipe.itd_enabled = True
                out = self.pipe(prompt, generator=gen(), output_type="np", **settings)
            finally:
                self.pipe.itd_enabled = True
                self.pipe.remove_erasers()
            features = self.fired_features(prompt, cs, names)
            seconds = time.perf_counter() - start
        erased = out.images[0]
        return EraseResult(prompt, stock, erased, out.concept_decisions[0], bool(np.array_equal(stock, erased)),
                           features, new_concept, mode, value, seconds)

    # -- features and their labels

    def fired_features(self, prompt: str, cs, names: Sequence[str]) -> list[dict]:
        """The named concepts' features active on ``prompt`` (first token left out, as the
        classifier does), strongest first: feature, concept, activation, peak token, label prompts."""
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
            for f in cs[name].features:
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


def _demo_defaults() -> argparse.Namespace:
    """The defaults of ``visionsae demo`` (erase, mode, value ...), so the two demos agree."""
    from visionsae.demo_main import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args([])


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
        return "No feature of the chosen concepts fired on this prompt."
    lines = ["**SAE features that fired** (features of the chosen concepts; label: the prompts that activate each "
             "most)", "", "| feature | concept | activation | strongest on token | top-activating prompts |",
             "| --- | --- | --- | --- | --- |"]
    for f in r.features:
        label = "; ".join(_md(p) for p in f["top_prompts"]) or "-"
        lines.append(f"| {f['feature']} | {_md(f['concept'])} | {f['activation']:.2f} | {_md(f['token'])} | {label} |")
    return "\n".join(lines)


def display_image(image) -> Any:
    """uint8 [H, W, 3]; images under 256 px are enlarged (nearest neighbour) to be seen."""
    import numpy as np

    arr = (np.asarray(image) * 255).round().clip(0, 255).astype(np.uint8)
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


# --------------------------------------------------------------------------- VQA


@dataclass
class Asker:
    """The VQA back end: the zoo's fashion LLaVA, loaded on the first question."""

    device: str = "cpu"

    def __post_init__(self) -> None:
        self._vqa = None
        self._samples: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def samples(self) -> dict[str, Any]:
        """The first Fashion-MNIST test image of each class (empty when the dataset is not installed)."""
        if self._samples is None:
            from visionsae.zoo import CLASS_NAMES
            from visionsae.zoo.data import load_fashion_mnist

            try:
                images, labels = load_fashion_mnist("test")
            except FileNotFoundError as exc:
                log.warning("no sample images: %s", exc)
                self._samples = {}
            else:
                self._samples = {}
                for c, name in enumerate(CLASS_NAMES):
                    i = int((labels == c).nonzero()[0, 0])
                    self._samples[f"{name} (test image {i})"] = images[i].numpy()
        return self._samples

    def read_image(self, path: str | None, sample: str | None):
        """A PIL image from an uploaded file (preferred) or a sample's name."""
        from PIL import Image, UnidentifiedImageError

        if path:
            try:
                with Image.open(path) as im:
                    im.load()
                    return im.convert("RGB")
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise AppError(f"Could not read {Path(path).name!r} as an image ({type(exc).__name__}); upload a "
                               "PNG, JPEG or WebP picture.") from None
        if sample:
            if sample not in self.samples():
                raise AppError(f"Unknown sample image {sample!r}.")
            return Image.fromarray(self.samples()[sample]).convert("RGB")
        raise AppError("Upload an image or pick a sample image first.")

    def ask(self, image, question: str) -> str:
        if not isinstance(question, str) or not question.strip():
            raise AppError("The question is empty: ask e.g. 'What is in this image?'.")
        if len(question) > 200:
            raise AppError(f"The question is {len(question)} characters long; keep it under 200.")
        with self._lock:
            if self._vqa is None:
                from visionsae.zoo import load_fashion_vqa

                self._vqa = load_fashion_vqa(device=self.device)
            return self._vqa.ask([image], question.strip())[0]


# --------------------------------------------------------------------------- the page


def build_ui(eraser: Eraser, asker: Asker | None = None):
    """The Gradio Blocks of the app (not launched)."""
    import gradio as gr

    def run_erase(prompt, names, new_name, new_examples, mode, strength, seed, steps):
        try:
            r = eraser.erase(prompt, names, new_name, new_examples, mode, strength, seed, steps)
        except Exception as exc:  # shown in the page; the traceback goes to the server log only
            if not isinstance(exc, (AppError, ValueError, KeyError, FileNotFoundError)):
                log.exception("erase failed")
            return error_text(exc), None, None, "", ""
        log.info("erase %r %s: %.2f s", r.prompt, r.decisions, r.seconds)
        status = f"Prompt {r.prompt!r}, seed {int(seed)}, {eraser_steps(steps)} steps."
        return status, display_image(r.stock), display_image(r.erased), format_verdict(r), format_features(r)

    def eraser_steps(steps):
        return int(steps) if steps is not None else eraser.settings.get("num_inference_steps")

    default_erase = [n for n in eraser.default_erase if n in eraser.concepts.concepts]
    with gr.Blocks(title="visionsae: see and erase concepts") as ui:
        gr.Markdown("# visionsae\nSparse-autoencoder features of the text encoder: find a concept in a prompt and "
                    "erase it (ItD, *Interpret then Deactivate*). Prompts without the concept pass through untouched.")
        with gr.Tab("Erase a concept"):
            with gr.Row():
                with gr.Column(scale=1):
                    prompt = gr.Textbox(label="Prompt", value=eraser.default_prompt, elem_id=ELEM["prompt"],
                                        max_lines=2)
                    names = gr.CheckboxGroup(eraser.concepts.names(), value=default_erase, label="Concepts to erase",
                                             elem_id=ELEM["concepts"])
                    with gr.Accordion("Or a new concept, from a few example prompts", open=False):
                        new_name = gr.Textbox(label="New concept name", elem_id=ELEM["new_name"])
                        new_examples = gr.Textbox(label="Example prompts (one a line)", lines=4,
                                                  elem_id=ELEM["new_examples"])
                    with gr.Row():
                        mode = gr.Radio(["scale", "zero"], value=eraser.mode, label="Edit mode", elem_id=ELEM["mode"],
                                        info="scale: multiply the features by the strength; zero: switch them off")
                        strength = gr.Slider(-10, -0.5, value=eraser.value if eraser.value < 0 else -3, step=0.5,
                                             label="Strength (scale factor)", elem_id=ELEM["strength"])
                    with gr.Row():
                        seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id=ELEM["seed"])
                        steps = gr.Slider(1, 50, value=eraser.settings.get("num_inference_steps", 20), step=1,
                                          label="Steps", elem_id=ELEM["steps"])
                    button = gr.Button("Erase", variant="primary", elem_id=ELEM["erase"])
                with gr.Column(scale=2):
                    status = gr.Markdown(elem_id=ELEM["status"])
                    with gr.Row():
                        stock = gr.Image(label="Stock", format="png", interactive=False, elem_id=ELEM["stock"])
                        erased = gr.Image(label="Erased", format="png", interactive=False, elem_id=ELEM["erased"])
                    verdict = gr.Markdown(elem_id=ELEM["verdict"])
                    features = gr.Markdown(elem_id=ELEM["features"])
            inputs = [prompt, names, new_name, new_examples, mode, strength, seed, steps]
            outputs = [status, stock, erased, verdict, features]
            button.click(run_erase, inputs, outputs, api_name="erase")
            prompt.submit(run_erase, inputs, outputs, api_name=False)
        if asker is not None:
            _vqa_tab(gr, asker)
    return ui


def _vqa_tab(gr, asker: Asker) -> None:
    def run_ask(path, sample, question):
        try:
            image = asker.read_image(path, sample)
            answer = asker.ask(image, question)
        except Exception as exc:
            if not isinstance(exc, (AppError, ValueError)):
                log.exception("VQA failed")
            return None, error_text(exc)
        return display_image_pil(image), f"**Answer:** {answer}"

    with gr.Tab("Ask about an image (VQA)"):
        gr.Markdown("The zoo's vision-language model (a tiny LLaVA trained on Fashion-MNIST) answers short questions "
                    "about an image. Unlearning a concept in it (SAUCE) is not wired into this tab yet.")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Upload an image", elem_id=ELEM["vqa_file"], type="filepath")
                sample = gr.Dropdown(list(asker.samples()), value=None, label="Or a Fashion-MNIST test image",
                                     elem_id=ELEM["vqa_sample"])
                question = gr.Textbox(label="Question", value="What is in this image?", elem_id=ELEM["vqa_question"])
                ask = gr.Button("Ask", variant="primary", elem_id=ELEM["vqa_ask"])
            with gr.Column():
                preview = gr.Image(label="What the model was shown", format="png", interactive=False,
                                   elem_id=ELEM["vqa_preview"])
                answer = gr.Markdown(elem_id=ELEM["vqa_answer"])
        ask.click(run_ask, [upload, sample, question], [preview, answer], api_name="ask")


def display_image_pil(image) -> Any:
    import numpy as np

    return display_image(np.asarray(image, dtype=np.float32) / 255.0)


def launch(ui, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Queue the page's users (one generation at a time) and serve it on ``host:port``."""
    import gradio as gr

    ui.queue(default_concurrency_limit=1, max_size=32)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])  # no web fonts
    return ui.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=not block,
                     show_error=False, ssr_mode=False, footer_links=[], theme=theme)


def run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from visionsae.concepts.command import read_prompts

    labels = read_prompts(args.label_prompts) if args.label_prompts else None
    if args.model == "zoo":
        eraser = Eraser.zoo(args.device, labels)
    else:
        if not args.sae or not args.concepts:
            raise ValueError("--sae and --concepts are needed for a model other than the zoo")
        eraser = Eraser.from_paths(args.model, args.sae, args.concepts, args.device, labels)
    asker = Asker(args.device) if args.vqa and args.model == "zoo" else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(f"visionsae app on http://{args.host}:{args.port} (Ctrl+C to stop)", flush=True)
    launch(build_ui(eraser, asker), args.host, args.port)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="visionsae app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    import sys

    sys.exit(main())
