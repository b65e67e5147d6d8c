"""The web demo's VQA back end (:class:`Asker`): the zoo's fashion LLaVA, stock and with
concepts unlearned (SAUCE)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .app_backend import AppError

log = logging.getLogger("visionsae.app")

@dataclass
class Asker:
    """The VQA back end: the zoo's fashion LLaVA, loaded on the first question, and the same
    model with concepts unlearned (SAUCE, the zoo VQA's layer SAE and class concepts, at the
    setting ``visionsae eval unlearning`` measured)."""

    device: str = "cpu"

    def __post_init__(self) -> None:
        self._vqa = None
        self._sauce = None  # a SAUCELlavaForConditionalGeneration sharing the stock model's modules
        self._sae = None
        self._samples: dict[str, Any] | None = None
        self._concepts = None
        self._lock = threading.Lock()

    def concepts(self):
        """The zoo VQA's concept set (one concept per class), or None when it is not installed."""
        if self._concepts is None:
            from visionsae.concepts import ConceptSet
            from visionsae.zoo import zoo_dir
            from visionsae.zoo.settings import VQA_SAE_DIR as SAE_DIR

            path = zoo_dir() / SAE_DIR / "concepts.json"
            self._concepts = ConceptSet.load(path) if path.exists() else False
        return self._concepts or None

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
        from PIL import Image

        from visionsae.sources.image import ImageReadError, load_image

        if path:
            try:
                return load_image(path)  # the package's reader: 16-bit and palette images scaled right
            except ImageReadError as exc:
                reason = str(exc).removeprefix(f"cannot read image {path}: ")
                raise AppError(f"Could not read {Path(path).name!r} as an image ({reason[:120]}); upload a "
                               "PNG, JPEG or WebP picture.") from None
        if sample:
            if sample not in self.samples():
                raise AppError(f"Unknown sample image {sample!r}.")
            return Image.fromarray(self.samples()[sample]).convert("RGB")
        raise AppError("Upload an image or pick a sample image first.")

    def ask(self, image, question: str, unlearn: Sequence[str] | None = None) -> tuple[str, str | None]:
        """(the stock model's answer, the answer with ``unlearn`` unlearned, or None without any)."""
        if not isinstance(question, str) or not question.strip():
            raise AppError("The question is empty: ask e.g. 'What is in this image?'.")
        if len(question) > 200:
            raise AppError(f"The question is {len(question)} characters long; keep it under 200.")
        unlearn = [n for n in (unlearn or []) if n]
        if unlearn:
            cs = self.concepts()
            if cs is None:
                raise AppError("This installation has no concept set for the VQA model (assets/zoo/fashion-vqa-sae), "
                               "so nothing can be unlearned.")
            unknown = [n for n in unlearn if n not in cs.concepts]
            if unknown:
                raise AppError(f"Unknown concept {unknown[0]!r} to unlearn; the VQA model's concept set has "
                               f"{', '.join(cs.names())}.")
        question = question.strip()
        with self._lock:
            if self._vqa is None:
                from visionsae.zoo import load_fashion_vqa

                self._vqa = load_fashion_vqa(device=self.device)
            stock = self._vqa.ask([image], question)[0]
            if not unlearn:
                return stock, None
            return stock, self._unlearned_vqa(unlearn).ask([image], question)[0]

    def _unlearned_vqa(self, unlearn: Sequence[str]):
        from visionsae.pipelines.sauce import SAUCELlavaForConditionalGeneration
        from visionsae.sae import SparseAutoencoder
        from visionsae.zoo import zoo_dir
        from visionsae.zoo.vqa import FashionVQA
        from visionsae.zoo.settings import UNLEARN_MODE, UNLEARN_TOKENS, UNLEARN_VALUE, VQA_SAE_DIR as SAE_DIR

        setting = dict(tokens=UNLEARN_TOKENS, mode=UNLEARN_MODE, value=UNLEARN_VALUE)
        if self._sauce is None:
            self._sae = SparseAutoencoder.from_pretrained(zoo_dir() / SAE_DIR).to(self.device).eval()
            self._sauce = SAUCELlavaForConditionalGeneration.wrap(self._vqa.model, self._sae, self.concepts(),
                                                                  list(unlearn), **setting)
        elif self._sauce.unlearned != list(unlearn):
            self._sauce.set_unlearning(self._sae, self.concepts(), list(unlearn), **setting)
        return FashionVQA(self._sauce, self._vqa.processor)


