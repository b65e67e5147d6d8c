"""Prompt files split by template: a held-out prompt's template siblings are never in the fit."""

import pytest

from visionsae.concepts.split import skeleton, split_by_skeleton, words_of

TEMPLATES = ["a photo of {}", "{} on a white background", "a blurry picture of {}", "a drawing of {}",
             "a shop window with {} inside", "my friend bought {} yesterday"]
NOUNS = ["a sneaker", "running shoes", "a trainer", "gym shoes", "a pair of kicks", "tennis shoes", "high-tops"]
# the other files' words: what the concept's prompts share with them is their template
FRAME = words_of(t.format(n) for t in TEMPLATES for n in ("a dog", "a pair of socks", "an old car"))


def test_parts_are_disjoint_and_share_no_template():
    prompts = [t.format(n) for t in TEMPLATES for n in NOUNS]
    parts, how = split_by_skeleton(prompts, (3, 1, 1), seed=0, frame=FRAME)
    assert how == "by template"
    assert sorted(p for part in parts for p in part) == sorted(prompts)  # nothing lost, nothing twice
    owner = {}
    for i, part in enumerate(parts):
        assert part
        for p in part:
            t = next(t for t in TEMPLATES if t.replace("{}", "") in p or p.startswith(t.split("{}")[0]) and
                     p.endswith(t.split("{}")[1]))
            owner.setdefault(t, set()).add(i)
    assert all(len(v) == 1 for v in owner.values()), owner  # every template in one part only
    sizes = [len(p) for p in parts]
    assert sizes[0] > sizes[1] and sizes[0] > sizes[2]


def test_the_split_is_seeded():
    prompts = [t.format(n) for t in TEMPLATES for n in NOUNS]
    assert split_by_skeleton(prompts, (3, 1, 1), 4, frame=FRAME) == split_by_skeleton(prompts, (3, 1, 1), 4, frame=FRAME)
    assert split_by_skeleton(prompts, (3, 1, 1), 4, frame=FRAME) != split_by_skeleton(prompts, (3, 1, 1), 5, frame=FRAME)


def test_one_template_falls_back_to_a_prompt_split_and_says_so():
    prompts = [f"a photo of {n}" for n in NOUNS]
    parts, how = split_by_skeleton(prompts, (3, 1, 1), frame=FRAME)
    assert how.startswith("by prompt") and all(parts)


def test_too_few_prompts_is_an_error():
    with pytest.raises(ValueError, match="need at least 3 distinct prompts"):
        split_by_skeleton(["a", "a", "b"], (3, 1, 1), name="sneaker")


def test_skeleton_keeps_frame_words():
    assert skeleton("a photo of gym shoes", FRAME) == "a photo of _"
    assert skeleton("a pair of kicks on a white background", FRAME) == "a pair of _ on a white background"
    assert skeleton("a photo of a pair of kicks", FRAME) == "a photo of a pair of _"
    assert skeleton("my friend bought high-tops yesterday", FRAME) == "my friend bought _ yesterday"
