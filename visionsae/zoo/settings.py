"""The zoo's measured settings, read by its loaders, pipelines, demos and evaluations (and
by the training scripts in :mod:`visionsae.zoo.training`, which chose them)."""

from __future__ import annotations

# ------------------------------------------------------------------ text SAE and ItD erasure
# The last of MiniLM's six layers, which the UNet reads. Against layer 3 (two thirds deep, as ItD
# hooks CLIP layer 8 of 12) the classifier's held-out recall on the calibrate family at the same
# false-positive cap was higher, and an edit there cannot be rebuilt by later layers (at layer 3
# zeroing the features left 67% of sneaker prompts drawn as sneakers). See the README.
TEXT_HOOK = "encoder.layer.5"
TEXT_SAE_DIR = "fashion-text-sae"
# How ItD deactivates a flagged class on the zoo, chosen on the calibrate family: with
# `visionsae eval erasure --family calibrate --per-kind 4 --value V`, -1 left 3.2% of the flagged
# sneaker / bag / trouser prompts drawn as the erased class, -2 and -3 none; -2 is the weakest
# that erased them all (see the README).
ERASE_MODE = "scale"
ERASE_VALUE = -2.0

# ------------------------------------------------------------------ VQA SAE and SAUCE
VQA_LAYER = 2
"""Index of the hooked Llama decoder layer (its output: the residual stream after it)."""
VQA_SAE_DIR = "fashion-vqa-sae"
# How SAUCE suppresses a class on the zoo: each class's calibrated number of features and
# negative scale (``calibrate_unlearning`` on training images), on every token where they fire.
# One setting does not fit all: sneaker's first 8 features at -0.5 remove it, but at -2 they
# also flip "does this go on your feet?" on sandals and boots; bag needs -2.
UNLEARN_MODE = None
UNLEARN_VALUE = 0.0
UNLEARN_TOKENS = "all"

# ------------------------------------------------------------------ the demos
DEMO_ERASE = ("sneaker",)
"""What ``visionsae demo`` and the app erase unless told otherwise."""
DEMO_PROMPTS = (
    "a photo of a sneaker",
    "running shoes on a white background",
    "athletic shoes for jogging",
    "a snapshot of a pair of sneakers",
    "a photo of an ankle boot",
    "a photo of a sandal",
    "a blurry photo of a handbag",
    "a dress on a white background",
    "a snapshot of a pullover",
    "a thumbnail showing trousers",
)
"""``visionsae demo``'s prompts: four ways of asking for the erased sneaker, its near misses
(boot, sandal) and other classes."""
