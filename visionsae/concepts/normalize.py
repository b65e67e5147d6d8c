"""The text a disguised prompt stands for: ItD's second gate against spelling attacks.

An SAE classifier reads the text encoder's activations, and a misspelt class word is cut by
the tokenizer into pieces that carry little of it ("snaeker" -> ``s ##nae ##ker``). So the
eraser also classifies the prompt's *normal form*, the prompt a reader would see in it:

1. characters folded to ASCII (NFKC, then homoglyphs and accents transliterated by
   ``anyascii``: Cyrillic "е" -> "e", full-width letters -> ASCII) and lower case;
2. letters spelled out one by one joined ("s n e a k e r", "s.n.e.a.k.e.r" -> "sneaker");
3. leetspeak inside a word read as letters ("sn3ak3r" -> "sneaker", "b@g" -> "bag");
4. each word that is not an English word (symspellpy's frequency dictionary) replaced by the
   closest word of the concepts' vocabularies within a small edit distance (symspellpy's
   SymSpell over that vocabulary): "sneakr" -> "sneaker", "bga" -> "bag". English words are
   never changed: "bat" is not a misspelt "bag".

A prompt is flagged when either its own activations or those of its normal form carry the
concept (:class:`visionsae.control.itd.ItDEraser`). A prompt whose normal form is itself
changes nothing.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache
from typing import Iterable, Sequence

LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i", "|": "l"})
_WORD = re.compile(r"[a-z0-9@$!|]+")
_SPELLED = re.compile(r"\b(?:[a-z][ .\-_*]){2,}[a-z]\b")
STOPWORDS = frozenset(
    "a an the of in on at to for with and or but is are was be this that there it its my your his her their our "
    "some any one two from by as into onto over under near next up down off out very so just".split()
)


@lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """The 82,765 words of symspellpy's English frequency dictionary (inflections included)."""
    from importlib.resources import files

    text = files("symspellpy").joinpath("frequency_dictionary_en_82_765.txt").read_text(encoding="utf-8")
    return frozenset(line.split(" ", 1)[0] for line in text.splitlines() if line)


def fold_characters(text: str) -> str:
    """NFKC, homoglyphs to the Latin letters they imitate (Unicode's confusables, through
    ``confusable_homoglyphs``: Cyrillic "ѕ" is "s", not anyascii's transliteration "dz"), the
    rest transliterated to ASCII (anyascii: accents dropped), lower case."""
    from anyascii import anyascii

    text = unicodedata.normalize("NFKC", text)
    if text.isascii():
        return text.lower()
    return anyascii("".join(c if c.isascii() else _latin_lookalike(c) for c in text)).lower()


@lru_cache(maxsize=4096)
def _latin_lookalike(char: str) -> str:
    """The Latin letter ``char`` imitates (a one-letter ASCII transliteration of its first Latin
    homoglyph), else ``char`` itself."""
    from anyascii import anyascii
    from confusable_homoglyphs import confusables

    found = confusables.is_confusable(char, preferred_aliases=["latin"], greedy=True) or []
    for entry in found:
        for glyph in entry.get("homoglyphs", []):
            ascii_form = anyascii(glyph["c"])
            if len(ascii_form) == 1 and ascii_form.isalpha():
                return ascii_form
    return char


def join_spelled(text: str) -> str:
    """Runs of three or more single letters separated by spaces, dots, dashes, underscores or
    stars joined into one word."""
    return _SPELLED.sub(lambda m: re.sub(r"[ .\-_*]", "", m.group(0)), text)


def fold_leet(word: str) -> str:
    """A word mixing letters with digits or symbols read as letters; pure numbers are kept."""
    if any(c.isalpha() for c in word) and any(not c.isalpha() for c in word):
        return word.translate(LEET)
    return word


def vocabulary(concept_prompts: Sequence[str], keep_prompts: Sequence[str] = (), min_count: int = 2,
               min_ratio: float = 3.0) -> list[str]:
    """The words that mark a concept's prompts: at least 3 letters, no stop word, in at least
    ``min_count`` concept prompts, and ``min_ratio`` times more frequent among them than
    among ``keep_prompts``."""
    def doc_counts(prompts):
        return Counter(w for p in prompts for w in set(_words(fold_characters(p))))

    pos, neg = doc_counts(concept_prompts), doc_counts(keep_prompts)
    n_pos, n_neg = max(1, len(concept_prompts)), max(1, len(keep_prompts))
    words = [w for w, c in pos.items() if c >= min_count and len(w) >= 3 and w not in STOPWORDS and w.isalpha()
             and (c / n_pos) >= min_ratio * neg.get(w, 0) / n_neg]
    return sorted(words)


def name_forms(name: str) -> tuple[str, str]:
    """A concept name and its plural ("t-shirt", "t-shirts"; "dress", "dresses")."""
    name = name.lower().strip()
    plural = name + ("es" if name.endswith(("s", "sh", "ch", "x", "z")) else "s")
    return name, plural


class NameMatcher:
    """Which of ``names`` a prompt says by name, singular or plural, as whole words (a hyphen
    joins words: "t-shirt" is not "shirt"). A name directly followed by another name is the
    modifier of a compound, not the thing: "a dress shirt" says shirt, not dress."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        forms = {f: n for n in self.names for f in name_forms(n)}
        alternatives = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
        self._forms = forms
        # letters (not digits) bound a name: "2sneakers" says sneakers
        self._pattern = re.compile(rf"(?<![a-z-])({alternatives})(?![a-z-])") if forms else None

    def __call__(self, text: str) -> set[str]:
        if self._pattern is None:
            return set()
        text = re.sub(r"\s*-\s*", "-", fold_characters(text).lower())  # decoded "t - shirt" -> "t-shirt"
        hits = list(self._pattern.finditer(text))
        said = set()
        for i, m in enumerate(hits):
            followed = i + 1 < len(hits) and text[m.end():hits[i + 1].start()].strip() == ""
            if not followed:
                said.add(self._forms[m.group(1)])
        return said


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text)


def max_distance(word: str) -> int:
    """Edits allowed when correcting ``word``: 1 up to 4 letters, 2 from 5 letters."""
    return 1 if len(word) <= 4 else 2


class Normalizer:
    """The normal form of prompts against a vocabulary (see the module docstring)."""

    def __init__(self, vocabulary: Iterable[str]) -> None:
        from symspellpy import SymSpell

        self.vocabulary = sorted({w.lower() for w in vocabulary if w})
        self._known = english_words()
        self._spell = SymSpell(max_dictionary_edit_distance=2, prefix_length=7)
        for w in self.vocabulary:
            self._spell.create_dictionary_entry(w, 1)
        self._cache: dict[str, str] = {}

    def correct(self, word: str) -> str:
        """``word`` or, when it is not an English word, the closest vocabulary word."""
        if word in self._known or word in self.vocabulary or len(word) < 3 or not word.isalpha():
            return word
        if word not in self._cache:
            from symspellpy import Verbosity

            hits = self._spell.lookup(word, Verbosity.CLOSEST, max_edit_distance=max_distance(word))
            # several vocabulary words equally close: the most frequent wins (all count 1: the
            # first in order), a reading that flags the prompt for a concept it may carry
            self._cache[word] = hits[0].term if hits else word
        return self._cache[word]

    def __call__(self, text: str) -> str:
        """The normal form of ``text`` (folded, joined, leet read, words corrected)."""
        folded = join_spelled(fold_characters(text))
        return _WORD.sub(lambda m: self.correct(fold_leet(m.group(0))), folded)


def as_read(tokenizer, prompts: Sequence[str]) -> list[str]:
    """``prompts`` as the text encoder reads them: their token ids decoded (lower case, accents
    stripped, cut to the tokenizer's length, as the tokenizer does). The eraser normalises this
    text, so a concept set is calibrated on the same."""
    ids = tokenizer(list(prompts), truncation=True, max_length=tokenizer.model_max_length).input_ids
    return tokenizer.batch_decode(ids, skip_special_tokens=True)
