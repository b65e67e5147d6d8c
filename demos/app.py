"""``visionsae app`` / ``make app``: the web demo (Gradio), offline.

    visionsae app                      # the embedded zoo model, on http://127.0.0.1:7860
    visionsae app --model runwayml/stable-diffusion-v1-5 --sae SAE_DIR --concepts concepts.json

**Erase** (ItD): type a prompt, pick concepts to erase from the concept set (or type a new
concept and a few example prompts: its SAE features are selected on the spot, and its
threshold set so that every example is flagged), choose how to deactivate them and see the
stock and the erased image side by side (same seed), the classifier's verdict per concept
(score against threshold) and the erased SAE features that fired, each labelled by the prompts
that activate it most. A prompt the classifier does not flag gives the stock image, bit for bit.

**Ask** (VQA, zoo only): ask the zoo's LLaVA about an uploaded image or a Fashion-MNIST
test image, and the same model with concepts unlearned (SAUCE), side by side.

**Blindspot audit**: open a report written by ``visionsae audit`` (shown in a sandboxed
frame), or run a small audit of the zoo generator with its planted blindspots
(``visionsae eval audit`` on a few images per class).

The back ends (no UI) are in ``demos/app_backend.py``.

Users are queued (one generation at a time); the server binds to 127.0.0.1 unless --host
says otherwise. Bad input (an empty or overlong prompt, an unknown concept, a file that is
not an image, a file that is not an audit report) becomes a message in the page, never a
stack trace.
"""

from __future__ import annotations

import html
import logging

from .app_audit import Auditor
from .app_backend import AppError, Eraser, display_image, error_text, format_features, format_verdict
from .app_vqa import Asker

log = logging.getLogger("visionsae.app")

ELEM = {  # element ids the browser tests (and anyone scripting the page) rely on
    "prompt": "prompt", "concepts": "concepts", "new_name": "new-concept-name", "new_examples": "new-concept-examples",
    "mode": "edit-mode", "strength": "strength", "seed": "seed", "steps": "steps", "erase": "erase-button",
    "status": "erase-status", "stock": "stock-image", "erased": "erased-image", "verdict": "verdict",
    "features": "features", "vqa_file": "vqa-file", "vqa_sample": "vqa-sample", "vqa_question": "vqa-question", "vqa_unlearn": "vqa-unlearn",
    "vqa_ask": "vqa-ask", "vqa_preview": "vqa-preview", "vqa_answer": "vqa-answer", "audit_file": "audit-file",
    "audit_open": "audit-open", "audit_per_class": "audit-per-class", "audit_run": "audit-run",
    "audit_status": "audit-status", "audit_report": "audit-report",
}
USER_ERRORS = (AppError, ValueError, KeyError, FileNotFoundError)  # shown as their message; anything else is logged


# --------------------------------------------------------------------------- the page


def _shown(exc: BaseException, what: str) -> str:
    """The page's text for a failed request; the traceback of anything but bad input goes to the log."""
    if not isinstance(exc, USER_ERRORS):
        log.exception("%s failed", what)
    return error_text(exc)


def build_ui(eraser: Eraser, asker: Asker | None = None, auditor: Auditor | None = None):
    """The Gradio Blocks of the app (not launched): an erase tab, and VQA / audit tabs when given."""
    import gradio as gr

    with gr.Blocks(title="visionsae: see and erase concepts") as ui:
        gr.Markdown("# visionsae\nSparse-autoencoder features as concepts: erase a concept from a text-to-image "
                    "model (ItD, *Interpret then Deactivate*: prompts without it pass through untouched), unlearn one "
                    "in a vision-language model (SAUCE), find a generator's blindspots.")
        _erase_tab(gr, eraser)
        if asker is not None:
            _vqa_tab(gr, asker)
        if auditor is not None:
            _audit_tab(gr, auditor)
    return ui


def _erase_tab(gr, eraser: Eraser) -> None:
    def run_erase(prompt, names, new_name, new_examples, mode, strength, seed, steps):
        try:
            r = eraser.erase(prompt, names, new_name, new_examples, mode, strength, seed, steps)
        except Exception as exc:  # shown in the page, never as a traceback
            return _shown(exc, "erase"), None, None, "", ""
        log.info("erase %r %s: %.2f s", r.prompt, r.decisions, r.seconds)
        status = f"Prompt {r.prompt!r}, seed {r.seed}, {r.steps} steps."
        return status, display_image(r.stock), display_image(r.erased), format_verdict(r), format_features(r)

    default_erase = [n for n in eraser.default_erase if n in eraser.concepts.concepts]
    with gr.Tab("Erase a concept"):
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", value=eraser.default_prompt, elem_id=ELEM["prompt"], max_lines=2)
                names = gr.CheckboxGroup(eraser.concepts.names(), value=default_erase, label="Concepts to erase",
                                         elem_id=ELEM["concepts"])
                with gr.Accordion("Or a new concept, from a few example prompts", open=False):
                    new_name = gr.Textbox(label="New concept name", elem_id=ELEM["new_name"])
                    new_examples = gr.Textbox(label="Example prompts (one a line)", lines=4, elem_id=ELEM["new_examples"])
                with gr.Row():
                    mode = gr.Radio(["scale", "zero"], value=eraser.mode, label="Edit mode", elem_id=ELEM["mode"],
                                    info="scale: multiply the features by the strength; zero: switch them off")
                    strength = gr.Slider(-10, -0.5, value=eraser.value if eraser.value < 0 else -3, step=0.5,
                                         label="Strength (scale factor)", elem_id=ELEM["strength"])
                with gr.Row():
                    seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id=ELEM["seed"])
                    steps = gr.Slider(1, 50, value=eraser.settings.get("num_inference_steps", 20), step=1, label="Steps",
                                      elem_id=ELEM["steps"])
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


def _vqa_tab(gr, asker: Asker) -> None:
    def run_ask(path, sample, question, unlearn):
        try:
            image = asker.read_image(path, sample)
            stock, unlearned = asker.ask(image, question, unlearn)
        except Exception as exc:
            return None, _shown(exc, "VQA")
        text = f"**Stock model:** {stock}"
        if unlearned is not None:
            text += f"\n\n**With {', '.join(unlearn)} unlearned:** {unlearned}"
        return display_image(image), text

    concepts = asker.concepts()
    with gr.Tab("Ask about an image (VQA)"):
        gr.Markdown("The zoo's vision-language model (a tiny LLaVA trained on Fashion-MNIST) answers short questions "
                    "about an image, as it is and with concepts unlearned (SAUCE: their SAE features in a middle "
                    "language-model layer are suppressed, so it stops recognising them and answers the rest as before).")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Upload an image", elem_id=ELEM["vqa_file"], type="filepath")
                sample = gr.Dropdown(list(asker.samples()), value=None, label="Or a Fashion-MNIST test image",
                                     elem_id=ELEM["vqa_sample"])
                question = gr.Textbox(label="Question", value="What is in this image?", elem_id=ELEM["vqa_question"])
                unlearn = gr.CheckboxGroup(concepts.names() if concepts else [], value=[], label="Concepts to unlearn",
                                           elem_id=ELEM["vqa_unlearn"], visible=concepts is not None)
                ask = gr.Button("Ask", variant="primary", elem_id=ELEM["vqa_ask"])
            with gr.Column():
                preview = gr.Image(label="What the model was shown", format="png", interactive=False,
                                   elem_id=ELEM["vqa_preview"])
                answer = gr.Markdown(elem_id=ELEM["vqa_answer"])
        ask.click(run_ask, [upload, sample, question, unlearn], [preview, answer], api_name="ask")


def _report_frame(page: str) -> str:
    """An audit report (a self-contained HTML page) in a sandboxed frame: no script of it runs."""
    return (f'<iframe title="audit report" sandbox="" srcdoc="{html.escape(page, quote=True)}" '
            'style="width:100%;height:900px;border:1px solid #ddd"></iframe>')


def _audit_tab(gr, auditor: Auditor) -> None:
    def run_open(path):
        try:
            page = auditor.open_report(path)
        except Exception as exc:
            return _shown(exc, "open report"), ""
        return f"Report {auditor.name_of(path)!r}.", _report_frame(page)

    def run_small(per_class):
        try:
            summary, page = auditor.run_small(per_class)
        except Exception as exc:
            return _shown(exc, "audit"), ""
        return summary, _report_frame(page)

    with gr.Tab("Blindspot audit"):
        gr.Markdown("Which concepts does a generator suppress or exaggerate against real images, and does it copy any? "
                    "Open a report written by `visionsae audit` or `demos/blindspot_audit.py`, or run a small audit "
                    "of the zoo generator here (planted: sneakers erased, trousers drawn three times, one real image "
                    "copied; under a minute on one CPU core for 5 images per class).")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="An audit report (report.html)", elem_id=ELEM["audit_file"], type="filepath")
                open_button = gr.Button("Open the report", elem_id=ELEM["audit_open"])
            with gr.Column():
                per_class = gr.Slider(2, 50, value=5, step=1, label="Real images per class",
                                      elem_id=ELEM["audit_per_class"])
                run_button = gr.Button("Run a small audit of the zoo", variant="primary", elem_id=ELEM["audit_run"])
        status = gr.Markdown(elem_id=ELEM["audit_status"])
        report = gr.HTML(elem_id=ELEM["audit_report"])
        open_button.click(run_open, [upload], [status, report], api_name="open_report")
        run_button.click(run_small, [per_class], [status, report], api_name="audit")


def launch(ui, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Queue the page's users (one generation at a time) and serve it on ``host:port``."""
    import gradio as gr

    ui.queue(default_concurrency_limit=1, max_size=32)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])  # no web fonts
    return ui.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=not block,
                     show_error=False, ssr_mode=False, footer_links=[], theme=theme)


if __name__ == "__main__":  # python -m visionsae.demos.app [flags of `visionsae app`]
    import sys

    from visionsae.commands import main

    sys.exit(main(["app", *sys.argv[1:]]))
