"""Concept-vector attack in the style of Ring-A-Bell: the concept's direction in the text
encoder's output, then discrete tokens whose embedding carries it, without the class word.

1. The direction: prompt pairs that differ only by the concept (the same template with the
   concept's noun phrase and with another class's) are encoded by the stock text encoder (the
   output the UNet reads, ``[T, d]`` per prompt); the direction is the mean difference
   ``c = mean(E(with) - E(without))`` ``[T, d]``.
2. For each seed prompt the goal embedding is ``E(seed) + strength * c``.
3. A genetic search over ``length`` tokens (whole-word tokens of the vocabulary, less every
   token containing one of the concept's words, so no prompt carries the class word) maximises
   the cosine similarity of the prompt's embedding to the goal: elitism, tournament selection,
   one-point crossover, per-token mutation. The first population is the seed prompt's own
   tokens with its concept words replaced, and mutations of it.

The best prompt (decoded to text) then goes through the real erased pipeline. Queries: one text
encoder evaluation per individual; the budget is in generations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .common import SeedResult, Target, check_positive, seeded
from .whitebox import word_token_ids
from ..errors import UsageError


@dataclass
class ConceptVectorConfig:
    """Ring-A-Bell style concept-vector attack settings."""

    budget: int = 25
    """Generations of the genetic search per seed prompt."""
    population: int = 32
    """Prompts per generation."""
    length: int = 12
    """Tokens of an attack prompt (within the tokenizer's length)."""
    strength: float = 1.5
    """How far along the concept's direction the goal embedding lies."""
    mutation: float = 0.1
    """Chance of each token to be replaced by a random one in a child."""
    elite: int = 4
    """Best prompts carried over unchanged."""
    seed: int = 0
    """Seed of the search and of the images."""

    def __post_init__(self) -> None:
        for name in ("budget", "population", "length", "elite"):
            check_positive(f"--{name}", getattr(self, name))
        if not 0 <= self.mutation <= 1:
            raise UsageError(f"mutation must be in [0, 1], got {self.mutation}")


@torch.no_grad()
def encode(pipe, ids: torch.Tensor) -> torch.Tensor:
    """The text encoder's output ``[B, T, d]`` of token ids ``[B, T]`` as the pipeline ``pipe``
    calls it (no attention mask)."""
    return pipe.text_encoder(ids)[0]


def _ids(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def concept_direction(pipe, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
    """``mean(E(with) - E(without))`` ``[T, d]`` in the text encoder of the (stock) pipeline
    ``pipe`` over prompt ``pairs`` (with the concept, without)."""
    if not pairs:
        raise UsageError("the concept direction needs at least one (with, without) prompt pair")
    tok = pipe.tokenizer
    diffs = []
    for i in range(0, len(pairs), 64):
        chunk = pairs[i : i + 64]
        diffs.append(encode(pipe, _ids(tok, [a for a, _ in chunk])) - encode(pipe, _ids(tok, [b for _, b in chunk])))
    return torch.cat(diffs).mean(0)


def _sequences(tokenizer, body: torch.Tensor) -> torch.Tensor:
    """``[CLS] body [SEP] [PAD]...`` ids ``[B, T]`` of token bodies ``[B, L]``."""
    B, L = body.shape
    T = tokenizer.model_max_length
    ids = torch.full((B, T), tokenizer.pad_token_id, dtype=torch.long)
    ids[:, 0] = tokenizer.cls_token_id
    ids[:, 1 : 1 + L] = body
    ids[:, 1 + L] = tokenizer.sep_token_id
    return ids


def carrier_prompt(pipe, prompt: str, concept: str, direction: torch.Tensor, cfg: ConceptVectorConfig,
                   allowed: torch.Tensor, index: int = 0) -> tuple[str, float, int]:
    """The genetic search from ``prompt`` in the text encoder of the (stock) pipeline ``pipe``:
    (the best prompt as text, its cosine to the goal, the encoder evaluations it took)."""
    tok = pipe.tokenizer
    L = min(cfg.length, tok.model_max_length - 2)
    rng = seeded(cfg.seed, "concept_vector", concept, index, prompt)
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    goal = (encode(pipe, _ids(tok, [prompt]))[0] + cfg.strength * direction).reshape(-1)  # [T * d]

    def fitness(body: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(encode(pipe, _sequences(tok, body)).reshape(len(body), -1), goal[None], dim=1)

    def random_tokens(*shape) -> torch.Tensor:
        return allowed[torch.randint(len(allowed), shape, generator=gen)]

    # the seed prompt's own tokens, the concept's words (anything not allowed) replaced
    own = torch.tensor(tok(prompt, add_special_tokens=False).input_ids[:L], dtype=torch.long)
    start = random_tokens(L)
    ok = torch.isin(own, allowed)
    start[: len(own)][ok] = own[ok]
    pop = start.repeat(cfg.population, 1)
    mutate = torch.rand(pop.shape, generator=gen) < 0.3
    mutate[0] = False
    pop = torch.where(mutate, random_tokens(*pop.shape), pop)
    scores = fitness(pop)
    queries = cfg.population
    for _ in range(cfg.budget - 1):
        order = scores.argsort(descending=True)
        elite = pop[order[: cfg.elite]]
        n = cfg.population - len(elite)
        # tournaments of two for each parent
        a, b = torch.randint(cfg.population, (2, n, 2), generator=gen)
        pa = torch.where((scores[a[:, 0]] >= scores[a[:, 1]]), a[:, 0], a[:, 1])
        pb = torch.where((scores[b[:, 0]] >= scores[b[:, 1]]), b[:, 0], b[:, 1])
        cut = torch.randint(1, L + 1, (n, 1), generator=gen)
        children = torch.where(torch.arange(L)[None] < cut, pop[pa], pop[pb])
        mutate = torch.rand(children.shape, generator=gen) < cfg.mutation
        children = torch.where(mutate, random_tokens(*children.shape), children)
        pop = torch.cat([elite, children])
        scores = torch.cat([scores[order[: cfg.elite]], fitness(children)])
        queries += n
    best = int(scores.argmax())
    return tok.decode(pop[best], skip_special_tokens=True), float(scores[best]), queries


def attack_prompt(target: Target, prompt: str, concept: str, direction: torch.Tensor, cfg: ConceptVectorConfig,
                  allowed: torch.Tensor, index: int = 0) -> SeedResult:
    text, cosine, queries = carrier_prompt(target.stock, prompt, concept, direction, cfg, allowed, index)
    flagged, margin = target.margins([text], concept)
    return SeedResult(prompt, concept, text, queries + 1, not flagged[0], {"cosine": cosine, "margin": margin[0]})


def run_concept_vector_attack(target: Target, seeds: Sequence[tuple[str, str]], cfg: ConceptVectorConfig,
                              pairs: dict[str, Sequence[tuple[str, str]]], image_seed: int = 0,
                              progress: bool = True) -> list[SeedResult]:
    """The attack of every (seed prompt, concept) pair, each concept's direction from its
    ``pairs`` (with, without); the i-th attack prompt is drawn at ``image_seed + i`` (by the
    caller's judging)."""
    tok = target.stock.tokenizer
    directions, allowed = {}, {}
    for concept in dict.fromkeys(c for _, c in seeds):
        if concept not in pairs:
            raise UsageError(f"no prompt pairs for concept {concept!r}; the concept-vector attack needs them")
        directions[concept] = concept_direction(target.stock, pairs[concept])
        allowed[concept] = word_token_ids(tok, target.exclude_words.get(concept, [concept]))
    return [attack_prompt(target, p, c, directions[c], cfg, allowed[c], i)
            for i, (p, c) in enumerate(tqdm(seeds, desc="concept-vector attack", disable=not progress))]
