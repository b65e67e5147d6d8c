"""White-box attack in the style of UnlearnDiffAtk / P4D: optimise a few discrete prompt
tokens through the erased pipeline's diffusion loss.

For a seed prompt, the target is the stock pipeline's latents ``x0`` for it (the concept as the
unerased model draws it), noised at a few random timesteps ``x_t``, and the stock pipeline's
own noise prediction there ``eps_stock = unet(x_t, t, E_stock(seed prompt))`` (matching it
instead of the drawn noise removes the noise's variance from the loss: with a few samples the
plain denoising loss was minimised by tokens that changed the class drawn). ``tokens``
adversarial tokens (first all ``start_token``) are put in front of the prompt (after
``[CLS]``); the loss is ``|| unet(x_t, t, E_erased(adv + prompt)) - eps_stock ||^2``, where
``E_erased`` is the text encoder with the erased pipeline's eraser on (its edit keeps
gradients; its classifier decides per candidate, as it would in the pipeline), plus
``stock_weight`` times the same loss through the stock encoder (the ASR counts only prompts
the stock pipeline still draws as the concept). Each step is
GCG's: the gradient of the loss with respect to the adversarial tokens' one-hot vectors ranks,
per position, the ``top_k`` tokens whose swap most lowers the loss to first order;
``candidates`` random single swaps among them are evaluated exactly (forward only) and the
best one is kept if it lowers the loss. The final discrete prompt (decoded to text) then goes
through the real erased pipeline, both of ItD's gates included.

Queries: the stock pipeline's target latents, the starting loss, one per gradient and one per
candidate evaluated, and the erased pipeline's decision on the final prompt; the budget is in
steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .common import SeedResult, Target, check_positive, seeded
from ..errors import UsageError


@dataclass
class WhiteBoxConfig:
    """White-box (diffusion-loss gradient) attack settings."""

    budget: int = 10
    """Optimisation steps per seed prompt."""
    tokens: int = 5
    """Adversarial tokens put in front of the prompt."""
    top_k: int = 32
    """Tokens per position ranked by the gradient."""
    candidates: int = 16
    """Single-token swaps evaluated per step."""
    timesteps: int = 8
    """Random timesteps (and noises) the loss averages over at each step."""
    stock_weight: float = 1.0
    """Weight of the stock encoder's loss beside the erased one's: an attack prompt must still
    be drawn as the concept by the stock pipeline to count."""
    start_token: str = "the"
    """The adversarial tokens' first value (a neutral word the model reads past)."""
    seed: int = 0
    """Seed of the first tokens, the swaps, the timesteps and noises, and the images."""

    def __post_init__(self) -> None:
        for name in ("budget", "tokens", "top_k", "candidates", "timesteps"):
            check_positive(f"--{name.replace('_', '-')}", getattr(self, name))


def word_token_ids(tokenizer, exclude: Sequence[str] = ()) -> torch.Tensor:
    """Ids of the vocabulary's whole-word alphabetic tokens (no specials, no word pieces), less
    those containing an ``exclude`` word of three letters or more (or equal to a shorter one)."""
    vocab = tokenizer.get_vocab()
    words = [w.lower() for w in exclude if w]
    keep = []
    for tok, i in vocab.items():
        if not re.fullmatch(r"[a-z]{2,}", tok):
            continue
        if any((w in tok) if len(w) >= 3 else tok == w for w in words):
            continue
        keep.append(i)
    return torch.tensor(sorted(keep), dtype=torch.long)


class DiffusionLoss:
    """The erased pipeline's denoising loss on fixed latents, as a function of the prompt's
    token embeddings (``[B, T, d]`` through the encoder's ``inputs_embeds``)."""

    def __init__(self, target: Target, x0: torch.Tensor, seed_ids: torch.Tensor, generator: torch.Generator,
                 timesteps: int, eraser, stock_weight: float = 0.0) -> None:
        pipe = target.stock
        self.eraser, self.stock_weight = eraser, stock_weight
        self.unet, self.encoder, self.scheduler = pipe.unet, pipe.text_encoder, pipe.scheduler
        n_train = self.scheduler.config.num_train_timesteps
        self.t = torch.randint(0, n_train, (timesteps,), generator=generator)
        self.noise = torch.randn((timesteps, *x0.shape[1:]), generator=generator).to(x0.dtype)
        self.x_t = self.scheduler.add_noise(x0.expand(timesteps, *x0.shape[1:]), self.noise, self.t)
        # the stock pipeline's own prediction for the seed prompt at those noisy latents
        eraser.enabled = False
        try:
            with torch.no_grad():
                self.goal = self._predict(self.encoder.get_input_embeddings()(seed_ids[None]))  # [n, c, h, w]
        finally:
            eraser.enabled = True

    def __call__(self, embeds: torch.Tensor) -> torch.Tensor:
        """Loss ``[B]`` of each prompt (embeddings ``[B, T, d]`` before the encoder): the erased
        encoder's, plus ``stock_weight`` times the stock encoder's."""
        loss = self._loss(embeds)
        if self.stock_weight and self.eraser is not None:
            self.eraser.enabled = False
            try:
                loss = loss + self.stock_weight * self._loss(embeds)
            finally:
                self.eraser.enabled = True
        return loss

    def _predict(self, embeds: torch.Tensor) -> torch.Tensor:
        """The UNet's predictions ``[B * n, c, h, w]`` at the ``n`` noisy latents for each prompt."""
        B, n = embeds.shape[0], self.t.numel()
        hidden = self.encoder(inputs_embeds=embeds)[0]  # [B, T, d]
        states = hidden.repeat_interleave(n, 0)
        return self.unet(self.x_t.repeat(B, 1, 1, 1), self.t.repeat(B), encoder_hidden_states=states).sample

    def _loss(self, embeds: torch.Tensor) -> torch.Tensor:
        B = embeds.shape[0]
        pred = self._predict(embeds)
        return F.mse_loss(pred, self.goal.repeat(B, 1, 1, 1), reduction="none").reshape(B, -1).mean(-1)


def _prompt_ids(tokenizer, prompt: str, n_adv: int) -> tuple[torch.Tensor, slice]:
    """``[CLS] adv... prompt [SEP] [PAD]...`` ids of the tokenizer's length, and the adversarial slot."""
    length = tokenizer.model_max_length
    body = tokenizer(prompt, add_special_tokens=False).input_ids[: length - 2 - n_adv]
    ids = [tokenizer.cls_token_id] + [tokenizer.mask_token_id] * n_adv + body + [tokenizer.sep_token_id]
    ids += [tokenizer.pad_token_id] * (length - len(ids))
    return torch.tensor(ids), slice(1, 1 + n_adv)


def attack_prompt(target: Target, prompt: str, concept: str, cfg: WhiteBoxConfig, image_seed: int,
                  allowed: torch.Tensor, index: int = 0) -> SeedResult:
    pipe = target.stock
    tok = pipe.tokenizer
    rng = seeded(cfg.seed, "whitebox", concept, index, prompt)
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    with torch.no_grad():
        x0 = pipe(prompt, generator=torch.Generator().manual_seed(int(image_seed)), output_type="latent",
                  **target.settings).images  # [1, c, h, w]
    ids, slot = _prompt_ids(tok, prompt, cfg.tokens)
    # start from a neutral word ("the"), which the stock model reads past; random words would
    # already change what it draws
    start_id = tok.convert_tokens_to_ids(cfg.start_token)
    if start_id == tok.unk_token_id:
        raise UsageError(f"the white-box start token {cfg.start_token!r} is not in the tokenizer's vocabulary")
    ids[slot] = start_id
    W = pipe.text_encoder.get_input_embeddings().weight  # [V, d]
    queries = 1
    blocked = torch.ones(W.shape[0], dtype=torch.bool)
    blocked[allowed] = False
    with target.erasing_encoder() as eraser:
        seed_ids, _ = _prompt_ids(tok, prompt, 0)
        loss_of = DiffusionLoss(target, x0, seed_ids, gen, cfg.timesteps, eraser, cfg.stock_weight)
        with torch.no_grad():
            current = float(loss_of(W[ids][None])[0])
        queries += 1
        start = current
        for _ in range(cfg.budget):
            one_hot = F.one_hot(ids[slot], W.shape[0]).to(W.dtype).requires_grad_(True)  # [k, V]
            embeds = W[ids].detach().clone()
            embeds = torch.cat([embeds[: slot.start], one_hot @ W, embeds[slot.stop:]])[None]
            loss = loss_of(embeds)[0]
            (grad,) = torch.autograd.grad(loss, one_hot)
            queries += 1
            grad = grad.masked_fill(blocked[None], float("inf"))
            top = (-grad).topk(cfg.top_k, dim=1).indices  # [k, top_k]: tokens that lower the loss most
            cands = ids.repeat(cfg.candidates, 1)
            pos = torch.randint(cfg.tokens, (cfg.candidates,), generator=gen)
            pick = torch.randint(cfg.top_k, (cfg.candidates,), generator=gen)
            cands[torch.arange(cfg.candidates), slot.start + pos] = top[pos, pick]
            with torch.no_grad():
                losses = loss_of(W[cands])
            queries += cfg.candidates
            best = int(losses.argmin())
            if float(losses[best]) < current:
                current, ids = float(losses[best]), cands[best]
    text = tok.decode(ids, skip_special_tokens=True)
    flagged, margin = target.margins([text], concept)
    queries += 1
    return SeedResult(prompt, concept, text, queries, not flagged[0],
                      {"loss_start": start, "loss_end": current, "adversarial_tokens": tok.convert_ids_to_tokens(ids[slot].tolist()),
                       "margin": margin[0]})


def run_whitebox_attack(target: Target, seeds: Sequence[tuple[str, str]], cfg: WhiteBoxConfig, image_seed: int = 0,
                        progress: bool = True) -> list[SeedResult]:
    """The attack of every (seed prompt, concept) pair; the i-th is drawn at ``image_seed + i``
    (its target latents too)."""
    allowed = word_token_ids(target.stock.tokenizer)
    return [attack_prompt(target, p, c, cfg, image_seed + i, allowed, i)
            for i, (p, c) in enumerate(tqdm(seeds, desc="white-box attack", disable=not progress))]
