"""The bad-input and fault matrix.

Each row is a mistake a user makes, or a fault a machine has, on the surface the user meets it
on: the ``visionsae`` command line (``visionsae.cli.main``, as the console script calls it),
the Python API, or the web app's back end (``visionsae.demos.app_backend``). Every row checks
the promise: a one-line error that names the input and what was expected (exit status 2 on the
command line, a ``UsageError`` in Python, an ``AppError`` in the page), or a refusal, and that
nothing was written or lost (the files a command would touch are compared byte for byte before
and after). Faults the test process cannot make for itself (a read-only folder while running
as root, a disk that fills up) run the command line in a child process that has them.

Keep it up as features are added: a new flag, input or output gets its rows here. Kill-and-resume
of every resumable command is tested next to the command (train: tests/train, extract:
tests/test_store.py, audit: tests/audit/test_audit_kill_resume.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from visionsae.cli import main
from visionsae.errors import UsageError

TESTS = Path(__file__).resolve().parent
TEXT_MODEL = "py:tiny_models:tiny_clip_text_with_tokenizer"  # a tiny CLIP text encoder + the real CLIP tokenizer
TEXT_HOOK = "text_model.encoder.layers.2"
PROMPTS = [f"a photo of a {w}" for w in ("cat", "dog", "red car", "bowl of soup", "wooden chair", "mountain", "boat", "lamp")]
TRAIN = ["train", "--planted", "--d-in", "16", "--n-latents", "32", "--k", "4", "--batch-size", "64", "--total-samples", "640",
         "--log-every", "2", "--checkpoint-every", "4", "--no-progress"]


# ----------------------------------------------------------------------------------- helpers


def snapshot(root: Path) -> dict[str, str] | None:
    """Every file under ``root`` (hidden ones too) -> SHA-256 of its bytes; None if ``root`` is absent."""
    root = Path(root)
    if not root.exists():
        return None
    if root.is_file():
        return {"": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip().splitlines()


def assert_one_line_error(rc: int, err: list[str], pattern: str) -> str:
    """Exit status 2 and one ``visionsae: error: ...`` line matching ``pattern`` (libraries may log
    progress above it, never a traceback)."""
    text = "\n".join(err)
    assert "Traceback" not in text, text
    errors = [line for line in err if line.startswith("visionsae: error: ")]
    assert rc == 2 and len(errors) == 1 and err[-1] == errors[0], text
    assert re.search(pattern, errors[0]), (pattern, errors[0])
    return errors[0]


def _write_image(path: Path, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("matrix")


@pytest.fixture(scope="module")
def finished_run(work) -> Path:
    """A finished `visionsae train --planted` run (its checkpoint, metrics and SAE)."""
    out = work / "run"
    assert main([*TRAIN, "--out-dir", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def sae_dir(finished_run) -> Path:
    return finished_run / "sae"


@pytest.fixture(scope="module")
def regular_file(work) -> Path:
    p = work / "a-file"
    p.write_text("not a folder\n")
    return p


@pytest.fixture(scope="module")
def empty_store(work) -> Path:
    """A finished store whose inputs gave no rows (as `extract --limit 0` used to write), so d_in is unknown."""
    from visionsae.store import ActivationBatch, ShardWriter

    out = work / "empty-store"
    w = ShardWriter(out, source={"test": "empty"}, hook="h", num_inputs=2)
    none = torch.zeros(0, dtype=torch.int64)
    w.add(ActivationBatch(torch.zeros(0, 0), none, none.int(), none.to(torch.uint8)), 2)
    w.close()
    return out


@pytest.fixture(scope="module")
def nan_store(work) -> Path:
    """A finished store of width 16 whose shard 0 row 3 (input 1) holds a NaN."""
    from visionsae.store import ActivationBatch, ShardWriter

    out = work / "nan-store"
    w = ShardWriter(out, source={"test": "nan"}, hook="h", num_inputs=4, shard_rows=8)
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        acts = torch.randn(3, 16, generator=g)
        if i == 1:
            acts[0, 5] = float("nan")
        w.add(ActivationBatch(acts, torch.full((3,), i), torch.arange(3, dtype=torch.int32), torch.zeros(3, dtype=torch.uint8)), i + 1)
    w.close()
    return out


@pytest.fixture(scope="module")
def prompts_file(work) -> Path:
    p = work / "prompts.txt"
    p.write_text("\n".join(PROMPTS) + "\n")
    return p


@pytest.fixture(scope="module")
def image_dir(work) -> Path:
    d = work / "images"
    d.mkdir()
    _write_image(d / "a.png", 0)
    return d


# ------------------------------------------------------------------------------- command line
# (row id, arguments after the command, expected error) for `visionsae train` into a fresh out-dir:
# refused before anything is written (the out-dir is not even created).
TRAIN_ROWS = [
    ("grad-clip-zero", ["--grad-clip", "0"], r"--grad-clip must be a positive number, or None for no clipping, got 0"),
    ("grad-clip-negative", ["--grad-clip", "-1"], r"--grad-clip must be a positive number.*got -1"),
    ("min-lr-ratio-negative", ["--min-lr-ratio", "-5"], r"--min-lr-ratio must be in \[0, 1\].*got -5"),
    ("min-lr-ratio-above-one", ["--min-lr-ratio", "2"], r"--min-lr-ratio must be in \[0, 1\]"),
    ("aux-coefficient-negative", ["--aux-coefficient", "-1"], r"--aux-coefficient must be >= 0, got -1"),
    ("checkpoint-every-negative", ["--checkpoint-every", "-1"], r"--checkpoint-every must be >= 0 \(0: only at the end\), got -1"),
    ("log-every-zero", ["--log-every", "0"], r"--log-every must be a positive integer, got 0"),
    ("warmup-negative", ["--warmup-steps", "-3"], r"--warmup-steps must be >= 0, got -3"),
    ("beta-one", ["--beta1", "1"], r"--beta1 must be in \[0, 1\)"),
    ("lr-nan", ["--lr", "nan"], r"--lr must be a finite number, got nan"),
    ("lr-negative", ["--lr", "-0.1"], r"--lr must be a positive number"),
    ("seed-negative", ["--seed", "-1"], r"--seed must be in \[0, 2\*\*64\), got -1"),
    ("seed-too-big", ["--seed", str(2**70)], r"--seed must be in \[0, 2\*\*64\)"),
    ("aux-k-zero", ["--aux-k", "0"], r"--aux-k must be a positive integer"),
    ("b-dec-init-unknown", ["--b-dec-init", "median"], r"unknown b_dec_init 'median'; expected one of geometric_median, mean, zeros"),
    ("resume-and-overwrite", ["--resume", "--overwrite"], r"resume and overwrite exclude each other"),
    ("d-in-zero", ["--d-in", "0"], r"--d-in must be a positive integer, got 0"),
    ("batch-size-zero", ["--batch-size", "0"], r"--batch-size must be positive, got 0"),
    ("k-above-n-latents", ["--k", "64"], r"k=64 is larger than n_latents=32"),
    ("l1-negative", ["--sparsity", "relu", "--l1-coefficient", "-1"], r"--l1-coefficient must be >= 0, got -1"),
    ("jumprelu-threshold-zero", ["--sparsity", "jumprelu", "--jumprelu-threshold", "0"], r"--jumprelu-threshold must be > 0"),
]


@pytest.mark.parametrize("row,args,expected", TRAIN_ROWS, ids=[r[0] for r in TRAIN_ROWS])
def test_train_refuses_bad_settings_before_writing(row, args, expected, tmp_path, capsys):
    out = tmp_path / "run"
    rc, err = cli([*TRAIN, "--out-dir", out, *args], capsys)
    assert_one_line_error(rc, err, expected)
    assert not out.exists()


# against a finished run: each is refused and leaves the run byte for byte as it was
RESUME_ROWS = [
    ("rerun-without-resume", [], r"holds an earlier run \(checkpoint.safetensors, train_cfg.json, metrics.jsonl, sae/\); "
                                 r"pass --resume .* --overwrite"),
    ("resume-other-seed", ["--resume", "--seed", "1"], r"cannot resume: .*checkpoint.safetensors was written with seed=0, this run has seed=1"),
    ("resume-other-total", ["--resume", "--total-samples", "1280"], r"written with total_samples=640, this run has total_samples=1280"),
    ("resume-other-batch-size", ["--resume", "--batch-size", "32"], r"written at 64 rows per step .* this run has 32"),
    ("resume-other-lr", ["--resume", "--lr", "0.5"], r"written with lr=None, this run has lr=0.5"),
    ("resume-other-sae", ["--resume", "--k", "8"], r"written for a different SAE config \(differs in k: k=4 there, 8 now\)"),
]


@pytest.mark.parametrize("row,args,expected", RESUME_ROWS, ids=[r[0] for r in RESUME_ROWS])
def test_train_never_overwrites_or_mixes_an_earlier_run(row, args, expected, finished_run, capsys):
    before = snapshot(finished_run)
    rc, err = cli([*TRAIN, "--out-dir", finished_run, *args], capsys)
    assert_one_line_error(rc, err, expected)
    assert snapshot(finished_run) == before


def test_train_out_dir_under_a_regular_file(regular_file, tmp_path, capsys):
    rc, err = cli([*TRAIN, "--out-dir", regular_file / "run"], capsys)
    assert_one_line_error(rc, err, rf"out_dir {re.escape(str(regular_file))}/run cannot be created: .*a-file is a regular file")
    rc, err = cli([*TRAIN, "--out-dir", regular_file], capsys)
    assert_one_line_error(rc, err, r"out_dir .*a-file is a regular file, not a directory")
    assert regular_file.read_text() == "not a folder\n"


def test_train_on_a_store_with_nan_names_the_shard_and_row(nan_store, tmp_path, capsys):
    before = snapshot(nan_store)
    out = tmp_path / "run"
    rc, err = cli(["train", "--store", nan_store, "--n-latents", "32", "--k", "4", "--batch-size", "12",
                   "--total-samples", "48", "--out-dir", out, "--no-progress"], capsys)
    assert_one_line_error(rc, err, r"holds NaN or Inf in 1 rows: shard 'shard-00-00000' row 3 \(input 1\); training "
                                   r"stopped at step 0, before any update")
    assert not (out / "checkpoint.safetensors").exists() and not (out / "sae").exists()
    assert snapshot(nan_store) == before


def test_train_and_inspect_on_a_store_without_rows(empty_store, sae_dir, tmp_path, capsys):
    rc, err = cli(["train", "--store", empty_store, "--n-latents", "32", "--out-dir", tmp_path / "run"], capsys)
    assert_one_line_error(rc, err, r"the store at .*empty-store holds no rows, so its width \(d_in\) is unknown")
    assert not (tmp_path / "run").exists()
    rc, err = cli(["inspect", sae_dir, "--store", empty_store, "--no-progress"], capsys)
    assert_one_line_error(rc, err, r"holds no rows")


# `visionsae extract` on the tiny CLIP text encoder: each refused before a store is written
def _extract(prompts, out, *more):
    return ["extract", "--model", TEXT_MODEL, "--hook", TEXT_HOOK, "--inputs", prompts, "--out", out, "--no-progress",
            "--batch-size", "4", "--shard-rows", "40", *more]


EXTRACT_ROWS = [
    ("limit-negative", ["--limit", "-5"], r"--limit must be a positive integer, got -5"),
    ("limit-zero", ["--limit", "0"], r"--limit must be a positive integer, got 0"),
    ("batch-size-zero", ["--batch-size", "0"], r"--batch-size must be a positive integer, got 0"),
    ("shard-rows-zero", ["--shard-rows", "0"], r"--shard-rows must be a positive integer, got 0"),
]


@pytest.mark.parametrize("row,args,expected", EXTRACT_ROWS, ids=[r[0] for r in EXTRACT_ROWS])
def test_extract_refuses_bad_flags(row, args, expected, prompts_file, tmp_path, capsys):
    out = tmp_path / "store"
    rc, err = cli(_extract(prompts_file, out, *args), capsys)
    assert_one_line_error(rc, err, expected)
    assert not out.exists()


def test_extract_out_under_a_regular_file(prompts_file, regular_file, capsys):
    rc, err = cli(_extract(prompts_file, regular_file / "store"), capsys)
    assert_one_line_error(rc, err, r"--out .*a-file/store cannot be created: .*a-file is a regular file")


def test_extract_prompt_file_with_bytes_that_are_not_utf8(tmp_path, capsys):
    bad = tmp_path / "prompts.txt"
    bad.write_bytes(b"a photo of a cat\na photo of a dog\na caf\xe9 at night\n")
    rc, err = cli(_extract(bad, tmp_path / "store"), capsys)
    assert_one_line_error(rc, err, r"prompts.txt:3: byte 0xe9 at column 6 is not UTF-8 text")
    assert not (tmp_path / "store").exists()


def test_extract_resume_with_inputs_edited_in_place_is_refused(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "store"
    rc, err = cli(_extract(prompts, out), capsys)
    assert rc == 0, err
    before = snapshot(out)
    edited = PROMPTS[:3] + ["a photo of a horse"] + PROMPTS[4:]  # same number of lines
    prompts.write_text("\n".join(edited) + "\n")
    rc, err = cli(_extract(prompts, out), capsys)
    assert_one_line_error(rc, err, r"holds an extraction of other inputs: its shard 'shard-00-00000' covers inputs 0 to 3, "
                                   r"whose fingerprint was [0-9a-f]{16}, and these give [0-9a-f]{16} \(same count, "
                                   r"different content\); resuming would mix the two")
    assert snapshot(out) == before
    rc, err = cli(_extract(prompts, out, "--overwrite"), capsys)  # asked for: the store is made afresh
    assert rc == 0, err
    from visionsae.store import ActivationStore

    store = ActivationStore.open(out)
    texts = [r["text"] for i in range(store.num_shards) for r in store.records(i)]
    assert texts == edited


def test_extract_api_resume_after_a_crash_with_other_inputs_is_refused(tmp_path):
    """A run stopped half way (bad input 5): resumed with input 2 (already extracted) edited, it is
    refused and its shards kept; resumed with input 5 fixed, it finishes."""
    from visionsae.sources import extract
    from visionsae.sources.text import TextEncoderSource
    from visionsae.store import ActivationStore

    from tiny_models import tiny_clip_text_with_tokenizer

    model, tok = tiny_clip_text_with_tokenizer()
    source = TextEncoderSource(model, tok, TEXT_HOOK)
    out = tmp_path / "store"
    broken = PROMPTS[:5] + [None] + PROMPTS[6:]
    with pytest.raises(UsageError, match="input 5 is a NoneType, expected a prompt string"):
        extract(source, broken, out, batch_size=4, shard_rows=40, progress=False)
    assert ActivationStore.open(out, allow_incomplete=True).num_shards == 1  # inputs 0-3 kept
    before = snapshot(out)
    edited = PROMPTS[:2] + ["a photo of a horse"] + PROMPTS[3:]
    with pytest.raises(UsageError, match="its shard 'shard-00-00000' covers inputs 0 to 3, whose fingerprint"):
        extract(source, edited, out, batch_size=4, shard_rows=40, progress=False)
    assert snapshot(out) == before
    extract(source, PROMPTS, out, batch_size=4, shard_rows=40, progress=False)  # input 5 fixed: resumes
    store = ActivationStore.open(out)
    assert store.manifest["complete"] and [r["text"] for r in store.records(0) + store.records(1)] == PROMPTS


def test_extract_where_no_input_gives_a_row(tmp_path, capsys):
    """Every image unreadable and skipped: exit 2 naming why the store is empty, and a store that
    says so when it is opened for training."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "store"
    rc, err = cli(["extract", "--model", "timm:test_resnet", "--hook", "layer1", "--inputs", images, "--out", out,
                   "--skip-unreadable", "--no-progress"], capsys)
    assert_one_line_error(rc, err, r"no input gave an activation row \(1 of 1 skipped as unreadable\): the store at .* is empty")
    rc, err = cli(["train", "--store", out, "--n-latents", "32", "--out-dir", tmp_path / "run"], capsys)
    assert_one_line_error(rc, err, r"holds no rows, so its width \(d_in\) is unknown: no input of its extraction gave an "
                                   r"activation row \(1 were skipped as unreadable\)")


def test_train_on_a_store_with_an_unknown_token_kind(nan_store, tmp_path, capsys):
    rc, err = cli(["train", "--store", nan_store, "--kinds", "patch,word", "--n-latents", "32", "--out-dir", tmp_path / "run"],
                  capsys)
    assert_one_line_error(rc, err, r"unknown token kind 'word'; expected some of: patch, cls")
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def weights_files(work) -> dict[str, Path]:
    """A text file, a missing path, and a pickle that would run code when unpickled."""
    text = work / "weights.txt"
    text.write_text("these are not weights\n")
    sentinel = work / "pickle-ran"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    evil = work / "evil.pth"
    torch.save({"weight": RunsCode()}, evil)
    return {"text": text, "missing": work / "nope.pth", "pickle": evil, "sentinel": sentinel}


WEIGHTS_ROWS = [
    ("weights-text-file", "text", r"cannot load --weights .*weights.txt for timm:test_resnet: \w+Error"),
    ("weights-missing", "missing", r"--weights .*nope.pth: no such file"),
    ("weights-pickle-that-runs-code", "pickle", r"cannot load --weights .*evil.pth for timm:test_resnet: .*weights_only"),
]


@pytest.mark.parametrize("row,which,expected", WEIGHTS_ROWS, ids=[r[0] for r in WEIGHTS_ROWS])
def test_extract_bad_weights_files(row, which, expected, weights_files, image_dir, tmp_path, capsys):
    out = tmp_path / "store"
    rc, err = cli(["extract", "--model", "timm:test_resnet", "--weights", weights_files[which], "--hook", "layer1",
                   "--inputs", image_dir, "--out", out, "--no-progress"], capsys)
    assert_one_line_error(rc, err, expected)
    assert not out.exists() and not weights_files["sentinel"].exists()


# `visionsae inspect` of SAE directories that are broken in the ways users break them
def _broken_sae(src: Path, dst: Path, how: str) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "cfg.json").read_text())
    if how == "no-n-latents":
        del cfg["n_latents"]
    elif how == "format-version-string":
        cfg["format_version"] = "2"
    elif how == "k-string":
        cfg["k"] = "4"
    elif how == "is-a-number":
        cfg = 123
    if how == "not-json":
        (dst / "cfg.json").write_text("{ d_in: 16,")
    elif how == "nan-weights":
        from safetensors.torch import load_file, save_file

        t = load_file(str(dst / "sae.safetensors"))
        t["W_dec"][2, 3] = float("nan")
        save_file(t, str(dst / "sae.safetensors"), metadata={"format_version": "1"})
    else:
        (dst / "cfg.json").write_text(json.dumps(cfg))
    return dst


SAE_ROWS = [
    ("cfg-without-n-latents", "no-n-latents", r"cfg.json: SAEConfig fields \['n_latents'\] are missing"),
    ("cfg-format-version-string", "format-version-string", r"cfg.json: format_version must be a positive integer, got '2'"),
    ("cfg-holds-a-number", "is-a-number", r"cfg.json holds a JSON int; expected an object of SAE settings"),
    ("cfg-field-of-wrong-type", "k-string", r"cfg.json: SAEConfig.k must be int, got '4' \(str\)"),
    ("cfg-not-json", "not-json", r"cfg.json is not valid JSON"),
    ("weights-with-nan", "nan-weights", r"sae.safetensors: tensor 'W_dec' holds NaN or Inf in 1 of 512 values"),
]


@pytest.mark.parametrize("row,how,expected", SAE_ROWS, ids=[r[0] for r in SAE_ROWS])
def test_inspect_and_load_broken_sae_dirs(row, how, expected, sae_dir, tmp_path, capsys):
    from visionsae.sae import SparseAutoencoder

    broken = _broken_sae(sae_dir, tmp_path / "sae", how)
    before = snapshot(broken)
    rc, err = cli(["inspect", broken], capsys)
    assert_one_line_error(rc, err, expected)
    with pytest.raises(UsageError, match=expected):  # the Python API says the same
        SparseAutoencoder.from_pretrained(broken)
    assert snapshot(broken) == before


def test_inspect_names_a_missing_local_path(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    rc, err = cli(["inspect", "runs/does_not_exist"], capsys)
    assert_one_line_error(rc, err, r"no SAE directory at 'runs/does_not_exist' \(expected a directory holding cfg.json")
    # where the first part is no local folder either, it may be a hub id; offline, both are named
    rc, err = cli(["inspect", "nobody-here/no-such-sae"], capsys)
    assert_one_line_error(rc, err, r"no SAE directory at 'nobody-here/no-such-sae' \(no such local path\), and no Hugging "
                                   r"Face repo 'nobody-here/no-such-sae' could be fetched")


def test_inspect_out_under_a_regular_file(sae_dir, regular_file, capsys):
    rc, err = cli(["inspect", sae_dir, "--out", regular_file / "report"], capsys)
    assert_one_line_error(rc, err, r"--out .*a-file/report cannot be created")


# `visionsae erase` on the zoo: refused before the pipeline is loaded, nothing written
ERASE_ROWS = [
    ("steps-zero", ["--steps", "0"], r"--steps must be >= 1, got 0"),
    ("steps-negative", ["--steps", "-3"], r"--steps must be >= 1, got -3"),
    ("value-nan", ["--value", "nan"], r"--value must be a finite negative factor for --mode scale .* got nan"),
    ("value-inf", ["--value=-inf"], r"--value must be a finite negative factor .* got -inf"),
    ("value-positive", ["--value", "3"], r"--value must be a finite negative factor .* got 3"),
    ("value-zero", ["--value", "0"], r"--value must be a finite negative factor .*0 is --mode zero\), got 0"),
    ("zero-mode-with-value", ["--mode", "zero", "--value=-2"], r"--value -2 is the factor of --mode scale; --mode zero takes none"),
    ("guidance-nan", ["--guidance-scale", "nan"], r"--guidance-scale must be a finite number, got nan"),
    ("seed-too-big", ["--seed", str(2**70)], r"--seed must be in \[0, 2\*\*64 - 1\] .* got 1180591620717411303424"),
    ("seed-negative", ["--seed", "-1"], r"--seed must be in \[0, 2\*\*64 - 1\]"),
    ("prompt-not-utf8", ["--prompt", os.fsdecode(b"a \xff sneaker")], r"--prompt 2 holds byte 0xff at character 3, which is not valid UTF-8"),
    ("prompt-empty", ["--prompt", "  "], r"--prompt 2 is empty"),
    ("erase-empty-name", ["--erase", "sneaker,"], r"--erase 'sneaker,': expected comma-separated concept names"),
]


@pytest.mark.parametrize("row,args,expected", ERASE_ROWS, ids=[r[0] for r in ERASE_ROWS])
def test_erase_refuses_bad_flags_before_loading(row, args, expected, tmp_path, capsys):
    out = tmp_path / "erase"
    rc, err = cli(["erase", "--prompt", "a photo of a sneaker", "--out", out, *args], capsys)
    assert_one_line_error(rc, err, expected)
    assert not out.exists()


def test_erase_out_under_a_regular_file(regular_file, capsys):
    rc, err = cli(["erase", "--prompt", "a photo of a sneaker", "--out", regular_file / "x"], capsys)
    assert_one_line_error(rc, err, r"--out .*a-file/x cannot be created")


def test_erase_help_gives_the_zoo_default_strength(capsys):
    from visionsae.zoo.settings import ERASE_VALUE

    with pytest.raises(SystemExit):
        main(["erase", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default for the zoo: {ERASE_VALUE:g})" in text and f"scale by {ERASE_VALUE:g}" in text
    assert "-6" not in text


@pytest.fixture(scope="module")
def zoo_concepts_out_of_range(work) -> Path:
    """The zoo's concept set with sneaker's first feature id moved past the SAE's last latent."""
    from visionsae.zoo import zoo_dir
    from visionsae.zoo.settings import TEXT_SAE_DIR as SAE_DIR

    raw = json.loads((zoo_dir() / SAE_DIR / "concepts.json").read_text())
    raw["concepts"]["sneaker"]["features"][0] = raw["n_latents"] + 5
    p = work / "concepts-out-of-range.json"
    p.write_text(json.dumps(raw))
    return p


def test_erase_with_concept_features_outside_the_sae(zoo_concepts_out_of_range, tmp_path, capsys):
    out = tmp_path / "erase"
    rc, err = cli(["erase", "--prompt", "a photo of a sneaker", "--concepts", zoo_concepts_out_of_range, "--steps", "1",
                   "--out", out], capsys)
    assert_one_line_error(rc, err, r"concept 'sneaker' has features \[\d+\] outside the SAE's latents 0 to \d+")
    assert not out.exists()


def test_erase_whose_edit_gives_a_nan_image_writes_nothing(tmp_path, capsys):
    out = tmp_path / "erase"
    rc, err = cli(["erase", "--prompt", "a photo of a sneaker", "--prompt", "a photo of a bag", "--value=-1e30",
                   "--steps", "1", "--out", out], capsys)
    assert_one_line_error(rc, err, r"the erased image of --prompt 1 holds NaN or Inf \(the edit scale -1e\+30 drove the "
                                   r"text embedding out of range; use a smaller factor\); nothing was written")
    assert not out.exists()


def test_concepts_build_checks_its_output_and_prompt_files(sae_dir, regular_file, tmp_path, capsys):
    from visionsae.zoo import zoo_dir
    from visionsae.zoo.settings import TEXT_SAE_DIR as SAE_DIR

    good = tmp_path / "sneaker.txt"
    good.write_text("\n".join(f"a photo of a sneaker {i}" for i in range(8)))
    bad = tmp_path / "keep.txt"
    bad.write_bytes(b"a bowl of soup\n\x80\x81 garbage\n")
    sae = zoo_dir() / SAE_DIR
    rc, err = cli(["concepts", "build", "--sae", sae, "--concept", f"sneaker={good}", "--keep", good,
                   "--out", regular_file / "c.json"], capsys)
    assert_one_line_error(rc, err, r"--out .*a-file/c.json cannot be created: .*a-file is a regular file")
    out = tmp_path / "c.json"
    rc, err = cli(["concepts", "build", "--sae", sae, "--concept", f"sneaker={good}", "--keep", bad, "--out", out], capsys)
    assert_one_line_error(rc, err, r"keep.txt:2: byte 0x80 at column 1 is not UTF-8 text")
    assert not out.exists()


def test_demo_out_dir_under_a_regular_file(regular_file, capsys):
    for extra in ([], ["--planted"]):
        rc, err = cli(["demo", "--out-dir", regular_file / "demo", *extra], capsys)
        assert_one_line_error(rc, err, r"--out-dir .*a-file/demo cannot be created")


# ------------------------------------------------------------------------------------ Python API
API_TRAIN_CONFIG_ROWS = [
    (dict(grad_clip=0.0), r"TrainConfig.grad_clip must be a positive number"),
    (dict(grad_clip=-1.0), r"TrainConfig.grad_clip must be a positive number"),
    (dict(min_lr_ratio=-5.0), r"TrainConfig.min_lr_ratio must be in \[0, 1\]"),
    (dict(aux_coefficient=-1.0), r"TrainConfig.aux_coefficient must be >= 0"),
    (dict(checkpoint_every=-1), r"TrainConfig.checkpoint_every must be >= 0"),
    (dict(log_every=0), r"TrainConfig.log_every must be a positive integer"),
    (dict(total_samples=0), r"TrainConfig.total_samples must be a positive integer"),
    (dict(total_samples=1e6), r"TrainConfig.total_samples must be int, got 1000000.0 \(float\)"),
    (dict(lr="fast"), r"TrainConfig.lr must be float or None, got 'fast'"),
    (dict(seed=2**64), r"TrainConfig.seed must be in \[0, 2\*\*64\)"),
    (dict(resume="yes"), r"TrainConfig.resume must be bool, got 'yes'"),
    (dict(resume=True, overwrite=True), r"resume and overwrite exclude each other"),
    (dict(schedule="linear"), r"unknown schedule 'linear'"),
]


@pytest.mark.parametrize("kwargs,expected", API_TRAIN_CONFIG_ROWS, ids=[next(iter(r[0])) + "-" + str(i) for i, r in enumerate(API_TRAIN_CONFIG_ROWS)])
def test_api_train_config_validates_every_field(kwargs, expected):
    from visionsae.train import TrainConfig

    with pytest.raises(UsageError, match=expected):
        TrainConfig(**kwargs)


API_SAE_CONFIG_ROWS = [
    (dict(d_in=0), r"SAEConfig.d_in must be a positive integer"),
    (dict(d_in=16.0), r"SAEConfig.d_in must be int, got 16.0"),
    (dict(k=True), r"SAEConfig.k must be int, got True \(bool\)"),
    (dict(l1_coefficient=float("nan")), r"SAEConfig.l1_coefficient must be a finite number, got nan"),
    (dict(hook=3), r"SAEConfig.hook must be str or None, got 3"),
    (dict(extra=[]), r"SAEConfig.extra must be dict, got \[\]"),
    (dict(jumprelu_bandwidth=0.0), r"SAEConfig.jumprelu_bandwidth must be > 0"),
]


@pytest.mark.parametrize("kwargs,expected", API_SAE_CONFIG_ROWS, ids=[next(iter(r[0])) for r in API_SAE_CONFIG_ROWS])
def test_api_sae_config_validates_types(kwargs, expected):
    from visionsae.sae import SAEConfig

    with pytest.raises(UsageError, match=expected):
        SAEConfig(**{"d_in": 16, "n_latents": 32, "k": 4, **kwargs})


def test_api_train_sae_refuses_an_earlier_run_and_overwrite_replaces_it(finished_run, tmp_path):
    from visionsae.planted import PlantedConfig, PlantedData
    from visionsae.sae import SAEConfig
    from visionsae.train import TrainConfig, train_sae

    before = snapshot(finished_run)
    cfg = SAEConfig(d_in=16, n_latents=32, k=4)
    data = PlantedData(PlantedConfig(d_in=16))
    with pytest.raises(UsageError, match=r"holds an earlier run .*\(resume=True\).*\(overwrite=True\)"):
        train_sae(cfg, TrainConfig(out_dir=str(finished_run), total_samples=640, progress=False), data.batches(64))
    assert snapshot(finished_run) == before
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    train_sae(cfg, TrainConfig(out_dir=str(copy), total_samples=256, log_every=2, progress=False, overwrite=True),
              data.batches(64))
    steps = [json.loads(line)["step"] for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4]  # the new run's lines only
    assert json.loads((copy / "train_cfg.json").read_text())["total_samples"] == 256


def test_api_short_iterator_warns_and_logs_its_steps(tmp_path):
    from visionsae.planted import PlantedConfig, PlantedData
    from visionsae.sae import SAEConfig
    from visionsae.train import TrainConfig, train_sae
    from visionsae.train.trainer import ShortDataWarning

    data = PlantedData(PlantedConfig(d_in=16))
    three = (data.batch(i, 64) for i in range(3))
    cfg = TrainConfig(out_dir=str(tmp_path), total_samples=100 * 64, log_every=50, progress=False)
    with pytest.warns(ShortDataWarning, match=r"the batches ran out after 3 of 100 steps \(192 of 6400 samples\)"):
        train_sae(SAEConfig(d_in=16, n_latents=32, k=4), cfg, three)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [3] and lines[0]["samples"] == 192
    assert json.loads((tmp_path / "train_cfg.json").read_text())["resolved"]["steps"] == 3


def test_api_saved_checkpoints_are_readable_by_others(finished_run):
    # the fixture's run was written under the test process's umask
    mask = os.umask(0)
    os.umask(mask)
    for name in ("checkpoint.safetensors", "sae/sae.safetensors", "sae/cfg.json", "metrics.jsonl", "train_cfg.json"):
        assert (finished_run / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_api_store_read_shard_out_of_range(nan_store):
    from visionsae.store import ActivationStore, StoreError

    store = ActivationStore.open(nan_store)
    with pytest.raises(StoreError, match=r"no shard 99 in the store at .*nan-store: it has 2 shards \(0 to 1\)"):
        store.read_shard(99)
    with pytest.raises(StoreError, match=r"no shard -1"):
        store.records(-1)


def test_api_concept_set_with_features_outside_the_sae(sae_dir):
    from visionsae.concepts import Concept, ConceptSet, sae_fingerprint
    from visionsae.sae import SparseAutoencoder

    sae = SparseAutoencoder.from_pretrained(sae_dir)
    cs = ConceptSet("h", sae_fingerprint(sae), 32, {"x": Concept("x", [3, 40], [1.0, 1.0], 0.1)})
    with pytest.raises(UsageError, match=r"concept 'x' has features \[40\] outside the SAE's latents 0 to 31"):
        cs.check_sae(sae)
    cs.concepts["x"] = Concept("x", [3], [1.0], 0.1, edit_features=[3, -1])
    with pytest.raises(UsageError, match=r"concept 'x' has edit_features \[-1\]"):
        cs.check_sae(sae)


@pytest.fixture(scope="module")
def zoo_pipe():
    from visionsae.zoo import load_fashion_pipeline

    torch.set_num_threads(1)
    return load_fashion_pipeline()


def test_api_wrap_with_no_concepts_and_a_nan_edit(zoo_pipe):
    from visionsae.control.edit import EditSpec
    from visionsae.pipelines.itd import ItDStableDiffusionPipeline
    from visionsae.zoo import zoo_dir
    from visionsae.zoo.settings import TEXT_SAE_DIR as SAE_DIR

    sae = zoo_dir() / SAE_DIR
    with pytest.raises(UsageError, match=r"no concept given: pass the names of concepts of the set \(or None for all"):
        ItDStableDiffusionPipeline.wrap(zoo_pipe, sae, sae / "concepts.json", [])
    with pytest.raises(UsageError, match=r"the edit's value must be a finite number, got nan"):
        EditSpec([1, 2], mode="scale", value=float("nan"))


# --------------------------------------------------------------------------------- app back end


@pytest.fixture(scope="module")
def eraser(zoo_pipe):
    from visionsae.demos.app_backend import Eraser

    return Eraser.zoo()


APP_ROWS = [
    ("value-minus-inf", dict(value=float("-inf")), r"The strength of 'scale' must be a finite negative factor .* got -inf"),
    ("value-nan", dict(value=float("nan")), r"must be a finite negative factor .* got nan"),
    ("value-positive", dict(value=3), r"must be a finite negative factor .* got 3"),
    ("value-text", dict(value="strong"), r"The strength must be a number, got 'strong'"),
    ("seed-too-big", dict(seed=2**70), r"The seed must be between 0 and 2\*\*64 - 1, got 1180591620717411303424"),
    ("seed-negative", dict(seed=-4), r"The seed must be between 0 and 2\*\*64 - 1, got -4"),
    ("seed-fraction", dict(seed=2.5), r"The seed must be a whole number, got 2.5"),
    ("seed-text", dict(seed="abc"), r"The seed must be a whole number, got 'abc'"),
    ("steps-zero", dict(steps=0), r"Steps must be between 1 and 200, got 0"),
    ("steps-huge", dict(steps=10_000), r"Steps must be between 1 and 200, got 10000"),
    ("prompt-lone-surrogate", dict(prompt="a photo of a \udcff sneaker"),
     r"The prompt holds byte 0xff at character 14, which is not valid UTF-8 text"),
    ("prompt-empty", dict(prompt="   "), r"The prompt is empty"),
    ("unknown-concept", dict(names=["unicorn"]), r"Unknown concept 'unicorn'"),
    ("nan-image", dict(value=-1e30, steps=1), r"The erased image came out as NaN: scaling the features by -1e\+30 drove "
                                             r"the text embedding out of range"),
]


@pytest.mark.parametrize("row,kwargs,expected", APP_ROWS, ids=[r[0] for r in APP_ROWS])
def test_app_erase_bad_input_is_a_message(row, kwargs, expected, eraser):
    from visionsae.demos.app_backend import AppError, error_text

    call = {"prompt": "a photo of a sneaker", "names": ["sneaker"], "mode": "scale", **kwargs}
    with pytest.raises(AppError, match=expected) as exc:
        eraser.erase(**call)
    assert "\n" not in str(exc.value) and error_text(exc.value).startswith("**Error:**")


def test_app_reads_16_bit_png_uploads_as_the_package_does(tmp_path):
    from PIL import Image
    from skimage import data

    from visionsae.demos.app_backend import AppError
    from visionsae.demos.app_vqa import Asker
    from visionsae.sources.image import load_image

    path = tmp_path / "camera16.png"
    Image.fromarray(data.camera().astype(np.uint16) * 257).save(path)
    got = np.asarray(Asker().read_image(str(path), None))
    assert got.shape == (512, 512, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.asarray(load_image(path)))
    np.testing.assert_array_equal(got[..., 0], data.camera())  # 16-bit levels / 257 are the 8-bit ones
    assert (got == 255).mean() < 0.01  # PIL's convert("RGB") made 99.5% of them white
    (tmp_path / "not.png").write_bytes(b"\x89PNG not an image")
    with pytest.raises(AppError, match=r"Could not read 'not.png' as an image"):
        Asker().read_image(str(tmp_path / "not.png"), None)


# ------------------------------------------------------------- faults made in a child process
CHILD = r"""
import contextlib, io, json, sys
from visionsae.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    out.append({"rc": rc, "err": err.getvalue().strip().splitlines()})
print(json.dumps(out))
"""


def _run_child(cases: list[list[str]], preexec, cwd: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps([[str(a) for a in c] for c in cases])],
                          capture_output=True, text=True, timeout=600, preexec_fn=preexec, env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _without_root_override():
    """In the child: give up root's right to write where the permissions say no (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH leave the bounding set, so the program it runs lacks them)."""
    if os.geteuid() == 0:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2):
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_read_only_output_folders(sae_dir, prompts_file, tmp_path):
    ro = tmp_path / "read-only"
    ro.mkdir()
    (ro / "earlier.txt").write_text("kept\n")
    ro.chmod(0o555)
    from visionsae.zoo import zoo_dir
    from visionsae.zoo.settings import TEXT_SAE_DIR as SAE_DIR

    cases = {
        "train": [*TRAIN, "--out-dir", ro / "run"],
        "extract": _extract(prompts_file, ro / "store"),
        "concepts build": ["concepts", "build", "--sae", zoo_dir() / SAE_DIR, "--concept", f"sneaker={prompts_file}",
                           "--keep", prompts_file, "--out", ro / "c.json"],
        "demo": ["demo", "--out-dir", ro / "demo"],
        "inspect": ["inspect", sae_dir, "--out", ro / "report"],
        "erase": ["erase", "--prompt", "a photo of a sneaker", "--out", ro / "erase"],
    }
    try:
        results = _run_child(list(cases.values()), _without_root_override, tmp_path)
    finally:
        ro.chmod(0o755)
    for name, r in zip(cases, results):
        assert_one_line_error(r["rc"], r["err"], rf"cannot write to .* {re.escape(str(ro))}/\S+: Permission denied")
    assert sorted(p.name for p in ro.iterdir()) == ["earlier.txt"]


def _file_size_limit(limit: int):
    def apply():
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_mid_write_leaves_no_partial_file(prompts_file, tmp_path):
    """The process may write files of at most 8 KiB (as a disk that fills up): the first write
    past it fails half way; the command says which file, and leaves no partial file."""
    run, store = tmp_path / "run", tmp_path / "store"
    cases = [
        ["train", "--planted", "--d-in", "32", "--n-latents", "128", "--k", "4", "--batch-size", "64", "--total-samples",
         "640", "--checkpoint-every", "4", "--no-progress", "--out-dir", run],
        _extract(prompts_file, store, "--shard-rows", "400"),
    ]
    train, extract = _run_child(cases, _file_size_limit(8192), tmp_path)
    assert_one_line_error(train["rc"], train["err"], rf"cannot write {re.escape(str(run))}/checkpoint.safetensors: the "
                                                     r"file is larger than this process may write")
    assert_one_line_error(extract["rc"], extract["err"], rf"cannot write {re.escape(str(store))}/shard-00-00000\.\S+: the "
                                                         r"file is larger than this process may write")
    assert not (run / "checkpoint.safetensors").exists() and not (run / "sae").exists()
    leftovers = [p.name for d in (run, store) for p in d.iterdir() if ".tmp" in p.name or p.name.startswith(".")]
    assert leftovers == []
    assert not list(store.glob("shard-*.safetensors"))
