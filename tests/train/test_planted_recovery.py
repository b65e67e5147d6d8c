"""Each sparsity rule, trained on planted data, finds the planted directions.

The planted set of the README's table: d_in 128, 256 true unit directions, ~6 active per
sample with power-law frequencies and heavy-tailed magnitudes; 512 latents, k = 12. Scores
are on held-out batches.
"""

import pytest

from visionsae.eval.planted import evaluate_rule
from visionsae.planted import PlantedConfig

# rule -> (training samples, min share of directions recovered, max held-out FVU).
# Measured (visionsae eval planted --d-in 128 --n-true 256 --mean-active 6 --n-latents 512
# --samples 500000, the trainer's defaults since the batch-scaled learning rate): topk
# recovered 1.000 / FVU 0.046, batchtopk 0.980 / 0.049, abstopk (signed data) 1.000 / 0.088,
# jumprelu 1.000 / 0.053 (L0 5.7); before it 0.996, 0.891, 0.992, 0.941. (Earlier bars, 100% on the
# default set, were measured while the planted directions shared the SAE's random stream,
# so decoders started at the answer; on the default set at 300k samples topk now recovers 0.43.)
BARS = {
    "topk": (500_000, 0.90, 0.07),
    "batchtopk": (500_000, 0.80, 0.08),
    "abstopk": (500_000, 0.90, 0.12),
    "jumprelu": (500_000, 0.85, 0.09),
}


@pytest.mark.parametrize("rule", sorted(BARS))
def test_rule_recovers_planted_directions(rule):
    samples, min_recovered, max_fvu = BARS[rule]
    planted = PlantedConfig(d_in=128, n_true=256, mean_active=6, signed=(rule == "abstopk"))
    res = evaluate_rule(rule, total_samples=samples, n_latents=512, planted=planted)
    assert res["recovered"] >= min_recovered, res
    assert res["fvu"] < max_fvu, res
    if rule in ("topk", "abstopk"):
        assert res["l0"] <= 12
    if rule == "batchtopk":  # the inference threshold keeps the mean count near k
        assert 6 <= res["l0"] <= 18, res
    if rule == "jumprelu":  # learned thresholds give a sparse code without a fixed k
        assert res["l0"] < 40, res


def test_topk_on_the_default_planted_set_with_default_training():
    """The default planted set (d_in 256, 1024 true directions, ~8 active): TopK k=16 with
    2048 latents and the trainer's defaults (lr, warm-up, dead-latent window) at batch 256.
    Measured: recovered 0.952, FVU 0.078 in 63 s on one loaded core (300k samples); with the
    dead-latent window at 10M samples (AuxK idle in so short a run) 0.951 / 0.078."""
    res = evaluate_rule("topk", total_samples=300_000, n_latents=2048, planted=PlantedConfig(), batch_size=256, k=16)
    assert res["recovered"] >= 0.90, res
    assert res["fvu"] < 0.10, res
