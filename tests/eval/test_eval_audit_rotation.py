"""The plants of `visionsae eval audit`'s rotation, built from a pool of images, and the
summary of their ranks (the generator and the audit themselves run in tests/audit)."""

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from visionsae.audit.inputs import read_jsonl
from visionsae.eval.audit import _summary, owners, plant_rank, plant_records


def _pool(tmp_path, classes=("ankle boot", "bag", "coat"), per_class=2, factor=3):
    recs = []
    for c in classes:
        for j in range(per_class):
            key = f"{c}-{j}"
            paths = []
            for what in ["real"] + [f"zoo-{r}" for r in range(factor)] + ["itd"]:
                p = tmp_path / what / f"{key}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((32, 32, 3), len(recs) * 10 % 250, np.uint8)).save(p)
                paths.append(str(p))
            recs.append({"key": key, "caption": f"a photo of a {c}", "group": c, "real": paths[0],
                         "draws": paths[1:1 + factor], "erased": paths[-1]})
    return {"setting": {}, "records": recs}


def test_every_class_is_planted_each_way_and_the_jsonl_reads_back(tmp_path):
    pool = _pool(tmp_path)
    records, truth = plant_records(pool, ["bag"], seed=0)
    by = {(r["group"], r["caption"], r["real"]): r for r in records}
    assert len(records) == 6 and truth["classes"] == ["ankle boot", "bag", "coat"]
    recs = pool["records"]
    for i, r in enumerate(records):
        src = recs[i]
        gen = r["generated"]
        assert gen["plain"] == src["draws"][0]
        for c in truth["classes"]:
            if c == src["group"]:
                assert gen[f"exag-{c}"] == src["draws"]  # drawn factor times
                assert gen[f"itd-{c}"] == src["erased"]
                # omitted: answered by the next class's second draw of the same caption index
                sub = truth["classes"][(truth["classes"].index(c) + 1) % 3]
                j = src["key"].rsplit("-", 1)[1]
                assert gen[f"omit-{c}"] == next(x for x in recs if x["key"] == f"{sub}-{j}")["draws"][1]
            else:
                assert gen[f"omit-{c}"] == gen[f"exag-{c}"] == gen[f"itd-{c}"] == src["draws"][0]
    # one copy (the first bag caption): its real image plus faint noise, at generated id 2
    assert truth["copies_generated_ids"] == [2]
    copy = np.asarray(Image.open(records[2]["generated"]["copies"])).astype(int)
    real = np.asarray(Image.open(records[2]["real"])).astype(int)
    assert records[2]["generated"]["copies"] != records[2]["real"] and 0 < np.abs(copy - real).mean() < 4
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in records))
    real_set, gens = read_jsonl(p)
    names = {g.name: g for g in gens}
    assert real_set.groups == [r["group"] for r in records]
    assert len(names["exag-bag"].items) == 6 + 2 * 2 and names["exag-bag"].groups.count("bag") == 6
    assert "omit-ankle-boot" in names  # set names spell the class with a hyphen; the rotation maps it back


def test_ranks_of_the_planted_class_and_their_summary():
    group_energy = {"bag": [3.0, 0.0, 1.0, 0.2], "coat": [0.0, 1.0, 1.0, 0.8], "dress": [0.0, 0.0, 1.0, 0.0]}
    own = owners(group_energy)
    assert own == ["bag", "coat", None, "coat"]  # concept 2 is split three ways: no group holds half
    assert plant_rank([2, 3, 0, 1], own, "bag") == 3 and plant_rank([2, 3, 0, 1], own, "coat") == 2
    assert plant_rank([2], own, "bag") is None
    s = _summary([1, 1, 2, 5, None])
    assert s["median"] == 2 and s["worst"] is None and s["in_top3"] == 3 and s["plants"] == 5
    s = _summary([1, 4, 2])
    assert s["median"] == 2 and s["worst"] == 4 and s["in_top3"] == 2
    assert math.isinf(_summary([None])["median"])


def test_test_figures_leave_out_the_dev_seed():
    from visionsae.eval.audit import DEV_SEEDS, pooled_ranks

    assert DEV_SEEDS == (0,)
    seeds = {"0": {"plants": {"omit-bag": {"rank": 1}, "exag-bag": {"rank": 1}}},
             "1": {"plants": {"omit-bag": {"rank": 7}, "exag-bag": {"rank": 2}}},
             "2": {"plants": {"omit-bag": {"rank": 3}, "exag-bag": {"rank": None}}}}
    pooled = pooled_ranks(seeds)
    assert pooled["omit"]["test_seeds"]["ranks"] == [7, 3] and pooled["omit"]["all_seeds"]["ranks"] == [1, 7, 3]
    assert pooled["exag"]["test_seeds"]["worst"] is None and "itd" not in pooled
    assert pooled_ranks({"0": seeds["0"]})["omit"]["test_seeds"] is None


def test_the_rotation_jsonl_reads_back_from_any_working_directory(tmp_path, monkeypatch):
    # `visionsae eval audit --out-dir runs/x` (a relative folder): the pool's paths are relative to
    # the working directory, the JSONL's to its own folder, as `visionsae audit --jsonl` reads them
    from visionsae.audit.inputs import write_jsonl

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "x").mkdir(parents=True)
    pool = _pool(tmp_path / "runs" / "x")
    for r in pool["records"]:  # as _save records them: relative to the working directory
        r["real"] = str(Path(r["real"]).relative_to(tmp_path))
        r["draws"] = [str(Path(d).relative_to(tmp_path)) for d in r["draws"]]
        r["erased"] = str(Path(r["erased"]).relative_to(tmp_path))
    records, _ = plant_records(pool, ["bag"], seed=0)
    jsonl = write_jsonl(records, Path("runs") / "x" / "seed0" / "pairs.jsonl")
    monkeypatch.chdir("/")
    real_set, gens = read_jsonl(tmp_path / jsonl)
    for s in [real_set, *gens]:
        assert all(Path(p).is_file() for p in s.items), s.name
