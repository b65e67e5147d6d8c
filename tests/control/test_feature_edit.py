"""The one feature-edit mechanism: modes, token policies, gates, steering tiers."""

import pytest
import torch
from torch import nn

from visionsae.control import EditSpec, FeatureEdit
from visionsae.control.steer import TIERS, steering_edit
from visionsae.sae import SAEConfig, SparseAutoencoder


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16))
    sae = SparseAutoencoder(SAEConfig(d_in=16, n_latents=96, k=4)).eval()
    x = torch.randn(4, 6, 8)
    with torch.no_grad():
        sae.init_from_data_(model[0](x).reshape(-1, 16))
    return model, sae, x


def _layer_code(model, sae, x, edit=None):
    captured = {}
    handle = model[1].register_forward_hook(lambda m, i, o: captured.setdefault("h", i[0]))
    with torch.no_grad():
        if edit:
            with edit:
                out = model(x)
        else:
            out = model(x)
    handle.remove()
    return out, captured["h"], sae.encode(captured["h"])


def test_zero_removes_the_feature_and_keeps_everything_else():
    model, sae, x = _setup()
    base, h, code = _layer_code(model, sae, x)
    f = int(code.indices[0, 0][code.values[0, 0] > 0][0])
    out, h2, code2 = _layer_code(model, sae, x, FeatureEdit(model, "0", sae, EditSpec([f])))
    carried = ((code.indices == f) & (code.values > 0)).any(-1)  # [B, T]
    assert carried.any()
    assert torch.equal(h2[~carried], h[~carried])  # tokens without the feature: bit-identical
    # the change is exactly the feature's decoded contribution
    value = (code.values * (code.indices == f)).sum(-1)
    expected = h - value[..., None] * sae.W_dec[f] / sae.input_scale
    torch.testing.assert_close(h2, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode,value", [("scale", -2.0), ("clamp", 5.0)])
def test_scale_and_clamp_set_the_feature_value(mode, value):
    model, sae, x = _setup()
    _, h, code = _layer_code(model, sae, x)
    f = int(code.indices[1, 2][code.values[1, 2] > 0][0])
    _, h2, _ = _layer_code(model, sae, x, FeatureEdit(model, "0", sae, EditSpec([f], mode=mode, value=value)))
    old = (code.values * (code.indices == f)).sum(-1)
    new = old * value if mode == "scale" else torch.where(old != 0, torch.full_like(old, value), old)
    expected = h + (new - old)[..., None] * sae.W_dec[f] / sae.input_scale
    torch.testing.assert_close(h2, expected, rtol=1e-5, atol=1e-5)


def test_gate_selects_inputs_and_features():
    model, sae, x = _setup()
    base, h, code = _layer_code(model, sae, x)
    feats = sorted({int(i) for i in code.indices[:, 1:3][code.values[:, 1:3] > 0].tolist()})[:2]
    gate = lambda h, c: torch.tensor([True, False, True, False])  # noqa: E731
    edit = FeatureEdit(model, "0", sae, EditSpec(feats), gate=gate)
    out, h2, _ = _layer_code(model, sae, x, edit)
    assert torch.equal(out[1], base[1]) and torch.equal(out[3], base[3])
    assert edit.record.flagged.tolist() == [True, False, True, False]
    per_feature = lambda h, c: torch.tensor([[[True, False]]] * 4)  # noqa: E731  [B, 1, F]: on every token
    _, h3, _ = _layer_code(model, sae, x, FeatureEdit(model, "0", sae, EditSpec(feats[:1])))
    _, h4, _ = _layer_code(model, sae, x, FeatureEdit(model, "0", sae, EditSpec(feats), gate=per_feature))
    torch.testing.assert_close(h3, h4)
    for bad in ((4, 3), (4, 2), (4, 1, 3), (3, 1, 1)):  # [B, F] or [B, T] alone is ambiguous: refused
        with pytest.raises(ValueError, match="gate returned shape"):
            _layer_code(model, sae, x, FeatureEdit(model, "0", sae, EditSpec(feats), gate=lambda h, c: torch.ones(*bad, dtype=torch.bool)))


def test_without_error_the_output_is_the_edited_reconstruction():
    model, sae, x = _setup()
    _, h, code = _layer_code(model, sae, x)
    f = int(code.indices[0, 0][code.values[0, 0] > 0][0])
    _, h2, _ = _layer_code(model, sae, x, FeatureEdit(model, "0", sae, EditSpec([f], tokens="all", keep_error=False)))
    edited = code.values * (code.indices != f)
    torch.testing.assert_close(h2, sae.decode(type(code)(edited, code.indices)), rtol=1e-5, atol=1e-5)


def test_a_per_token_gate_edits_only_its_tokens():
    model, sae, x = _setup()
    base, h, code = _layer_code(model, sae, x)
    tokens = torch.zeros(4, 6, 1, dtype=torch.bool)
    tokens[:, :2] = True
    edit = FeatureEdit(model, "0", sae, EditSpec([3], mode="add", value=TIERS["strong"], tokens="all"), gate=lambda h, c: tokens)
    _, h2, _ = _layer_code(model, sae, x, edit)
    assert torch.equal(h2[:, 2:], h[:, 2:]) and not torch.equal(h2[:, :2], h[:, :2])
    assert edit.record.edited_tokens.tolist() == tokens[..., 0].tolist()
    # zeroing: of the gate's tokens, those where a feature fires
    active = code.indices.masked_fill(code.values <= 0, -1)
    f = min(set(active[:, :2].flatten().tolist()) & set(active[:, 2:].flatten().tolist()) - {-1})
    fires = ((code.indices == f) & (code.values > 0)).any(-1)  # [B, T]: inside the gate's tokens and outside
    edit = FeatureEdit(model, "0", sae, EditSpec([f]), gate=lambda h, c: tokens)
    _, h3, _ = _layer_code(model, sae, x, edit)
    assert torch.equal(edit.record.edited_tokens, fires & tokens[..., 0]) and edit.record.edited_tokens.any()
    assert torch.equal(h3[~edit.record.edited_tokens], h[~edit.record.edited_tokens])


def test_steering_tiers_grow_and_follow_the_direction():
    model, sae, x = _setup()
    _, h, _ = _layer_code(model, sae, x)
    direction = sae.W_dec[7] / sae.W_dec[7].norm()
    moved = {}
    for tier in ("gentle", "medium", "strong"):
        _, h2, _ = _layer_code(model, sae, x, steering_edit(model, "0", sae, [7], tier))
        delta = h2 - h
        moved[tier] = float(delta.norm(dim=-1).mean())
        cos = torch.nn.functional.cosine_similarity(delta.reshape(-1, 16), direction[None], dim=-1)
        assert (cos > 0.999).all()
        # per input: strength x that input's mean token norm
        torch.testing.assert_close(delta.norm(dim=-1), TIERS[tier] * h.norm(dim=-1).mean(1, keepdim=True).expand(-1, 6), rtol=1e-4, atol=1e-5)
    assert moved["gentle"] < moved["medium"] < moved["strong"]
    # one input's steering does not depend on the rest of its batch
    _, alone, _ = _layer_code(model, sae, x[:1], steering_edit(model, "0", sae, [7], "strong"))
    _, together, _ = _layer_code(model, sae, x, steering_edit(model, "0", sae, [7], "strong"))
    torch.testing.assert_close(alone[0], together[0])
    with pytest.raises(ValueError, match="unknown steering tier"):
        steering_edit(model, "0", sae, [7], "extreme")


def test_bad_specs_are_refused():
    model, sae, _ = _setup()
    with pytest.raises(ValueError, match="unknown edit mode"):
        EditSpec([1], mode="delete")
    with pytest.raises(ValueError, match="out of range for an SAE of 96 latents"):
        FeatureEdit(model, "0", sae, EditSpec([500]))
    with pytest.raises(ValueError, match="is not a module"):
        FeatureEdit(model, "layers.9", sae, EditSpec([1]))


@pytest.mark.parametrize("mode,value", [("zero", 0.0), ("scale", -2.0)])
def test_gradients_flow_through_an_edit_that_fires(mode, value):
    model, sae, x = _setup()
    model, sae, x = model.double(), sae.double(), x.double()
    _, _, code = _layer_code(model, sae, x)
    f = int(code.indices[0, 0][code.values[0, 0] > 0][0])
    edit = FeatureEdit(model, "0", sae, EditSpec([f], mode=mode, value=value))
    weight = model[0].weight

    def loss():
        return model(x).square().sum()

    with edit:
        loss().backward()
        assert bool(edit.record.edited_tokens.any())  # the edit fired on this forward
        grad = weight.grad.clone()
        # the gradient is that of the edited function: a central difference on one weight agrees
        i, j, eps = 3, 2, 1e-6
        with torch.no_grad():
            weight[i, j] += eps
            up = loss()
            weight[i, j] -= 2 * eps
            down = loss()
            weight[i, j] += eps
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad[i, j], (up - down) / (2 * eps), rtol=1e-4, atol=1e-6)
    model.zero_grad()
    loss().backward()  # without the edit the gradient differs: the edit is part of the function
    assert not torch.allclose(model[0].weight.grad, grad)
