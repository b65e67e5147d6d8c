"""Image sources: token kinds of DINOv2 (timm and transformers, with registers), open_clip,
CNN feature maps; image reading in every PIL mode; unreadable files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from visionsae.sources import ImagePreprocess, ImageReadError, ImageSource, TokenKind, load_image, to_rgb


def _photos(n: int = 3, size: int = 40) -> list:
    from skimage import data

    imgs = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()][:n]
    return [Image.fromarray(a).resize((size, size + 8)) for a in imgs]


def test_dinov2_with_registers_kinds_and_rows():
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    cfg = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                                    image_size=28, patch_size=7, num_register_tokens=4)
    model = Dinov2WithRegistersModel(cfg).eval()
    src = ImageSource(model, "encoder.layer.1")
    assert not src.nhwc  # a ViT's only convolution is its patch embedding: the layout stays
    images = _photos(3)
    batch = src.encode(images, 5)
    T = 1 + 4 + 16
    assert batch.acts.shape == (3 * T, 32)
    kinds = batch.kind.view(3, T)
    assert (kinds[:, 0] == TokenKind.CLS).all()
    assert (kinds[:, 1:5] == TokenKind.REGISTER).all()
    assert (kinds[:, 5:] == TokenKind.PATCH).all()
    assert batch.input_id.view(3, T)[:, 0].tolist() == [5, 6, 7]
    assert batch.records[0]["grid"] == [4, 4] and batch.records[0]["prefix"] == 5
    x = torch.stack([src.preprocess(im) for im in images])
    assert x.shape == (3, 3, 28, 28)
    with torch.no_grad():
        ref = model(pixel_values=x, output_hidden_states=True).hidden_states[2]  # [3, T, 32]
    assert torch.equal(batch.acts.view(3, T, 32), ref)
    # register tokens never reach patch rows
    patches = ImageSource(model, "encoder.layer.1", keep_kinds=["patch"]).encode(images, 0)
    assert patches.acts.shape == (3 * 16, 32)
    assert torch.equal(patches.acts.view(3, 16, 32), ref[:, 5:])


def test_dinov2_without_registers_and_processor():
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                                     image_size=28, patch_size=7)).eval()
    proc = BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28},
                             image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    src = ImageSource(model, "layernorm", preprocess=proc)
    batch = src.encode(_photos(2), 0)
    kinds = batch.kind.view(2, 17)
    assert (kinds[:, 0] == TokenKind.CLS).all() and (kinds[:, 1:] == TokenKind.PATCH).all()
    pv = proc(images=_photos(2), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        assert torch.allclose(batch.acts.view(2, 17, 32), model(pixel_values=pv).last_hidden_state, atol=1e-6)


def test_timm_dinov2_reg4_prefix_and_preprocess():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=56, embed_dim=32, depth=2,
                              num_heads=2).eval()
    src = ImageSource(model, "blocks.1")
    assert src.preprocess.crop == (56, 56)  # the size the model was built at, not the 518 of its pretrained config
    batch = src.encode(_photos(2), 0)
    kinds = batch.kind.view(2, 21)
    assert kinds[0, :5].tolist() == [TokenKind.CLS] + [TokenKind.REGISTER] * 4
    assert (kinds[:, 5:] == TokenKind.PATCH).all()
    x = torch.stack([src.preprocess(im) for im in _photos(2)])
    with torch.no_grad():
        ref = model.forward_features(x)  # blocks.1 then norm
    assert torch.allclose(model.norm(batch.acts.view(2, 21, 32)), ref, atol=1e-5)


def test_open_clip_visual_tower():
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=28, patch_size=7, width=32, layers=2, heads=2, mlp_ratio=2.0, output_dim=16).eval()
    src = ImageSource(vit, "transformer.resblocks.1")
    batch = src.encode(_photos(2), 0)
    kinds = batch.kind.view(2, 17)
    assert (kinds[:, 0] == TokenKind.CLS).all() and (kinds[:, 1:] == TokenKind.PATCH).all()
    assert src.preprocess.mean[0] == pytest.approx(0.48145466)  # open_clip's (OpenAI) normalisation


def test_cnn_feature_map_tokens_and_stop_early():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    pre = ImagePreprocess((32, 24), 32)
    src = ImageSource(net, "2", preprocess=pre)
    images = _photos(3)
    b1 = src.encode(images, 0)  # first batch runs the whole model and checks the hook runs once
    b2 = src.encode(images, 0)  # later batches stop after the hook
    assert src._stop_ok is True and torch.equal(b1.acts, b2.acts)
    fmap = net[:3](torch.stack([pre(im) for im in images]))  # [3, 16, 8, 6]
    assert b1.acts.shape == (3 * 48, 16)
    h, w = 5, 4  # token h * W + w is the feature map at (h, w)
    assert torch.allclose(b1.acts.view(3, 48, 16)[:, h * 6 + w], fmap[:, :, h, w], atol=1e-6)
    assert (b1.kind == TokenKind.PATCH).all() and b1.records[0]["grid"] == [8, 6]
    pooled = ImageSource(net, "5", preprocess=pre).encode(images, 0)
    assert pooled.acts.shape == (3, 16) and (pooled.kind == TokenKind.POOLED).all()


def _small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Conv2d(16, 16, 3, groups=16, padding=1)).eval()


def test_cnn_runs_channels_last_with_the_same_rows():
    import copy

    net = _small_cnn()
    untouched = copy.deepcopy(net)
    pre = ImagePreprocess((32, 24), 32)
    fast, plain = ImageSource(net, "4", preprocess=pre), ImageSource(untouched, "4", preprocess=pre, nhwc=False)
    assert fast.nhwc and not plain.nhwc
    images = _photos(3)
    a, b = fast.encode(images, 0), plain.encode(images, 0)
    torch.testing.assert_close(a.acts, b.acts, rtol=1e-5, atol=1e-6)
    assert a.records == b.records and torch.equal(a.kind, b.kind)
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert untouched[0].weight.is_contiguous() and not untouched[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_a_model_that_cannot_take_nhwc_input_falls_back_or_raises_when_asked():
    class Flattening(nn.Module):  # views its input as [B, 3*H*W]: needs the usual layout
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.full((3 * 8 * 8,), 0.5))
            self.conv2d = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            y = x.view(x.shape[0], -1) * self.scale
            return self.conv2d(y.view(x.shape))

    pre = ImagePreprocess((8, 8), 8)
    images = _photos(2)
    torch.manual_seed(0)
    net = Flattening().eval()
    expected = ImageSource(net, "conv2d", preprocess=pre, nhwc=False).encode(images, 0).acts
    src = ImageSource(net, "conv2d", preprocess=pre)
    with pytest.warns(UserWarning, match="channels-last input"):
        got = src.encode(images, 0).acts
    assert not src.nhwc and torch.equal(got, expected)
    assert torch.equal(src.encode(images, 0).acts, expected)  # no second attempt
    with pytest.raises(RuntimeError):
        ImageSource(net, "conv2d", preprocess=pre, nhwc=True).encode(images, 0)


def test_module_called_twice_keeps_last_call():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.Tanh()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.act(self.conv(self.act(x)))

    net = Twice().eval()
    src = ImageSource(net, "act", preprocess=ImagePreprocess((8, 8), 8))
    imgs = _photos(1)
    for _ in range(2):
        b = src.encode(imgs, 0)
        assert b.acts.shape == (64, 4)  # the second call's output, every time
    assert src._stop_ok is False


def test_pil_modes_all_become_rgb(tmp_path):
    from skimage import data

    rgb = data.astronaut()[::4, ::4]
    gray = data.camera()[::4, ::4]
    cases = {
        "rgb.png": Image.fromarray(rgb),
        "l.png": Image.fromarray(gray),
        "rgba.png": Image.fromarray(rgb).convert("RGBA"),
        "p.png": Image.fromarray(rgb).convert("P"),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "la.png": Image.fromarray(gray).convert("LA"),
        "one.png": Image.fromarray(gray).convert("1"),
        "gray16.png": Image.fromarray(gray.astype(np.uint16) * 257),
    }
    for name, im in cases.items():
        im.save(tmp_path / name)
        out = load_image(tmp_path / name)
        assert out.mode == "RGB" and out.size == im.size, name
    g16 = np.asarray(load_image(tmp_path / "gray16.png"))[..., 0].astype(int)
    assert np.abs(g16 - gray.astype(int)).max() <= 1  # scaled down, not clipped to white
    f = to_rgb(Image.fromarray(gray.astype(np.float32) / 255.0, mode="F"))
    assert np.abs(np.asarray(f)[..., 0].astype(int) - gray.astype(int)).max() <= 1


def test_unreadable_file_is_named_or_skipped(tmp_path):
    good = tmp_path / "good.png"
    _photos(1)[0].save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    missing = tmp_path / "missing.png"
    net = nn.Conv2d(3, 4, 4, stride=4).eval()
    wrapper = nn.Sequential(net).eval()
    src = ImageSource(wrapper, "0", preprocess=ImagePreprocess((16, 16), 16))
    with pytest.raises(ImageReadError, match="bad.jpg"):
        src.encode([str(good), str(bad)], 0)
    with pytest.raises(ImageReadError, match="missing.png"):
        src.encode([str(missing)], 0)
    skip = ImageSource(wrapper, "0", preprocess=ImagePreprocess((16, 16), 16), on_error="skip")
    batch = skip.encode([str(bad), str(good), str(missing)], 7)
    assert batch.input_id.unique().tolist() == [8]
    assert [s["input_id"] for s in batch.skipped] == [7, 9]
    assert "bad.jpg" in batch.skipped[0]["reason"]
