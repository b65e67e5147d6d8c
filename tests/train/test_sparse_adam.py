"""The decoder's gradient as the rows a step used, and Adam's update from it: the same
gradient and the same training as the dense path, with the dense copy of W_dec gone."""

import json

import pytest
import torch

from visionsae.planted import PlantedConfig, PlantedData
from visionsae.sae import SAEConfig, SparseAutoencoder
from visionsae.train import TrainConfig, train_sae
from visionsae.train.sparse_adam import adam_step_sparse_rows_


def _grads(sparse: bool, dead: bool, n: int = 4096):
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=16, n_latents=n, k=4))
    sae.sparse_decoder_grad = sparse
    x = torch.randn(32, 16)
    mask = torch.zeros(n, dtype=torch.bool)
    if dead:
        mask[::97] = True
    out = sae(x, dead_mask=mask, aux_k=8)
    loss = out.fvu + (out.aux_loss if out.aux_loss is not None else 0)
    loss.backward()
    sae.remove_parallel_grads_()
    return sae.W_dec.grad, sae.W_enc.grad


@pytest.mark.parametrize("dead", [False, True])
def test_the_sparse_decoder_gradient_is_the_dense_one(dead):
    dense_dec, dense_enc = _grads(False, dead)
    sparse_dec, sparse_enc = _grads(True, dead)
    assert sparse_dec.is_sparse and not dense_dec.is_sparse
    rows = sparse_dec.coalesce().indices()[0]
    assert len(rows) <= 32 * 4 + (32 * 8 if dead else 0)  # only the rows the batch (and AuxK) used are held
    torch.testing.assert_close(sparse_dec.to_dense(), dense_dec, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(sparse_enc, dense_enc, rtol=0, atol=0)  # the encoder's is untouched


def test_where_most_rows_are_used_the_gradient_stays_dense():
    dec, _ = _grads(True, False, n=256)  # 32 rows x k 4 over 256 latents: up to half of the rows
    assert not dec.is_sparse
    torch.testing.assert_close(dec, _grads(False, False, n=256)[0], rtol=0, atol=0)


def test_the_step_is_torch_adams_with_zero_gradient_elsewhere():
    torch.manual_seed(1)
    w0 = torch.randn(300, 8)
    a, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    opt_a, opt_b = torch.optim.Adam([a], lr=1e-2, fused=True), torch.optim.Adam([b], lr=1e-2, fused=True)
    for step in range(5):
        rows = torch.randperm(300)[:40].sort().values
        g = torch.randn(40, 8)
        a.grad = torch.sparse_coo_tensor(rows[None], g, a.shape, check_invariants=True)
        adam_step_sparse_rows_(opt_a, a)
        b.grad = torch.zeros_like(b).index_copy_(0, rows, g)
        opt_b.step()
        assert a.grad is None
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(opt_a.state[a][key], opt_b.state[b][key], rtol=0, atol=0)  # the same kernel, the same arithmetic
    assert float(opt_a.state[a]["step"]) == float(opt_b.state[b]["step"]) == 5


def test_training_with_the_sparse_decoder_gradient_matches_the_dense_path(tmp_path, monkeypatch):
    import visionsae.train.trainer as trainer

    calls = []
    monkeypatch.setattr(trainer, "adam_step_sparse_rows_", lambda opt, p: (calls.append(1), adam_step_sparse_rows_(opt, p)))
    data = PlantedData(PlantedConfig(d_in=32, n_true=128, seed=0))
    batches = [data.batch(i, 64) for i in range(30)]
    runs = {}
    for sparse in (True, False):
        cfg = TrainConfig(out_dir=str(tmp_path / str(sparse)), total_samples=30 * 64, seed=0, progress=False,
                          checkpoint_every=0, log_every=10, sparse_decoder_grad=sparse)
        # 64 rows x k 8 over 8192 latents: a step uses at most 6% of the decoder's rows
        runs[sparse] = (train_sae(SAEConfig(d_in=32, n_latents=8192, k=8), cfg, iter(batches)),
                        [json.loads(line)["fvu"] for line in (tmp_path / str(sparse) / "metrics.jsonl").read_text().splitlines()])
        if sparse:
            assert len(calls) == 30  # every step took the sparse path
    assert len(calls) == 30  # and the dense run never did
    (s, fvu_s), (d, fvu_d) = runs[True], runs[False]
    # the same steps up to float rounding (different summation order), not merely as good
    torch.testing.assert_close(s.W_dec, d.W_dec, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(s.W_enc, d.W_enc, rtol=1e-3, atol=1e-4)
    assert fvu_s == pytest.approx(fvu_d, rel=1e-3) and fvu_s[-1] < fvu_s[0]
