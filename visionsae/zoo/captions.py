"""The class-captions corpus of the zoo: names, synonyms, caption templates, descriptions and
VQA questions for the ten Fashion-MNIST classes, each with a train / held-out split.

This module is data. Training (``train_t2i``, ``train_vqa``) draws only from the ``TRAIN_*``
lists; the evaluation (``visionsae.eval.zoo``) and the tests measure on the ``HELDOUT_*``
lists, which no model has seen. The erasure and unlearning work reuses the same corpus
(``class_prompts``) so that "a sneaker" means the same thing everywhere.

Captions are lower case apart from nothing: MiniLM's tokenizer is uncased anyway.
"""

from __future__ import annotations

import random
from ..errors import UsageError

# Fashion-MNIST label order. ``CLASS_NAMES[i]`` is also the VQA's one canonical answer for class i.
CLASS_NAMES: tuple[str, ...] = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)

# Noun phrases (with their article) that name each class; they fill the ``{}`` of a template.
SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("a t-shirt", "a tee", "a tee shirt", "a top", "a short-sleeved top", "a tank top", "a cotton t-shirt"),
    ("trousers", "a pair of trousers", "pants", "a pair of pants", "jeans", "slacks", "a pair of jeans"),
    ("a pullover", "a sweater", "a jumper", "a knitted sweater", "a long-sleeved pullover", "a sweatshirt"),
    ("a dress", "a summer dress", "a gown", "a frock", "a long dress", "an evening dress"),
    ("a coat", "a jacket", "an overcoat", "a winter coat", "a parka", "a coat with a zipper"),
    ("a sandal", "sandals", "a pair of sandals", "a flip-flop", "strappy sandals", "a high-heeled sandal"),
    ("a shirt", "a button-up shirt", "a blouse", "a collared shirt", "a flannel shirt", "a button-down shirt"),
    ("a sneaker", "sneakers", "running shoes", "a trainer", "a pair of sneakers", "a sports shoe"),
    ("a bag", "a handbag", "a purse", "a tote bag", "a shoulder bag", "a leather bag"),
    ("an ankle boot", "ankle boots", "a boot", "a pair of boots", "a leather boot", "a chelsea boot"),
)

# Caption templates; ``{}`` is a class noun phrase.
TRAIN_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a photo of {}",
    "a picture of {}",
    "an image of {}",
    "a grayscale photo of {}",
    "a black and white picture of {}",
    "a product photo of {}",
    "{} on a plain background",
    "a small image of {}",
    "a catalog photo of {}",
    "a low resolution photo of {}",
    "a centered photo of {}",
    "a photo of {} for sale",
    "a close-up of {}",
    "{} in a fashion catalog",
    "an online shop picture of {}",
    "a simple picture of {}",
    "a studio photo of {}",
    "a cropped photo of {}",
    "a dark photo of {}",
)
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "a clean shot of {}",
    "{} on a white background",
    "a thumbnail showing {}",
    "a blurry photo of {}",
    "a snapshot of {}",
    "a fashion picture of {}",
    "there is {} in this picture",
    "an e-commerce photo of {}",
)

# Whole captions that describe one item of a class in more words.
TRAIN_DESCRIPTIONS: tuple[tuple[str, ...], ...] = (
    ("a casual top with short sleeves", "a plain crew-neck t-shirt", "a sleeveless summer top"),
    ("long trousers with two legs", "blue jeans laid flat", "a pair of straight-leg pants"),
    ("a warm knitted sweater with long sleeves", "a cosy wool jumper", "a pullover for cold days"),
    ("a women's dress without sleeves", "a flowing dress for a party", "a knee-length dress"),
    ("a heavy winter coat with long sleeves", "a zipped jacket for the rain", "a long overcoat"),
    ("open summer sandals with thin straps", "beach sandals", "a strappy sandal with a heel"),
    ("a long-sleeved shirt with buttons", "a checked shirt with a collar", "a work shirt"),
    ("running shoes on a white background", "low sports shoes with laces", "a pair of white trainers"),
    ("a handbag with a handle", "a leather purse for women", "a tote bag for shopping"),
    ("a leather boot that covers the ankle", "a pair of winter ankle boots", "a heeled boot"),
)
HELDOUT_DESCRIPTIONS: tuple[tuple[str, ...], ...] = (
    ("a basic tee to wear in summer",),
    ("pants for the office",),
    ("a thick sweater to keep warm",),
    ("a pretty dress for a wedding",),
    ("a warm coat for winter",),
    ("sandals to wear at the beach",),
    ("a formal shirt with a collar",),
    ("athletic shoes for jogging",),
    ("a bag to carry your things",),
    ("short boots for autumn",),
)

# VQA: questions whose answer is the class name (``CLASS_NAMES``).
TRAIN_CATEGORY_QUESTIONS: tuple[str, ...] = (
    "What is in this image?",
    "Which category does this belong to?",
    "What is this?",
    "What item of clothing is shown?",
    "What kind of item is this?",
    "Name the object in the picture.",
    "What is shown in the picture?",
    "What type of fashion item is this?",
    "Classify this image.",
    "What do you see?",
    "Which fashion item is this?",
    "What piece of clothing is this?",
    "Identify the item.",
    "What is the name of this item?",
    "Which type of garment is this?",
    "What is the object?",
    "Which article is this?",
    "Name the product.",
    "What would you call this?",
    "Which class does this image show?",
)
HELDOUT_CATEGORY_QUESTIONS: tuple[str, ...] = (
    "What is pictured here?",
    "Which product category is this?",
    "Tell me what this item is.",
    "What object does the photo show?",
)

# VQA: yes/no attributes: name -> (classes answered "yes", train phrasings, held-out phrasings).
YES_NO_ATTRIBUTES: dict[str, tuple[frozenset[int], tuple[str, ...], tuple[str, ...]]] = {
    "footwear": (
        frozenset({5, 7, 9}),
        ("Is this something you wear on your feet?", "Is this footwear?", "Is this a shoe?",
         "Would you put this on your feet?", "Do you wear this on your feet?", "Is this worn on the feet?",
         "Can you walk in this?", "Is it a type of shoe?"),
        ("Does this go on your feet?", "Is this a kind of footwear?"),
    ),
    "carry": (
        frozenset({8}),
        ("Can you carry things in it?", "Is this a bag?", "Can this hold your belongings?",
         "Can you put things inside it?", "Is this a handbag?", "Is this for carrying stuff?",
         "Would you carry this on your shoulder?"),
        ("Could you put your keys in this?",),
    ),
    "legs": (
        frozenset({1}),
        ("Is this worn on the legs?", "Are these trousers?", "Are these pants?", "Is this worn below the waist?",
         "Would you put your legs in this?", "Is this a pair of trousers?"),
        ("Do you wear this on your legs?",),
    ),
    "upper_body": (
        frozenset({0, 2, 4, 6}),
        ("Is this worn on the upper body?", "Is this a top you wear on your torso?", "Is this an upper-body garment?",
         "Would you wear this on your upper body?", "Do you wear this on your torso?"),
        ("Does this cover your chest and arms?",),
    ),
}

# VQA: "is this a <class>?" questions; ``{}`` is a canonical class name.
TRAIN_IS_CLASS_QUESTIONS: tuple[str, ...] = ("Is this a {}?", "Is there a {} in this image?", "Is this item a {}?")
HELDOUT_IS_CLASS_QUESTIONS: tuple[str, ...] = ("Does this picture show a {}?",)

YES, NO = "yes", "no"


def _check_label(label: int) -> int:
    if not 0 <= int(label) < NUM_CLASSES:
        raise UsageError(f"class label must be in 0..{NUM_CLASSES - 1}, got {label}")
    return int(label)


def class_prompts(label: int, split: str = "train") -> list[str]:
    """Every caption of class ``label`` in ``split`` ("train" or "heldout"), in a fixed order:
    each template filled with each synonym, then the class's descriptions. Held-out captions
    never include a training caption."""
    label = _check_label(label)
    if split == "train":
        templates, descriptions = TRAIN_TEMPLATES, TRAIN_DESCRIPTIONS
    elif split == "heldout":
        templates, descriptions = HELDOUT_TEMPLATES, HELDOUT_DESCRIPTIONS
    else:
        raise UsageError(f"split must be 'train' or 'heldout', got {split!r}")
    prompts = [template.format(noun) for template in templates for noun in SYNONYMS[label]] + list(descriptions[label])
    if split == "heldout":  # a held-out template can rebuild a training description; keep it out
        seen = set(class_prompts(label, "train"))
        prompts = [p for p in prompts if p not in seen]
    return prompts


def sample_prompts(label: int, count: int, split: str = "heldout", seed: int = 0) -> list[str]:
    """``count`` captions of class ``label`` from ``split``, drawn without replacement
    (cycling when ``count`` exceeds the list) in an order fixed by ``seed``."""
    prompts = class_prompts(label, split)
    order = random.Random(f"{seed}-{label}-{split}").sample(prompts, len(prompts))
    return [order[i % len(order)] for i in range(count)]
