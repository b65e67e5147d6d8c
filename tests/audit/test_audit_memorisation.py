"""The two views of memorisation (pooled features, pixel thumbnails) and how they combine,
on vectors written as the audit's streaming pass writes them."""

import torch

from visionsae.audit import AuditConfig
from visionsae.audit.memorisation import memorisation, ratios_of, write_vectors


def _write(path, vectors):
    with open(path, "wb") as f:
        write_vectors(f, torch.arange(len(vectors)), vectors)


def _sets(tmp_path, side=4, seed=0):
    """30 real and 20 generated images, both views random, except generated #3 (its pixels a
    faint-noise copy of real #7, its features half-way between real #7 and another real image)
    and generated #5 (its features those of real #11, its pixels unrelated)."""
    g = torch.Generator().manual_seed(seed)
    dim, pix = 64, 3 * side * side
    real_f, real_p = torch.randn(30, dim, generator=g), torch.rand(30, pix, generator=g)
    gen_f, gen_p = torch.randn(20, dim, generator=g), torch.rand(20, pix, generator=g)
    gen_f[3] = 0.5 * real_f[7] + 0.5 * real_f[8]
    gen_p[3] = (real_p[7] + 0.01 * torch.randn(pix, generator=g)).clamp(0, 1)
    gen_f[5] = real_f[11] + 0.01 * torch.randn(dim, generator=g)
    for name, v in (("real.descriptors", real_f), ("gen.descriptors", gen_f), ("real.thumbnails", real_p), ("gen.thumbnails", gen_p)):
        _write(tmp_path / name, v)
    return real_f.mean(0), dim


def test_a_pixel_copy_the_features_miss_is_flagged_by_the_pixel_view(tmp_path):
    mean, dim = _sets(tmp_path)
    mem = memorisation(tmp_path, "real", "gen", dim, mean, AuditConfig(pixel_side=4))
    flagged = {c["generated"]: c for c in mem["candidates"] if c["flagged"]}
    assert set(flagged) == {3, 5} and mem["flagged"] == 2
    assert mem["flagged_by_pixels"] == 1 and mem["flagged_by_features"] == 1
    assert flagged[3]["ratio"] > 0.2 and flagged[3]["pixel_ratio"] < 0.1 and flagged[3]["real"] == 7
    assert flagged[5]["ratio"] < 0.2 and flagged[5]["real"] == 11
    # candidates are ranked by the score of their stronger view; the two copies come first
    assert {c["generated"] for c in mem["candidates"][:2]} == {3, 5}
    assert [c["score"] for c in mem["candidates"]] == sorted(c["score"] for c in mem["candidates"])
    r = ratios_of(mem, [3, 5])
    assert set(r["of"]) == {"3", "5"} and r["lowest_other"]["pixels"] > r["of"]["3"]["pixels"]


def test_without_the_pixel_view_only_the_feature_copy_is_flagged(tmp_path):
    mean, dim = _sets(tmp_path)
    mem = memorisation(tmp_path, "real", "gen", dim, mean, AuditConfig(pixel_side=0))
    assert [c["generated"] for c in mem["candidates"] if c["flagged"]] == [5]
    assert mem["pixel_ratio"] is None and "pixel_ratio" not in mem["candidates"][0]


def test_bad_memorisation_settings_are_refused():
    import pytest

    from visionsae.errors import UsageError

    for bad in (dict(pixel_side=-1), dict(pixel_ratio=0), dict(memorisation_ratio=-0.1)):
        with pytest.raises(UsageError, match=next(iter(bad))):
            AuditConfig(**bad)
