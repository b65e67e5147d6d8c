"""`visionsae extract` on saved tiny models: a diffusers SDXL pipeline directory (second text
encoder), a transformers DINOv2-with-registers directory, a LLaVA directory with JSONL inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from visionsae.audit.inputs import read_jsonl
from visionsae.cli import main
from visionsae.sources import TextEncoderSource, TokenKind
from visionsae.sources.loading import read_inputs
from visionsae.store import ActivationStore


def _rows(path):
    store = ActivationStore.open(path)
    parts = list(store.iter_shards())
    return store, torch.cat([p.acts for p in parts]), torch.cat([p.kind for p in parts])


def test_sdxl_pipeline_dir_second_encoder(tiny_sdxl, tmp_path, capsys):
    tiny_sdxl.save_pretrained(tmp_path / "pipe")
    prompts = ["a photo of a dog", "a red car on a wet street"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n\n")
    assert main(["extract", "--model", str(tmp_path / "pipe"), "--encoder", "text_encoder_2",
                 "--hook", "text_model.encoder.layers.3", "--inputs", str(tmp_path / "p.txt"),
                 "--out", str(tmp_path / "s"), "--skip-padding", "--no-progress"]) == 0
    store, acts, kinds = _rows(tmp_path / "s")
    ref = TextEncoderSource.from_pipeline(tiny_sdxl, "encoder.layers.3", encoder=2, skip_padding=True).encode(prompts, 0)
    assert torch.equal(acts, ref.acts) and torch.equal(kinds, ref.kind)
    assert TokenKind.PAD not in kinds.tolist()
    assert store.source["encoder"] == "text_encoder_2" and store.source["max_length"] == 77
    capsys.readouterr()


def test_transformers_dinov2_registers_dir(tmp_path, capsys):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=28,
        patch_size=7, num_register_tokens=4)).save_pretrained(tmp_path / "dino")
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    assert main(["extract", "--model", str(tmp_path / "dino"), "--hook", "encoder.layer.1", "--inputs",
                 str(tmp_path / "imgs"), "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    store, acts, kinds = _rows(tmp_path / "s")
    assert store.kind_counts() == {"cls": 3, "register": 12, "patch": 48}
    assert kinds[:5].tolist() == [TokenKind.CLS] + [TokenKind.REGISTER] * 4
    # the patch-only store never holds a register row
    assert main(["extract", "--model", str(tmp_path / "dino"), "--hook", "encoder.layer.1", "--inputs",
                 str(tmp_path / "imgs"), "--out", str(tmp_path / "p"), "--kinds", "patch", "--no-progress"]) == 0
    _, patch_acts, patch_kinds = _rows(tmp_path / "p")
    assert (patch_kinds == TokenKind.PATCH).all() and torch.equal(patch_acts, acts[kinds == TokenKind.PATCH])
    capsys.readouterr()


def test_llava_dir_jsonl(tiny_llava, tmp_path, capsys):
    model, processor = tiny_llava
    model.save_pretrained(tmp_path / "llava")
    processor.save_pretrained(tmp_path / "llava")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    lines = [{"image": "a.png", "question": "What is this?"}, {"image": "a.png", "question": "Which colour?"}]
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    kind, records = read_inputs(str(tmp_path / "q.jsonl"))
    assert kind == "vlm" and records[0]["image"] == str(tmp_path / "a.png")
    assert main(["extract", "--model", str(tmp_path / "llava"), "--layer", "1", "--inputs", str(tmp_path / "q.jsonl"),
                 "--out", str(tmp_path / "s"), "--kinds", "image,text", "--no-progress"]) == 0
    store, acts, kinds = _rows(tmp_path / "s")
    assert store.hook == "model.language_model.layers.1"
    assert store.kind_counts()["image"] == 32 and set(store.kind_counts()) == {"image", "text"}
    assert store.input_records([1])[1]["question"] == "Which colour?"
    capsys.readouterr()


def test_inputs_files(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    assert read_inputs(str(tmp_path / "t.jsonl")) == ("text", ["a", "b"])
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_inputs(str(tmp_path / "bad.jsonl"))
    (tmp_path / "list.jsonl").write_text('{"text": "a"}\n["a", "list"]\n')
    with pytest.raises(ValueError, match=r"list.jsonl:2 is not a JSON object"):
        read_inputs(str(tmp_path / "list.jsonl"))
    # the audit's JSONL reads through the same reader and names what a record lacks
    (tmp_path / "pairs.jsonl").write_text('{"caption": "a bag", "real": "r.png"}\n')
    with pytest.raises(ValueError, match=r"pairs.jsonl:1: expected an object with 'real' and 'generated'.*\['caption', 'real'\]"):
        read_jsonl(tmp_path / "pairs.jsonl")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no prompts"):
        read_inputs(str(tmp_path / "empty.txt"))
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="expected an image folder"):
        read_inputs(str(tmp_path / "x.csv"))
