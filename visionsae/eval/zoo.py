"""``visionsae eval zoo``: measure the zoo's models on real Fashion-MNIST test images and
held-out prompts / questions, against the quality bars of the model card.

* judge: accuracy on the test images, overall and per class;
* text-to-image: for each class, images generated from held-out captions
  (``captions.class_prompts(label, "heldout")``) are classified by the judge; the share
  judged as the prompted class, per class and averaged; same seed -> same image; images/s;
* VQA: exact-answer accuracy on test images, per question phrasing (held-out phrasings apart),
  for the category question, the footwear question and the other yes/no questions.

Prints and writes (``--out``) one JSON object.
"""

from __future__ import annotations

import time

BARS = {
    "judge_test_accuracy": 0.90,
    "t2i_heldout_agreement_mean": 0.80,
    "t2i_heldout_agreement_min_class": 0.50,
    "t2i_images_per_second": 5.0,
    "vqa_category_accuracy_heldout": 0.85,
    "vqa_footwear_accuracy": 0.90,
}


def evaluate_judge(judge, images, labels) -> dict:
    from visionsae.zoo.captions import CLASS_NAMES

    predicted = judge.predict(images)
    correct = predicted == labels
    return {
        "images": len(labels),
        "test_accuracy": correct.float().mean().item(),
        "per_class": {name: correct[labels == c].float().mean().item() for c, name in enumerate(CLASS_NAMES)},
    }


def generate(pipe, prompts: list[str], seeds: list[int], **kwargs):
    """Images ``(N, 3, H, W)`` in [0, 1]; image i depends only on prompts[i] and seeds[i]."""
    import torch

    generators = [torch.Generator().manual_seed(s) for s in seeds]
    return pipe(prompts, generator=generators, output_type="pt", **kwargs).images


def evaluate_t2i(pipe, judge, per_class_count: int, batch: int, seed: int, guidance_scale=None, steps=None) -> dict:
    import torch
    from tqdm import tqdm

    from visionsae.zoo.captions import CLASS_NAMES, NUM_CLASSES, sample_prompts

    settings = dict(pipe.zoo_settings)
    if guidance_scale is not None:
        settings["guidance_scale"] = guidance_scale
    if steps is not None:
        settings["num_inference_steps"] = steps
    jobs = [(p, label) for label in range(NUM_CLASSES) for p in sample_prompts(label, per_class_count, "heldout", seed)]
    predicted, seconds = [], 0.0
    generate(pipe, [jobs[0][0]], [seed], **settings)  # warm-up, not timed
    for start in tqdm(range(0, len(jobs), batch), desc="t2i", mininterval=10):
        chunk = jobs[start : start + batch]
        t0 = time.perf_counter()
        images = generate(pipe, [p for p, _ in chunk], [seed + start + i for i in range(len(chunk))], **settings)
        seconds += time.perf_counter() - t0
        predicted.append(judge.predict(images))
    predicted = torch.cat(predicted)
    targets = torch.tensor([label for _, label in jobs])
    agree = predicted == targets
    per_class = {name: agree[targets == c].float().mean().item() for c, name in enumerate(CLASS_NAMES)}
    first = generate(pipe, [jobs[0][0]] * 2, [seed, seed + 1], **settings)
    again = generate(pipe, [jobs[0][0]] * 2, [seed, seed + 1], **settings)
    confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    confusion.index_put_((targets, predicted), torch.ones_like(targets), accumulate=True)
    return {
        "prompts": "held-out caption templates and descriptions (captions.class_prompts(label, 'heldout'))",
        "images_per_class": per_class_count,
        "heldout_agreement_mean": sum(per_class.values()) / len(per_class),
        "heldout_agreement_min_class": min(per_class.values()),
        "per_class": per_class,
        "confusion_prompted_vs_judged": confusion.tolist(),
        "same_seed_same_image": bool(torch.equal(again, first)),
        "images_per_second": len(jobs) / seconds,
        "speed_batch": batch,
        **{k: settings[k] for k in ("guidance_scale", "num_inference_steps", "height", "width")},
    }


def evaluate_vqa(vqa, images, labels) -> dict:
    from visionsae.zoo import captions
    from visionsae.zoo.vqa import fashion_images_to_pil

    pil = fashion_images_to_pil(images)
    labels = labels.tolist()
    names = [captions.CLASS_NAMES[i] for i in labels]

    def accuracy(question: str, truth: list[str]) -> float:
        answers = vqa.ask(pil, question)
        return sum(a == t for a, t in zip(answers, truth)) / len(truth)

    report: dict = {"images": len(pil), "category": {}, "yes_no": {}}
    for split, questions in (("heldout", captions.HELDOUT_CATEGORY_QUESTIONS), ("train", captions.TRAIN_CATEGORY_QUESTIONS)):
        report["category"][split] = {q: accuracy(q, names) for q in questions}
    for kind, (yes_classes, train, heldout) in captions.YES_NO_ATTRIBUTES.items():
        truth = [captions.YES if i in yes_classes else captions.NO for i in labels]
        report["yes_no"][kind] = {
            "heldout": {q: accuracy(q, truth) for q in heldout},
            "train": {q: accuracy(q, truth) for q in train},
            "share_yes": truth.count(captions.YES) / len(truth),
        }
    # "is this a <class>?" with a held-out phrasing, asked once about the true class and once
    # about the next class: half the right answers are "yes"
    template = captions.HELDOUT_IS_CLASS_QUESTIONS[0]
    true_q = [template.format(n) for n in names]
    other_q = [template.format(captions.CLASS_NAMES[(i + 1) % captions.NUM_CLASSES]) for i in labels]
    yes = vqa.ask(pil, true_q)
    no = vqa.ask(pil, other_q)
    report["is_class_heldout"] = (yes.count(captions.YES) + no.count(captions.NO)) / (2 * len(pil))

    heldout = report["category"]["heldout"]
    report["category_accuracy_heldout"] = sum(heldout.values()) / len(heldout)
    train = report["category"]["train"]
    report["category_accuracy_train_phrasings"] = sum(train.values()) / len(train)
    feet = report["yes_no"]["footwear"]
    all_feet = list(feet["heldout"].values()) + list(feet["train"].values())
    report["footwear_accuracy"] = sum(all_feet) / len(all_feet)
    report["footwear_accuracy_heldout"] = sum(feet["heldout"].values()) / len(feet["heldout"])
    report["footwear_accuracy_canonical"] = feet["train"]["Is this something you wear on your feet?"]
    return report
