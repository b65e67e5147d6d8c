"""The one FVU: known answers, and the same figure however the rows are batched."""

import torch

from visionsae.sae.metrics import FVU


def _fvu(x, x_hat, batch):
    f = FVU()
    for a, b in zip(x.split(batch), x_hat.split(batch)):
        f.update(a, b)
    return f


def test_known_answers():
    x = torch.randn(300, 8) * 3 + 5
    assert _fvu(x, x, 64).value == 0.0
    assert abs(_fvu(x, x.mean(0).expand_as(x), 64).value - 1.0) < 1e-9  # the mean explains nothing
    noise = torch.randn_like(x)
    expected = float((noise.double() ** 2).sum() / ((x.double() - x.double().mean(0)) ** 2).sum())
    assert abs(_fvu(x, x + noise, 300).value - expected) < 1e-9


def test_batching_does_not_change_the_figure():
    # batches whose means differ: a per-batch mean would read a smaller variance than there is
    x = torch.cat([torch.randn(100, 4) + 10, torch.randn(100, 4) - 10])
    x_hat = x + 0.1 * torch.randn_like(x)
    whole = _fvu(x, x_hat, 200)
    assert whole.rows == 200
    assert abs(_fvu(x, x_hat, 100).value - whole.value) < 1e-9
    assert abs(_fvu(x, x_hat, 7).value - whole.value) < 1e-9
