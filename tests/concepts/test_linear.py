"""The linear concept score: its runtime form equals the fitted read-out; fitting and calibration."""

import math

import torch

from visionsae.concepts.classifier import concept_scores
from visionsae.concepts.linear import LinearConcept, calibrate_fpr, fit_linear
from visionsae.concepts.select import prompt_maxes
from visionsae.sae import SAEConfig, SparseAutoencoder


def test_runtime_score_is_the_read_out_of_pooled_codes():
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=16, n_latents=64, k=4)).eval()
    h = torch.randn(3, 7, 16)
    code = sae.encode(h)
    concepts = [LinearConcept([5, 9, 40], [0.7, -1.2, 2.0], 0.3), LinearConcept([9, 63], [1.5, 0.25], -1.0)]
    got = concept_scores(sae, h, code, [torch.tensor(c.features) for c in concepts], "linear",
                         weights=[torch.tensor(c.weights) for c in concepts], biases=[c.bias for c in concepts])
    pooled = torch.log1p(prompt_maxes(code, 64))  # dense reference: max over tokens after the first
    want = torch.stack([c.score(pooled) for c in concepts], 1)
    torch.testing.assert_close(got, want)
    assert (pooled[:, [5, 9, 40, 63]] > 0).any()  # the test reads latents that fire


def test_fit_finds_the_marking_latent_and_a_latent_against():
    g = torch.Generator().manual_seed(0)
    n = 50
    noise = lambda rows: (torch.rand(rows, n, generator=g) < 0.1) * torch.rand(rows, n, generator=g)
    pos, neg = noise(200), noise(400)
    pos[:, 7] += 1.0  # latent 7 marks the concept
    pos[:, 11] += 1.0
    neg[:150, 11] += 1.0  # latent 11 fires on both, more on near misses: it speaks against
    neg[:150, 3] += 1.0
    fit = fit_linear(pos.to_sparse(), neg.to_sparse(), l1=1e-3)
    weight = dict(zip(fit.features, fit.weights))
    assert fit.features[0] == 7 and weight[7] > 0
    assert weight.get(3, 0) <= 0
    assert 7 in fit.positive and 3 not in fit.positive
    again = fit_linear(pos.to_sparse(), neg.to_sparse(), l1=1e-3)
    assert again == fit  # deterministic
    scores_pos, scores_neg = fit.score(pos), fit.score(neg)
    assert (scores_pos.median() > scores_neg.quantile(0.99))


def test_threshold_keeps_every_group_under_its_cap_and_is_the_lowest():
    g = torch.Generator().manual_seed(1)
    pos = torch.randn(100, generator=g) + 3
    groups = {"keep": torch.randn(1000, generator=g), "near": torch.randn(20, generator=g) + 1.5}
    cal = calibrate_fpr(pos, groups, max_fpr=0.01)
    t = cal["threshold"]
    assert (groups["keep"] >= t).float().mean() <= 0.01 and (groups["near"] >= t).sum() == 0  # 1% of 20 is no flag
    lower = float(torch.nextafter(torch.tensor(t), torch.tensor(-math.inf)))  # the next float32 down
    assert any((s >= lower).float().mean() > 0.01 for s in groups.values())  # any lower threshold breaks a cap
    assert cal["recall"] == float((pos >= t).float().mean())
    assert cal["fpr_near"] == 0.0 and cal["n_keep"] == 1000
