"""The SAE module: sparse kernels against plain PyTorch, chunked inference, rules."""

import pytest
import torch
from tiny_models import rule_state_from
from hypothesis import given, settings
from hypothesis import strategies as st

from visionsae.sae import RULES, SAEConfig, SparseAutoencoder, SparseCode
from visionsae.sae import model as model_mod
from visionsae.sae.kernels import LatentBags, plain_decode, plain_encode, row_topk, sparse_decode, sparse_encode
from visionsae.sae.sparsity import AbsTopK, BatchTopK, TopK


def _trained_like(rule: str, d: int = 24, n: int = 96, k: int = 5, seed: int = 0) -> SparseAutoencoder:
    torch.manual_seed(seed)
    sae = SparseAutoencoder(SAEConfig(d_in=d, n_latents=n, sparsity=rule, k=k))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.3)
    return rule_state_from(sae, torch.randn(64, d))


@pytest.mark.parametrize("n", [40, 256])  # 256 latents for k=4: row_topk's grouped path
@pytest.mark.parametrize("rule_cls", [TopK, AbsTopK, BatchTopK])
def test_sparse_kernels_match_plain_autograd(rule_cls, n):
    torch.manual_seed(0)
    cfg = SAEConfig(d_in=12, n_latents=n, k=4, sparsity=rule_cls.name)
    x = torch.randn(16, 12, dtype=torch.float64, requires_grad=True)
    W_enc = torch.randn(n, 12, dtype=torch.float64, requires_grad=True)
    b_enc = torch.randn(n, dtype=torch.float64, requires_grad=True)
    W_dec = torch.randn(n, 12, dtype=torch.float64, requires_grad=True)
    center = torch.randn(12, dtype=torch.float64, requires_grad=True)  # b_dec, subtracted from the input
    target = torch.randn(16, 12, dtype=torch.float64)
    grads = []
    bags = LatentBags()  # shared by the encoder's and the decoder's backward, as in the SAE
    for enc, dec in ((lambda x, *a: sparse_encode(x, *a, bags=bags, center=center), lambda *a: sparse_decode(*a, bags=bags)),
                     (lambda x, *a: plain_encode(x - center, *a), plain_decode)):
        rule = rule_cls(cfg)
        values, indices = enc(x, W_enc, b_enc, rule.select)
        loss = (dec(values, indices, W_dec) - target).pow(2).sum()
        grads.append(torch.autograd.grad(loss, (x, W_enc, b_enc, W_dec, center)))
        assert (values != 0).any()
    for fast, plain, name in zip(*grads, ("x", "W_enc", "b_enc", "W_dec", "center")):
        torch.testing.assert_close(fast, plain, msg=f"gradient of {name} differs")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows,n,k", [(7, 4096, 32), (5, 4000, 8), (9, 2048, 1), (3, 1024, 64), (4, 100, 32), (3, 6144, 32), (2, 4099, 16), (4, 16384, 32), (3, 16384, 4)])
def test_row_topk_gives_torch_topk_values(dtype, rows, n, k):
    torch.manual_seed(n + k)
    x = torch.randn(rows, n)
    x = (x * 4).round().to(dtype) if dtype in (torch.float16, torch.bfloat16) else x.to(dtype)  # many ties
    x[0, : 3 * k] = x[0].max()  # a row whose top k are all tied, spread over several groups
    values, indices = row_topk(x, k)
    expected = x.topk(k, dim=-1, sorted=False).values
    assert torch.equal(values.sort(-1).values, expected.sort(-1).values)
    assert torch.equal(x.gather(1, indices), values)  # the indices point at those values
    assert all(len(set(row.tolist())) == k for row in indices)  # no latent twice


@pytest.mark.parametrize("rule_cls", [TopK, AbsTopK, BatchTopK])
def test_choosing_in_bfloat16_keeps_exact_values_and_gradients(rule_cls):
    # training may choose the latents from a bf16 matmul; the chosen values and every
    # gradient must still be the float32 ones at those latents
    torch.manual_seed(0)
    cfg = SAEConfig(d_in=64, n_latents=512, k=8, sparsity=rule_cls.name)
    x = torch.randn(128, 64, requires_grad=True)
    W_enc = torch.randn(512, 64, requires_grad=True)
    b_enc = torch.randn(512, requires_grad=True)
    W_dec = torch.randn(512, 64, requires_grad=True)
    target = torch.randn(128, 64)
    values, indices = sparse_encode(x, W_enc, b_enc, rule_cls(cfg).select, torch.bfloat16)
    loss = (sparse_decode(values, indices, W_dec) - target).pow(2).sum()
    grads = torch.autograd.grad(loss, (x, W_enc, b_enc, W_dec))

    pre = torch.addmm(b_enc, x, W_enc.t())  # float32, stock autograd
    kept = values.detach() != 0
    reference = pre.gather(1, indices) * kept
    torch.testing.assert_close(values, reference, rtol=1e-5, atol=1e-5)
    ref_loss = (plain_decode(reference, indices, W_dec) - target).pow(2).sum()
    for fast, plain, name in zip(grads, torch.autograd.grad(ref_loss, (x, W_enc, b_enc, W_dec)), ("x", "W_enc", "b_enc", "W_dec")):
        scale = float(plain.abs().max())  # large losses: compare at float32 rounding of the largest entry
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5 * scale, msg=f"gradient of {name} differs")

    # the choice differs from the exact one only among near-ties of the k-th value
    exact_values, exact_indices = rule_cls(cfg).select(pre.detach())
    rough_sets = [set(i[v != 0].tolist()) for v, i in zip(values.detach(), indices)]
    exact_sets = [set(i[v != 0].tolist()) for v, i in zip(exact_values, exact_indices)]
    n_exact = sum(map(len, exact_sets))
    assert n_exact >= 128 * 8 * 0.9  # the rule kept about k per row
    assert sum(len(a & b) for a, b in zip(rough_sets, exact_sets)) >= 0.9 * n_exact
    if rule_cls is TopK:  # every chosen latent is within bf16 precision of the exact k-th value
        kth = pre.detach().topk(8, dim=-1).values[:, -1:]
        chosen = pre.detach().gather(1, indices)
        assert bool((chosen >= kth - 2 ** -6 * pre.detach().abs().amax(-1, keepdim=True)).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_decoder_value_gradient_with_repeated_indices(dtype):
    # rules may return a latent twice in a row (padding slots); each slot gets its own gradient
    torch.manual_seed(1)
    indices = torch.randint(0, 7, (33, 6))  # 7 latents, 6 slots: repeats guaranteed
    values = torch.randn(33, 6, dtype=dtype, requires_grad=True)
    W_dec = torch.randn(7, 5, dtype=dtype)
    grad_out = torch.randn(33, 5, dtype=dtype)
    (grad,) = torch.autograd.grad(sparse_decode(values, indices, W_dec), values, grad_out)
    expected = (W_dec.double()[indices] * grad_out.double()[:, None, :]).sum(-1)
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(grad.double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_chunked_encode_equals_one_shot(rule, monkeypatch):
    sae = _trained_like(rule)
    x = torch.randn(7, 3, 24)
    whole = sae.encode(x)
    monkeypatch.setattr(model_mod, "_MAX_PRE_ACTS", 7 * 3 * 10)  # chunks of 10 latents
    chunked = sae.encode(x)
    assert whole.values.shape[:2] == (7, 3)
    torch.testing.assert_close(whole.to_dense(96), chunked.to_dense(96))


@pytest.mark.parametrize("rule", sorted(RULES))
def test_inference_code_does_not_depend_on_the_batch(rule):
    sae = _trained_like(rule)
    x = torch.randn(32, 24)
    together = sae.encode(x).to_dense(96)
    alone = torch.cat([sae.encode(x[i : i + 1]).to_dense(96) for i in range(32)])
    torch.testing.assert_close(together, alone)


def test_topk_code_is_the_k_largest_relu_pre_activations():
    sae = _trained_like("topk")
    x = torch.randn(10, 24)
    pre = sae.pre_acts(x)
    code = sae.encode(x)
    expected = pre.topk(5, dim=-1).values.relu().sort(-1).values
    torch.testing.assert_close(code.values.sort(-1).values, expected)
    torch.testing.assert_close(pre.gather(-1, code.indices).relu(), code.values)


def test_abstopk_keeps_sign():
    sae = _trained_like("abstopk")
    code = sae.encode(torch.randn(50, 24))
    assert (code.values < 0).any() and (code.values > 0).any()


def test_large_dictionary_encodes_in_bounded_memory():
    """A 2^19-latent SAE on 77 tokens: the dense pre-activations would be 160 MB."""
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=32, n_latents=1 << 19, k=8)).eval()
    x = torch.randn(77, 32)
    with torch.no_grad():
        code = sae.encode(x)
        x_hat = sae.decode(code)
    assert code.values.shape == (77, 8) and x_hat.shape == (77, 32)
    # Exact: equals the top-8 of the full pre-activations.
    pre = sae.pre_acts(x[:3])
    torch.testing.assert_close(code.values[:3].sort(-1).values, pre.topk(8).values.relu().sort(-1).values)
    assert 77 * (1 << 19) > model_mod._MAX_PRE_ACTS  # the chunked path was taken


@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(1, 6),
    width=st.integers(1, 8),
    seed=st.integers(0, 10_000),
)
def test_decode_of_sparse_code_equals_dense_matmul(rows, width, seed):
    torch.manual_seed(seed)
    sae = _trained_like("topk", seed=seed % 7)
    values = torch.randn(rows, width)
    indices = torch.randint(0, 96, (rows, width))
    code = SparseCode(values, indices)
    dense = code.to_dense(96)
    expected = (dense @ sae.W_dec + sae.b_dec) / sae.input_scale
    torch.testing.assert_close(sae.decode(code), expected, rtol=1e-5, atol=1e-5)


def test_wrong_width_names_the_hook():
    sae = SparseAutoencoder(SAEConfig(d_in=768, n_latents=64, k=4, hook="text_model.encoder.layers.8"))
    with pytest.raises(ValueError, match=r"512 features but the SAE expects 768 \(hook 'text_model.encoder.layers.8'\)"):
        sae.encode(torch.randn(2, 512))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(d_in=8, n_latents=16, k=32), "k=32 is larger than n_latents=16"),
        (dict(d_in=8, n_latents=16, k=4, sparsity="topq"), "unknown sparsity rule 'topq'"),
        (dict(d_in=0, n_latents=16, k=4), "d_in must be a positive integer"),
        (dict(d_in=8, n_latents=16, k=4, dtype="float8"), "unknown dtype"),
    ],
)
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SAEConfig(**kwargs)


def test_config_round_trips_json():
    cfg = SAEConfig(d_in=8, n_latents=16, sparsity="jumprelu", hook="h", extra={"tokens": "patch"})
    import json

    assert SAEConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ValueError, match="unknown SAEConfig fields"):
        SAEConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_folding_the_input_scale_keeps_codes_and_reconstructions():
    sae = _trained_like("topk")
    x = torch.randn(20, 24) * 50
    sae.init_from_data_(x)
    assert float(sae.input_scale) != 1.0
    code, x_hat = sae.encode(x), sae.decode(sae.encode(x))
    sae.fold_input_scale()
    assert float(sae.input_scale) == 1.0
    torch.testing.assert_close(sae.encode(x).to_dense(96), code.to_dense(96), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sae.decode(sae.encode(x)), x_hat, rtol=1e-4, atol=1e-3)


def test_training_scratch_buffers_are_reused_and_change_nothing():
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=32, n_latents=256, k=4))
    sae.train()
    outs, ptrs = [], []
    for seed in range(3):
        x = torch.randn(64, 32, generator=torch.Generator().manual_seed(seed))
        out = sae(x, select_dtype=torch.bfloat16)
        outs.append((x, out.code.values.detach(), out.code.indices))
        ptrs.append(sae._scratch.get("pre_acts", (64, 256), torch.bfloat16, torch.device("cpu")).data_ptr())
    assert len(set(ptrs)) == 1  # one buffer for every step
    for x, values, indices in outs:  # the same code as without the scratch buffers
        ref_values, ref_indices = sparse_encode(sae.input_scale * x, sae.W_enc, sae.b_enc, sae.rule.select,
                                                torch.bfloat16, center=sae.b_dec)
        assert torch.equal(indices.sort(-1).values, ref_indices.sort(-1).values)
        torch.testing.assert_close(values.sort(-1).values, ref_values.detach().sort(-1).values)
    sae.eval()
    assert not sae._scratch._buffers  # an SAE in inference keeps no training buffers


def test_remove_parallel_grads_leaves_only_the_orthogonal_part():
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=16, n_latents=64, k=4))
    sae.normalize_decoder_()
    g = torch.randn(64, 16)
    sae.W_dec.grad = g.clone()
    sae.remove_parallel_grads_()
    w = sae.W_dec.detach()
    torch.testing.assert_close((sae.W_dec.grad * w).sum(1), torch.zeros(64), atol=1e-5, rtol=0)
    expected = g - (g * w).sum(1, keepdim=True) * w  # the textbook projection
    torch.testing.assert_close(sae.W_dec.grad, expected)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_a_training_pass_changes_no_state_until_after_step(rule):
    # select / dense / losses are pure, in training mode too: state kept by rule (thresholds,
    # usage, adapted biases) changes only in after_step, once per optimizer step
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=16, n_latents=64, k=4, sparsity=rule))
    sae.train()
    x = torch.randn(32, 16)
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    out = sae(x)
    sum(out.losses.values(), out.fvu).backward()
    with torch.no_grad():
        sae(x[:16])  # another pass (as an evaluation in training mode would make): pure too
    after = sae.state_dict()
    assert all(torch.equal(before[k].nan_to_num(), after[k].nan_to_num()) for k in before), rule
    with torch.no_grad():
        sae.rule.after_step(sae, out)
    if sae.rule.adaptive_state:  # the rule's own state moved, from this step's code
        assert any(not torch.equal(before[k].nan_to_num(), sae.state_dict()[k].nan_to_num()) for k in sae.rule.adaptive_state)


@pytest.mark.parametrize("rule", ["batchtopk", "featurechoice"])
def test_after_step_sets_the_threshold_the_rule_defines(rule):
    # BatchTopK: the smallest activation the batch kept; Feature Choice: per latent, the
    # smallest of its m chosen pre-activations (0 where one of them was not positive)
    torch.manual_seed(1)
    sae = SparseAutoencoder(SAEConfig(d_in=16, n_latents=64, k=4, sparsity=rule))
    sae.train()
    x = torch.randn(48, 16)
    with torch.no_grad():
        sae.b_enc[:8] = -10.0  # latents that fire on no input
        out = sae(x)
        sae.rule.after_step(sae, out)
        pre = sae.pre_acts(x)
    if rule == "batchtopk":
        expected = pre.relu().flatten().topk(4 * 48).values.min()
        torch.testing.assert_close(sae.rule.threshold, expected.to(sae.rule.threshold.dtype))
    else:
        m = sae.rule.capacity(48)
        expected = pre.topk(m, dim=0).values.min(0).values.clamp_min(0)
        torch.testing.assert_close(sae.rule.threshold, expected.to(sae.rule.threshold.dtype))
        assert (expected == 0).any() and (expected > 0).any()  # both branches of the rule seen
