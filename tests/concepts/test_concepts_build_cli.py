"""`visionsae concepts build` on the zoo's real text encoder and SAE: it splits every prompt file
by template, fits on one part, calibrates on another and reports recall and false flags on a
test part that chose nothing."""

import json
import re

import pytest

from visionsae.cli import main
from visionsae.concepts import ConceptSet
from visionsae.concepts.split import split_by_skeleton, words_of
from visionsae.zoo import zoo_dir
from visionsae.zoo.prompt_families import SCENES, TEMPLATES, concept_prompts, generic_prompts, near_miss_prompts
from visionsae.zoo.settings import TEXT_SAE_DIR as SAE_DIR

SNEAKER, BAG = 7, 8


def _write(path, prompts):
    path.write_text("\n".join(prompts) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A user's files: the calibrate family's sneaker and bag prompts, generic prompts to keep."""
    tmp = tmp_path_factory.mktemp("build")
    files = {name: [p for kind in ("nouns", "basic_forms", "descriptions", "scenes")
                    for p in concept_prompts(label, "calibrate")[kind]] for name, label in (("sneaker", SNEAKER), ("bag", BAG))}
    keep = generic_prompts("calibrate", 400, seed=3)
    out = tmp / "concepts.json"
    args = ["concepts", "build", "--sae", str(zoo_dir() / SAE_DIR), "--keep", _write(tmp / "keep.txt", keep),
            "--concept", f"sneaker={_write(tmp / 'sneaker.txt', files['sneaker'])}",
            "--concept", f"bag={_write(tmp / 'bag.txt', files['bag'])}",
            "--near-miss", f"sneaker={_write(tmp / 'near.txt', near_miss_prompts(SNEAKER, 'calibrate'))}",
            "--out", str(out)]
    return main(args), out, files, keep


def test_build_reports_out_of_sample_test_figures(built, capsys):
    rc, out, files, keep = built
    assert rc == 0
    cs = ConceptSet.load(out)
    assert cs.score == "linear"
    for name in ("sneaker", "bag"):
        test = cs[name].calibration["test"]
        assert test["split"] == "by template"
        assert test["n_positive"] >= 0.1 * len(files[name]) and test["n_keep"] >= 0.1 * len(keep)
        assert test["recall"] >= 0.8, (name, test)
        # the other concept's test part is a few dozen prompts (one may be a sneaker in a scene with a bag)
        assert test["fpr_keep"] <= 0.02 and test["fpr_other_concepts"] <= 0.2, (name, test)
        assert test["keep_split"].startswith("by prompt")  # generic prompts: one template family holds most
    assert cs["sneaker"].calibration["test"]["fpr_near_misses"] is not None
    assert json.loads(out.read_text())["concepts"]["bag"]["calibration"]["test"]["recall"] >= 0.8


def test_no_template_is_in_two_parts(built):
    """As build splits the sneaker file: each of the family's templates lies in one part only."""
    _, _, files, keep = built
    (fit, cal, test), how = split_by_skeleton(files["sneaker"], (3, 1, 1), 0, "sneaker", frame=words_of(keep + files["bag"]))
    assert how == "by template" and sorted(fit + cal + test) == sorted(set(files["sneaker"]))
    templates = [*TEMPLATES["calibrate"], *SCENES["calibrate"]]
    spread = {}
    for part, prompts in enumerate((fit, cal, test)):
        for p in prompts:
            for t in templates:
                if re.fullmatch(re.escape(t).replace(r"\{\}", ".+"), p, flags=re.I):
                    spread.setdefault(t, set()).add(part)
    assert len(spread) >= 0.9 * len(templates)
    mixed = {t: parts for t, parts in spread.items() if len(parts) > 1}
    assert len(mixed) <= 0.1 * len(spread), mixed  # a template may match prompts of another (a noun phrase's words)


def test_calibrate_refuses_a_linear_set(built, tmp_path, capsys):
    _, out, files, keep = built
    rc = main(["concepts", "calibrate", "--sae", str(zoo_dir() / SAE_DIR), "--concepts", str(out),
               "--heldout", f"sneaker={_write(tmp_path / 's.txt', files['sneaker'])}",
               "--keep-heldout", _write(tmp_path / "k.txt", keep)])
    assert rc == 2 and "linear concept set" in capsys.readouterr().err
