"""The normal form of disguised prompts (ItD's second gate)."""

import pytest

from visionsae.concepts.normalize import Normalizer, english_words, vocabulary

VOCAB = ["sneaker", "sneakers", "bag", "bags", "trousers", "shirt", "ankle", "boots", "running", "shoes"]


@pytest.fixture(scope="module")
def norm():
    return Normalizer(VOCAB)


@pytest.mark.parametrize("text,normal", [
    ("a photo of a snaeker", "a photo of a sneaker"),  # swapped letters
    ("a photo of a sneakr", "a photo of a sneaker"),  # a letter left out
    ("SNEAKERS", "sneakers"),  # case
    ("a photo of a sn3ak3r", "a photo of a sneaker"),  # leetspeak
    ("a b@g", "a bag"),
    ("s n e a k e r", "sneaker"),  # spelled out
    ("s.n.e.a.k.e.r on a shelf", "sneaker on a shelf"),
    ("snеaker", "sneaker"),  # Cyrillic "е"
    ("ｓｎｅａｋｅｒ", "sneaker"),  # full-width letters
    ("ankel boots", "ankle boots"),
    ("a photo of a bga", "a photo of a bag"),
])
def test_disguises_are_read_as_the_word(norm, text, normal):
    assert norm(text) == normal


@pytest.mark.parametrize("text", ["a bat", "a seeker on a hill", "a photo of a dog", "a big boat", "7 dwarfs", "route 66"])
def test_english_words_and_numbers_are_left_alone(norm, text):
    assert norm(text) == text


def test_vocabulary_keeps_the_words_that_mark_the_concept():
    concept = ["a photo of a sneaker", "sneakers on a table", "a pair of running shoes", "white sneakers"]
    keep = ["a photo of a dog", "a pair of scissors on a table", "a photo of a cat"]
    words = vocabulary(concept, keep)
    assert "sneakers" in words and "sneaker" not in words  # 'sneaker' is in one prompt only
    assert "photo" not in words and "table" not in words and "pair" not in words
    assert {"sneaker", "sneakers", "bag"} <= english_words()


def test_name_matcher_reads_names_as_words():
    from visionsae.concepts.normalize import NameMatcher

    m = NameMatcher(["t-shirt", "shirt", "dress", "sneaker", "ankle boot"])
    assert m("SNEAKERS on a bench") == {"sneaker"} and m("a polaroid of sneaker") == {"sneaker"}
    assert m("an instagram post of 2sneakers") == {"sneaker"}  # digits do not hide a name
    assert m("a photo of a t - shirt") == {"t-shirt"}  # as the tokenizer decodes it: not "shirt"
    assert m("a dress shirt") == {"shirt"} and m("a shirt dress") == {"dress"}  # a compound's head
    assert m("ankle boots in the rain") == {"ankle boot"} and m("a shirt and a dress") == {"shirt", "dress"}
    assert m("a bagel and a sneakerhead") == set() and m("dresser") == set()
