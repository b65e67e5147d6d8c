"""Split prompts by their template, never by prompt: held-out figures must be out of sample.

Prompts written from one template ("a photo of a {}", "{} on a white background") share its
frame words; a random split puts siblings of a held-out prompt in the fitting set, and the
held-out recall then measures memory of the template. :func:`skeleton` reduces a prompt to its
frame (its *frame words*, the rest as ``_``), and :func:`split_by_skeleton` assigns whole
skeleton groups to the splits. The frame words of a concept's prompts are best the words of the
*other* prompt files (keep prompts, other concepts): what the concept shares with them is the
template, what it does not is the concept; without them, the words in a quarter of the file.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Sequence
from ..errors import UsageError

_WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")


def _words(prompt: str) -> list[str]:
    return _WORD.findall(prompt.lower())


def skeleton(prompt: str, frequent: set[str]) -> str:
    """``prompt`` with every word not in ``frequent`` as ``_`` (runs of them as one)."""
    out: list[str] = []
    for w in _words(prompt):
        w = w if w in frequent else "_"
        if not (w == "_" and out and out[-1] == "_"):
            out.append(w)
    return " ".join(out)


def frequent_words(prompts: Sequence[str], share: float = 0.1) -> set[str]:
    """Words in at least ``share`` of ``prompts`` (and at least two): a file's template words."""
    counts = Counter(w for p in prompts for w in set(_words(p)))
    floor = max(2, share * len(prompts))
    return {w for w, n in counts.items() if n >= floor}


_ARTICLES = frozenset({"a", "an", "the"})


def _template_groups(prompts: list[str], frame: set[str]) -> list[list[str]]:
    """Prompts grouped by their frame words (articles aside); a group whose frame words are a
    subset (of two or more words) of another's joins it: "a photo of _" and "a photo of a pair
    of _" are one template with a longer noun phrase."""
    keys: dict[frozenset, list[str]] = {}
    for p in prompts:
        keys.setdefault(frozenset(w for w in _words(p) if w in frame) - _ARTICLES, []).append(p)
    order = sorted(keys, key=len)
    parent = {k: k for k in order}

    def root(k):
        while parent[k] != k:
            k = parent[k]
        return k

    for i, small in enumerate(order):
        if len(small) < 2:
            continue
        for big in order[i + 1 :]:
            if small < big:
                parent[root(big)] = root(small)
    out: dict[frozenset, list[str]] = {}
    for k in order:
        out.setdefault(root(k), []).extend(keys[k])
    return [sorted(v) for v in out.values()]


def words_of(prompts: Sequence[str]) -> set[str]:
    """Every word of ``prompts`` (lower case), e.g. the frame words for another file's split."""
    return {w for p in prompts for w in _words(p)}


def split_by_skeleton(prompts: Sequence[str], fractions: Sequence[float], seed: int = 0,
                      name: str = "prompts", frame: set[str] | None = None) -> tuple[list[list[str]], str]:
    """``prompts`` in ``len(fractions)`` parts of about those shares, whole skeleton groups (over
    the ``frame`` words, by default the file's :func:`frequent_words` at a quarter) to a
    part (seeded order). Returns the parts and how they were split (``"by template"``, or ``"by
    prompt"`` when the prompts fall into fewer skeleton groups than parts: then no template
    split exists and the held-out figures are optimistic, as the returned string says).
    Raises ``ValueError`` when a part would be empty."""
    prompts = list(dict.fromkeys(prompts))
    if len(prompts) < len(fractions):
        raise UsageError(f"{name}: need at least {len(fractions)} distinct prompts to split, got {len(prompts)}")
    frequent = frequent_words(prompts, 0.25) if frame is None else frame
    groups = _template_groups(prompts, frequent)
    rng = random.Random(f"{seed}-{name}")
    if len(groups) < len(fractions):
        units, how = [[p] for p in prompts], "by prompt (too few distinct templates to split by template)"
    else:
        units, how = groups, "by template"
    parts = _assign(units, fractions, rng)
    if how == "by template" and any(len(p) < 0.5 * f / sum(fractions) * len(prompts) for p, f in zip(parts, fractions)):
        # one template holds most prompts: no template split gives every part its share
        units, how = [[p] for p in prompts], "by prompt (one template holds most prompts)"
        parts = _assign(units, fractions, rng)
    return parts, how


def _assign(units: list[list[str]], fractions: Sequence[float], rng: random.Random) -> list[list[str]]:
    units = list(units)
    rng.shuffle(units)
    total = sum(fractions)
    n = sum(len(u) for u in units)
    targets = [f / total * n for f in fractions]
    parts: list[list[str]] = [[] for _ in fractions]
    # each part first gets one unit (none stays empty), then units go to the part furthest below its share
    for i, unit in enumerate(units):
        j = i if i < len(parts) else max(range(len(parts)), key=lambda k: targets[k] - len(parts[k]))
        parts[j].extend(unit)
    return parts
