"""`visionsae attack`: bad input is refused with exit status 2, a small run writes its JSON."""

from __future__ import annotations

import json

import pytest

from visionsae.cli import main


@pytest.mark.parametrize("argv, message", [
    (["--budget", "0"], "--budget must be at least 1"),
    (["--erase", "sock"], "--erase: ['sock'] not in the concept set"),
    (["--prompts", "0"], "--prompts must be at least 1"),
    (["--images-per-prompt", "0"], "--images-per-prompt must be at least 1"),
    (["--sae", "somewhere"], "--sae and --concepts go together"),
])
def test_bad_input_exits_2_naming_the_flag(tmp_path, capsys, argv, message):
    assert main(["attack", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_help_names_the_families_and_budgets(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["attack", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for word in ("text", "whitebox", "concept_vector", "none", "all", "--budget", "--erase", "--seed", "--out", "--sae",
                 "--concepts", "--mode", "--value", "default 60", "default 10", "default 25"):
        assert word in text


def test_small_text_run_writes_the_report(tmp_path, sneaker_target):
    assert main(["attack", "--family", "text", "--budget", "8", "--prompts", "2", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "attack.json").read_text())
    fam = report["families"]["text"]
    assert report["erased"] == ["sneaker"] and report["seed_prompts"] == 2
    assert len(fam["attacks"]) == 2 and fam["queries"] <= 16
    assert set(fam["successful_prompts"]) <= {a["prompt"] for a in fam["attacks"]}
    assert "evaluate" in report["split"]
    assert report["images_per_prompt"] == 1 and set(report["chance"]["per_concept"]) == {"sneaker"}
