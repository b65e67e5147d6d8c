"""SAUCE unlearning on the zoo, measured: ``visionsae eval unlearning`` (JSON).

With the zoo VQA's layer SAE and class concepts (``assets/zoo/fashion-vqa-sae``), unlearn
one class, then three at once, through the drop-in
:class:`pipelines.sauce.SAUCELlavaForConditionalGeneration` (wrapping the zoo model), and
ask every test image a held-out category question and the held-out footwear question:

* accuracy on the unlearned classes' images (bar: <= 10%), and how many of their answers
  still name the class (and how many answers anywhere name an unlearned class);
* accuracy on the other classes' images and its drop (bar: <= 3 points);
* the footwear yes/no question on the other classes: accuracy change and share of answers
  that changed (bar: <= 3 points);
* that switching the unlearning off gives the stock answers again, from the same object.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import torch
from ..sae.io import atomic_write_bytes

DEFAULT_SETS = ("sneaker", "sneaker,bag,trouser")
BARS = {"target_accuracy_max": 0.10, "other_drop_points_max": 3.0, "footwear_change_points_max": 3.0}


def eval_images(per_class: int):
    """The first ``per_class`` Fashion-MNIST test images of each class (PIL) and their labels."""
    from ..zoo import NUM_CLASSES
    from ..zoo.data import load_fashion_mnist
    from ..zoo.vqa import fashion_images_to_pil

    images, labels = load_fashion_mnist("test")
    idx = torch.cat([(labels == c).nonzero().squeeze(-1)[:per_class] for c in range(NUM_CLASSES)])
    return fashion_images_to_pil(images[idx]), labels[idx].tolist()


def category_questions(n: int) -> list[str]:
    """The held-out category phrasings, cycled over ``n`` images."""
    from ..zoo.captions import HELDOUT_CATEGORY_QUESTIONS

    return [HELDOUT_CATEGORY_QUESTIONS[i % len(HELDOUT_CATEGORY_QUESTIONS)] for i in range(n)]


def footwear_question() -> str:
    from ..zoo.captions import YES_NO_ATTRIBUTES

    return YES_NO_ATTRIBUTES["footwear"][2][0]


def _share(flags: Sequence[bool]) -> float:
    return sum(flags) / max(1, len(flags))


def _run_figures(unlearn, unlearner, labels, names, foot_truth, stock_answers, answers) -> dict:
    """One unlearned set's figures: accuracy on its classes and the others, footwear answers."""
    from ..zoo import CLASS_NAMES

    base_cat, base_foot, base_seconds = stock_answers
    cat, foot, seconds = answers
    target = [n in unlearn for n in names]
    other = [not t for t in target]

    def acc(answers, truth, mask):
        return _share([a == t for a, t, m in zip(answers, truth, mask) if m])

    per_class = {}
    for c in sorted(set(labels)):
        mask = [x == c for x in labels]
        per_class[CLASS_NAMES[c]] = {"stock": acc(base_cat, names, mask), "unlearned": acc(cat, names, mask)}
    answered = {}
    for a, t in zip(cat, target):
        if t:
            answered[a] = answered.get(a, 0) + 1
    run = {
        "unlearned": unlearn,
        "features": len(unlearner.features),
        "settings": unlearner.settings,
        "target_accuracy_stock": acc(base_cat, names, target),
        "target_accuracy_unlearned": acc(cat, names, target),
        "target_answers_naming_own_class": _share([n in a for a, n, t in zip(cat, names, target) if t]),
        "answers_naming_an_unlearned_class": _share([any(u in a for u in unlearn) for a in cat]),
        "target_images_answered_as": dict(sorted(answered.items(), key=lambda kv: -kv[1])),
        "other_accuracy_stock": acc(base_cat, names, other),
        "other_accuracy_unlearned": acc(cat, names, other),
        "footwear_other_accuracy_stock": acc(base_foot, foot_truth, other),
        "footwear_other_accuracy_unlearned": acc(foot, foot_truth, other),
        "footwear_other_answers_changed": _share([a != b for a, b, m in zip(foot, base_foot, other) if m]),
        "per_class": per_class,
        "seconds_stock": base_seconds,
        "seconds_unlearned": seconds,
    }
    run["other_accuracy_drop_points"] = 100 * (run["other_accuracy_stock"] - run["other_accuracy_unlearned"])
    run["footwear_other_change_points"] = 100 * abs(run["footwear_other_accuracy_stock"] - run["footwear_other_accuracy_unlearned"])
    return run


def evaluate(unlearn_sets: Sequence[Sequence[str]] = tuple(s.split(",") for s in DEFAULT_SETS), per_class: int = 100,
             out_dir: str | Path = "runs/eval-unlearning", mode: str | None = None, value: float | None = None,
             tokens: str | None = None, batch: int = 64, progress: bool = True) -> dict:
    """Unlearn each set of ``unlearn_sets`` in turn and measure it (see the module docstring).
    ``mode`` None: each class's calibrated setting (the zoo's default); ``tokens`` defaults to
    the zoo's."""
    from tqdm import tqdm

    from visionsae.pipelines.sauce import SAUCELlavaForConditionalGeneration

    from ..concepts import ConceptSet
    from ..sae import SparseAutoencoder
    from ..zoo import CLASS_NAMES, load_fashion_vqa, zoo_dir
    from ..zoo.captions import YES, NO, YES_NO_ATTRIBUTES
    from ..zoo.vqa import FashionVQA
    from ..zoo.settings import UNLEARN_TOKENS, UNLEARN_VALUE, VQA_SAE_DIR as SAE_DIR

    value = UNLEARN_VALUE if value is None else value  # mode None: each class's calibrated setting
    tokens = UNLEARN_TOKENS if tokens is None else tokens
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stock = load_fashion_vqa()
    sae = SparseAutoencoder.from_pretrained(zoo_dir() / SAE_DIR)
    concepts = ConceptSet.load(zoo_dir() / SAE_DIR / "concepts.json")
    images, labels = eval_images(per_class)
    names = [CLASS_NAMES[c] for c in labels]
    cat_q, foot_q = category_questions(len(images)), footwear_question()
    feet = YES_NO_ATTRIBUTES["footwear"][0]
    foot_truth = [YES if c in feet else NO for c in labels]

    def ask_all(vqa: FashionVQA, desc: str) -> tuple[list[str], list[str], float]:
        cat, foot = [], []
        t0 = time.perf_counter()
        for i in tqdm(range(0, len(images), batch), desc=desc, disable=not progress, unit="batch"):
            cat += vqa.ask(images[i : i + batch], cat_q[i : i + batch], batch_size=batch)
            foot += vqa.ask(images[i : i + batch], foot_q, batch_size=batch)
        return cat, foot, time.perf_counter() - t0

    base_cat, base_foot, base_seconds = ask_all(stock, "stock")
    report: dict = {
        "images_per_class": per_class, "category_questions": sorted(set(cat_q)), "footwear_question": foot_q,
        "edit": {"mode": mode or "calibrated", "value": value if mode else None, "tokens": tokens, "layer_hook": concepts.hook},
        "stock_category_accuracy": _share([a == n for a, n in zip(base_cat, names)]),
        "stock_footwear_accuracy": _share([a == t for a, t in zip(base_foot, foot_truth)]),
        "bars": BARS, "runs": [],
    }
    for unlearn in unlearn_sets:
        unlearn = list(unlearn)
        model = SAUCELlavaForConditionalGeneration.wrap(stock.model, sae, concepts, unlearn, tokens=tokens, mode=mode,
                                                        value=value)
        vqa = FashionVQA(model, stock.processor)
        cat, foot, seconds = ask_all(vqa, f"unlearn {'+'.join(unlearn)}")
        run = _run_figures(unlearn, model._unlearner, labels, names, foot_truth, (base_cat, base_foot, base_seconds),
                           (cat, foot, seconds))
        model.unlearning_enabled = False
        n_check = min(batch, len(images))
        run["off_matches_stock"] = vqa.ask(images[:n_check], cat_q[:n_check], batch_size=batch) == base_cat[:n_check]
        run["stock_model_untouched"] = stock.ask(images[:n_check], cat_q[:n_check], batch_size=batch) == base_cat[:n_check]
        run["meets_bars"] = {
            "target_accuracy": run["target_accuracy_unlearned"] <= BARS["target_accuracy_max"],
            "other_drop": run["other_accuracy_drop_points"] <= BARS["other_drop_points_max"],
            "footwear_change": run["footwear_other_change_points"] <= BARS["footwear_change_points_max"]
            and 100 * run["footwear_other_answers_changed"] <= BARS["footwear_change_points_max"],
        }
        model.remove_unlearning()
        report["runs"].append(run)
    atomic_write_bytes(out_dir / "unlearning.json", json.dumps(report, indent=2).encode())
    return report
