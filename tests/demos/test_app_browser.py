"""The web demo (demos/app.py) driven in a real headless Chromium with Playwright.

The app runs on the zoo model on a free local port (a server thread of this process), and
every test works the page as a user would: type, tick, click, read. What the page shows is
checked against the real components: the images against the zoo pipeline's own output at the
same seed, the verdict against the concept set's threshold and the SAE classifier's score.
Screenshots go to test-artifacts/app/ (gitignored; VISIONSAE_TEST_ARTIFACTS moves it).

Chromium comes from Debian (`apt-get install -y chromium`, which `make test` does); without it
these tests skip and say so.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from playwright.sync_api import Page, expect, sync_playwright

CHROMIUM = os.environ.get("VISIONSAE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason=f"no chromium at {CHROMIUM}: install it with `apt-get install -y chromium` (`make test` does as root)",
)
ARTIFACTS = Path(os.environ.get("VISIONSAE_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts")) / "app"
STEPS = 4  # sampling steps of every generation here (the zoo draws in ~10 ms a step at 32x32)
TIMEOUT_MS = 60_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """(Eraser, URL) of the app serving the zoo on 127.0.0.1."""
    torch.set_num_threads(1)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from visionsae.demos.app import build_ui, launch
    from visionsae.demos.app_audit import Auditor
    from visionsae.demos.app_backend import Eraser
    from visionsae.demos.app_vqa import Asker

    eraser = Eraser.zoo()
    ui = build_ui(eraser, Asker(), Auditor(tmp_path_factory.mktemp("app-audits")))
    port = _free_port()
    launch(ui, "127.0.0.1", port, block=False)
    yield eraser, f"http://127.0.0.1:{port}/"
    ui.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(app, browser, request):
    _, url = app
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(url, wait_until="networkidle")
    yield pg
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    pg.close()


def _erase(pg: Page, prompt: str, concepts: list[str], seed: int = 0) -> None:
    """Fill the erase form (only ``concepts`` ticked), click Erase and wait for the answer."""
    pg.locator("#prompt textarea").fill(prompt)
    for box in pg.locator("#concepts input[type=checkbox]").all():
        name = box.locator("xpath=..").inner_text().strip()
        box.set_checked(name in concepts)
    pg.locator("#seed input").fill(str(seed))
    pg.locator("#steps input[type=number]").fill(str(STEPS))
    pg.locator("#steps input[type=number]").press("Enter")
    expect(pg.locator("#steps input[type=range]")).to_have_value(str(STEPS))  # the slider took it
    before = pg.locator("#erase-status [data-testid=markdown]").inner_text().strip()
    pg.locator("#erase-button").click()
    _wait_answer(pg, "#erase-status", before)


def _wait_answer(pg: Page, elem: str, before: str) -> None:
    """Wait until the Markdown ``elem`` is done (no progress shown) and says something other
    than ``before`` (the caller makes consecutive answers differ)."""
    pg.wait_for_function(
        """([sel, old]) => {
            const e = document.querySelector(sel);
            if (!e || e.querySelector('[data-testid=status-tracker]:not(.hide)') || e.querySelector('.pending')) return false;
            const text = e.querySelector('[data-testid=markdown]').innerText.trim();
            return text !== '' && text !== old;
        }""", arg=[elem, before])


def _upload(pg: Page, elem: str, path: Path) -> None:
    """Upload ``path`` through the file component ``elem`` and wait until the server holds it
    (its download link appears; the file name alone also shows while it is still uploading)."""
    pg.locator(f"#{elem} input[type=file]").set_input_files(str(path))
    pg.locator(f'#{elem} a[download="{path.name}"]').wait_for()


def _shown_image(pg: Page, elem: str) -> np.ndarray:
    """The pixels of the image an output component shows, fetched from the app as the browser did."""
    from PIL import Image

    img = pg.locator(f"#{elem} img")
    img.wait_for()
    pg.wait_for_function("e => e.complete && e.naturalWidth > 0", arg=img.element_handle())
    body = pg.request.get(img.get_attribute("src")).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def _verdict_rows(pg: Page) -> dict[str, list[str]]:
    rows = pg.locator("#verdict table tbody tr").all()
    return {r.locator("td").nth(0).inner_text(): [c.inner_text() for c in r.locator("td").all()] for r in rows}


def _direct(eraser, prompt: str, seed: int = 0) -> np.ndarray:
    """The stock zoo pipeline's image of ``prompt`` at ``seed``, as the page displays it."""
    from visionsae.demos.app_backend import display_image

    eraser.pipe.itd_enabled = False
    try:
        out = eraser.pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np",
                          **{**eraser.settings, "num_inference_steps": STEPS})
    finally:
        eraser.pipe.itd_enabled = True
    return display_image(out.images[0])


def _classifier_score(eraser, prompt: str, concept: str) -> tuple[float, bool]:
    """The SAE classifier's score and verdict of ``prompt`` for ``concept``, computed apart from the app."""
    from visionsae.concepts import ConceptClassifier, prompt_activations

    clf = ConceptClassifier(eraser.sae, eraser.concepts, [concept])
    acts = next(prompt_activations(eraser.source, [prompt]))
    scores, flagged = clf.classify(acts)
    return float(scores[0, 0]), bool(flagged[0, 0])


def _first(eraser, prompts: list[str], concept: str, flagged: bool) -> str:
    """The first of ``prompts`` that the SAE classifier flags (or passes) for ``concept``."""
    for p in prompts:
        if _classifier_score(eraser, p, concept)[1] == flagged:
            return p
    raise AssertionError(f"the classifier {'flags' if not flagged else 'passes'} every one of {prompts} for {concept!r}")


def test_erasing_sneaker_shows_stock_and_erased_images_and_the_verdict(app, page):
    eraser, _ = app
    prompt = _first(eraser, ["a photo of a sneaker", "a pair of sneakers", "running shoes on a white background"],
                    "sneaker", flagged=True)
    _erase(page, prompt, ["sneaker"])

    assert page.locator("#erase-status").inner_text().strip() == f"Prompt {prompt!r}, seed 0, {STEPS} steps."
    stock, erased = _shown_image(page, "stock-image"), _shown_image(page, "erased-image")
    # the stock image is the zoo pipeline's own image at that seed, and the erased one differs
    assert np.array_equal(stock, _direct(eraser, prompt))
    assert stock.shape == erased.shape == (256, 256, 3)
    assert np.abs(stock.astype(int) - erased.astype(int)).mean() > 5

    threshold = eraser.concepts["sneaker"].threshold  # the zoo's concepts.json, as the app loaded it
    score, flagged = _classifier_score(eraser, prompt, "sneaker")
    assert flagged
    verdict = page.locator("#verdict").inner_text()
    assert "Erased: sneaker." in verdict and "differs from the stock one" in verdict
    rows = _verdict_rows(page)
    assert list(rows) == ["sneaker"]
    assert rows["sneaker"][1:] == ["flagged, erased", f"{score:.3f}", f">= {threshold:.3f}"]

    # the features that fired are the sneaker concept's, each labelled by the prompts it likes most
    features = page.locator("#features table tbody tr").all()
    assert features
    for row in features:
        cells = [c.inner_text() for c in row.locator("td").all()]
        assert int(cells[0]) in eraser.concepts["sneaker"].features and cells[1] == "sneaker"
        assert cells[4].strip() not in ("", "-")
    assert any("sneaker" in row.locator("td").nth(4).inner_text() for row in features)  # labels say what they are


def test_a_prompt_without_the_concept_gives_the_stock_image_bit_for_bit(app, page):
    eraser, _ = app
    prompt = _first(eraser, ["a dress on a white background", "a photo of a dress", "a snapshot of a pullover"],
                    "sneaker", flagged=False)
    _erase(page, prompt, ["sneaker"], seed=3)
    stock, erased = _shown_image(page, "stock-image"), _shown_image(page, "erased-image")
    assert np.array_equal(stock, _direct(eraser, prompt, seed=3))
    assert np.array_equal(stock, erased)
    score, flagged = _classifier_score(eraser, prompt, "sneaker")
    assert not flagged
    assert "Nothing erased." in page.locator("#verdict").inner_text()
    assert _verdict_rows(page)["sneaker"][1:3] == ["not flagged", f"{score:.3f}"]


def test_empty_and_overlong_prompts_are_explained_not_traced(app, page):
    _erase(page, "", ["sneaker"])
    status = page.locator("#erase-status").inner_text()
    assert status.startswith("Error: The prompt is empty"), status
    assert page.locator("#stock-image img").count() == 0 and page.locator("#erased-image img").count() == 0
    assert page.locator("#verdict").inner_text().strip() == ""

    _erase(page, "a photo of a sneaker " * 6, ["sneaker"])
    status = page.locator("#erase-status").inner_text()
    assert "tokens long but this model's text encoder reads at most 20" in status, status

    _erase(page, "a photo of a sneaker", [])
    assert "Pick at least one concept" in page.locator("#erase-status").inner_text()
    assert "Traceback" not in page.content()


def test_a_new_concept_typed_with_examples_is_selected_and_erased(app, page):
    eraser, _ = app
    examples = ["running shoes", "a pair of sneakers", "a photo of leather boots", "sandals for the beach"]
    page.get_by_text("Or a new concept, from a few example prompts").click()
    page.locator("#new-concept-name textarea").fill("footwear")
    page.locator("#new-concept-examples textarea").fill("\n".join(examples))
    # the threshold of a typed concept is its lowest example score: an example must be flagged
    _erase(page, examples[1], [])
    verdict = page.locator("#verdict").inner_text()
    assert "Erased: footwear." in verdict, verdict
    assert _verdict_rows(page)["footwear"][1] == "flagged, erased"
    assert "New concept 'footwear':" in verdict and "from 4 examples" in verdict
    assert not np.array_equal(_shown_image(page, "stock-image"), _shown_image(page, "erased-image"))
    # and a typed name that is already in the set is refused with a reason
    page.locator("#new-concept-name textarea").fill("sneaker")
    _erase(page, "a photo of a bag", [])
    assert "'sneaker' is already in the concept set" in page.locator("#erase-status").inner_text()


def test_vqa_answers_about_a_sample_image_with_and_without_unlearning_and_refuses_a_non_image(app, page, tmp_path):
    page.get_by_role("tab", name="Ask about an image (VQA)").click()
    page.locator("#vqa-sample input").click()
    page.get_by_role("option", name="sneaker (test image").click()
    page.locator("#vqa-unlearn").get_by_label("sneaker", exact=True).check()
    page.locator("#vqa-ask").click()
    _wait_answer(page, "#vqa-answer", "")
    stock, unlearned = page.locator("#vqa-answer").inner_text().strip().split("\n\n")
    # the stock model recognises the sneaker; with sneaker unlearned (SAUCE) it no longer does
    assert stock == "Stock model: sneaker"
    assert unlearned.startswith("With sneaker unlearned: ")
    answer = unlearned.removeprefix("With sneaker unlearned: ")
    assert answer and "sneaker" not in answer
    assert page.locator("#vqa-preview img").count() == 1

    bad = tmp_path / "photo.png"
    bad.write_text("these bytes are not a picture")
    _upload(page, "vqa-file", bad)
    page.locator("#vqa-ask").click()
    page.locator("#vqa-answer").get_by_text("Could not read").wait_for()
    assert "'photo.png' as an image" in page.locator("#vqa-answer").inner_text()
    assert "Traceback" not in page.content()


def test_unknown_concept_is_refused_by_name(app):
    """The page offers only the set's concepts; a scripted request naming another is refused."""
    from visionsae.demos.app_backend import AppError, error_text
    from visionsae.demos.app_vqa import Asker

    eraser, _ = app
    with pytest.raises(AppError, match="Unknown concept 'cat'; this model's concept set has t-shirt") as info:
        eraser.erase("a photo of a cat", ["cat"])
    assert error_text(info.value).startswith("**Error:** Unknown concept 'cat'")
    with pytest.raises(AppError, match="Unknown concept 'cat' to unlearn; the VQA model's concept set has t-shirt"):
        Asker().ask(None, "What is in this image?", ["cat"])


@pytest.fixture(scope="module")
def audit_report(tmp_path_factory) -> Path:
    """A real report of `visionsae.audit` (12 real against 12 other Fashion-MNIST images, a tiny
    random DINOv2 with registers as the backbone: seconds, not the zoo audit's minute)."""
    from PIL import Image
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from visionsae.audit import AuditConfig, ImageSet, run_audit
    from visionsae.audit.report import write_report
    from visionsae.sources.loading import build_source, load_model
    from visionsae.zoo.data import load_fashion_mnist

    root = tmp_path_factory.mktemp("audit")
    torch.manual_seed(0)
    cfg = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                                    image_size=28, patch_size=7, num_register_tokens=4)
    Dinov2WithRegistersModel(cfg).eval().save_pretrained(root / "dinov2")
    images, _ = load_fashion_mnist("test")
    paths = []
    for i in range(24):
        Image.fromarray(images[i].numpy()).save(root / f"{i}.png")
        paths.append(str(root / f"{i}.png"))
    source = build_source(load_model(str(root / "dinov2")), "image", hook="encoder.layer.1")
    real, generated = ImageSet("real", paths[:12]), ImageSet("generated", paths[12:])
    result = run_audit(source, real, [generated], root / "out",
                       cfg=AuditConfig(sae_latents=32, sae_k=4, sae_samples=20_000, sae_batch=256, bootstrap=50,
                                       progress=False, min_support=2))
    return write_report(result, root / "report.html", real=real, generated=[generated])


def test_audit_tab_opens_a_report_and_refuses_another_page(page, audit_report, tmp_path):
    page.get_by_role("tab", name="Blindspot audit").click()
    other = tmp_path / "notes.html"
    other.write_text("<html><body><h1>My holiday</h1></body></html>")
    _upload(page, "audit-file", other)
    page.locator("#audit-open").click()
    _wait_answer(page, "#audit-status", "")
    assert "'notes.html' is not a blindspot audit report" in page.locator("#audit-status").inner_text()
    assert page.locator("#audit-report iframe").count() == 0

    page.locator("#audit-file button[aria-label*='Clear'], #audit-file button[aria-label*='Remove']").first.click()
    _upload(page, "audit-file", audit_report)
    before = page.locator("#audit-status [data-testid=markdown]").inner_text().strip()
    page.locator("#audit-open").click()
    _wait_answer(page, "#audit-status", before)
    assert page.locator("#audit-status").inner_text().strip() == "Report 'report.html'."
    frame = page.frame_locator("#audit-report iframe")
    assert frame.locator("h1").inner_text() == "Blindspot audit"
    assert frame.locator("h2").first.inner_text() == "generated"
    assert frame.locator("img").count() > 10  # the report's image tiles, shown
    assert "Traceback" not in page.content()
