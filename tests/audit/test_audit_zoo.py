"""The real check of the blindspot audit, on a small sample: Fashion-MNIST test images against
the zoo generator's images for the same captions, with a planted suppressed class (sneaker,
answered by the ItD pipeline that erases it), a planted exaggerated class (trouser, drawn
three times per caption) and a planted copy of a real image. The full figures come from
``visionsae eval audit`` (50 images per class); this runs 10 per class."""

import json

import pytest
import torch

from visionsae.eval.audit import evaluate


@pytest.fixture(scope="module")
def zoo_audit(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("eval-audit")
    return out, evaluate(out, per_class=10, stability=False, second_generator=False, progress=False)


def test_planted_classes_rank_top(zoo_audit):
    _, res = zoo_audit
    sup, exa = res["ranks"]["suppressed"], res["ranks"]["exaggerated"]
    # measured at 10 per class: the planted classes own the top concept of both rankings; at 50
    # per class (`visionsae eval audit`) the exaggerated ranking starts with one natural
    # exaggeration of the zoo generator (a pullover / shirt / coat texture), so rank 2 passes
    assert sup["rank_of_first_class_concept"] is not None and sup["rank_of_first_class_concept"] <= 2, sup
    assert sup["top5_share_of_class"] >= 0.6, sup
    assert sup["flagged_of_class"] >= 3  # erased sneakers: several sneaker concepts below delta 0.1
    assert exa["rank_of_first_class_concept"] is not None and exa["rank_of_first_class_concept"] <= 2, exa
    assert exa["top5_share_of_class"] >= 0.6, exa
    assert exa["first_class_concept"]["delta"] > 0.7  # 3x over-generated: delta near 3 / 4


def test_planted_copy_is_flagged_as_memorised(zoo_audit):
    _, res = zoo_audit
    mem = res["memorisation"]
    assert mem["copy_flagged"] and mem["copy_is_top_candidate"] and mem["copy_matched_its_original"], mem
    assert mem["other_flagged"] == 0, mem


def test_report_is_self_contained(zoo_audit):
    out, res = zoo_audit
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "<svg" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    audit = json.loads((out / "audit" / "audit.json").read_text())
    assert audit["config"]["t_low"] == 0.1 and audit["config"]["t_high"] == 0.9
    zoo = audit["concepts"]["zoo"]
    assert len(zoo["delta"]) == res["sae"]["n_latents"] and zoo["suppressed"]
