"""The encoder against the original's layout (docs/method.md section 3) and the fast inference paths."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import SHARED, random_model

from coala_embed.model import AudioEncoder, TagEncoder, fold_conv_bn


def _original_keys(section: str) -> dict[str, list[int]]:
    path = SHARED / "coala" / "keys.txt"
    if not path.exists():
        pytest.skip("../shared/coala/keys.txt is not beside the checkout")
    keys, current = {}, None
    for line in path.read_text().splitlines():
        if line.startswith("###"):
            current = line
        elif current and section in current and line.strip():
            name, shape = line.split(None, 1)
            keys[name] = [int(x) for x in re.findall(r"\d+", shape)]
    return keys


def test_audio_encoder_state_dict_matches_the_original():
    ours = {k: list(v.shape) for k, v in AudioEncoder().state_dict().items()}
    assert ours == _original_keys("AudioEncoder")
    n = sum(p.numel() for p in AudioEncoder().parameters())
    assert n == 2_379_648


def test_tag_encoder_state_dict_matches_the_original():
    ours = {k: list(v.shape) for k, v in TagEncoder(1000).state_dict().items()}
    assert ours == _original_keys("TagEncoder")
    assert sum(p.numel() for p in TagEncoder(1000).parameters()) == 2_697_600


def test_shapes_and_flatten_order():
    enc = AudioEncoder().eval()
    x = torch.rand(2, 1, 96, 96)
    z, zd = enc(x)
    assert z.shape == zd.shape == (2, 1152)
    conv = enc.audio_encoder[:-1](x)  # before Flatten: [2, 128, 3, 3]
    assert conv.shape == (2, 128, 3, 3)
    c, h, w = 5, 1, 2
    assert torch.equal(z[:, c * 9 + h * 3 + w], conv[:, c, h, w])  # C-major, as the original
    assert (z >= 0).all()


def test_fold_conv_bn_equals_conv_then_bn():
    conv, bn = torch.nn.Conv2d(3, 8, 4, 2, 1), torch.nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 3)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    bn.eval()
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(fold_conv_bn(conv, bn)(x), bn(conv(x)), atol=1e-5, rtol=1e-5)


def test_folded_channels_last_equals_unfolded_within_1e5():
    model = random_model()
    x = torch.randn(16, 96, 96) * 2 - 6  # log-mel-like values
    with torch.no_grad():
        ref = model.eval()(x)  # not optimised: BN modules, contiguous memory
        model.optimize(fold_bn=True, channels_last=True)
        fast = model(x)
    assert (fast - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("readout", ["z", "z+max"])
def test_bf16_stays_within_stated_tolerance(readout):
    """bf16 autocast keeps embeddings within 5% relative (L2) of fp32: the README's stated tolerance (with the
    block maxima too, which bf16 takes through the pooling kernel)."""
    model = _with_readout(random_model(), readout).optimize()
    x = torch.randn(16, 96, 96) * 2 - 6
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x).float()
    rel = ((low - ref).norm(dim=1) / ref.norm(dim=1)).max().item()
    assert rel < 0.05
    cos = torch.nn.functional.cosine_similarity(low, ref).min().item()
    assert cos > 0.998


def test_scaler_is_per_time_column():
    model = random_model()
    with torch.no_grad():
        model.scaler_scale.copy_(torch.arange(96, dtype=torch.float32))
        model.scaler_min.zero_()
    x = torch.ones(1, 96, 96)
    scaled = model.scale(x)
    assert torch.equal(scaled[0, :, 5], torch.full((96,), 5.0))  # every mel row of time column 5
    assert torch.equal(scaled[0, 7, :], torch.arange(96, dtype=torch.float32))


def _with_readout(model, readout: str, stat: str = "mean"):
    from dataclasses import replace

    model.config = replace(model.config, clip=replace(model.config.clip, readout=readout, stat=stat))
    return model


def test_z_max_readout_is_z_then_the_block_maxima_on_every_path():
    """``z+max``: z unchanged, then each channel's maximum over the feature map of blocks 1-4, the same on the
    training layout (BatchNorm modules) and the folded channels-last fast path."""
    model = _with_readout(random_model(), "z+max")
    x = torch.randn(8, 96, 96) * 2 - 6
    with torch.no_grad():
        ref = model.eval()(x)
        z = _with_readout(random_model(), "z").eval()(x)
        h = model.scale(x).unsqueeze(1)
        maxima = []
        for layer in model.audio.audio_encoder:
            h = layer(h)
            if isinstance(layer, torch.nn.ReLU) and len(maxima) < 4:
                maxima.append(h.flatten(2).max(dim=2).values)
        fast = model.optimize(fold_bn=True, channels_last=True)(x)
    assert ref.shape == (8, model.config.readout_dim) == (8, 1152 + 4 * 128)
    assert torch.equal(ref[:, :1152], z)
    torch.testing.assert_close(ref[:, 1152:], torch.cat(maxima, 1), atol=0, rtol=0)
    assert (fast - ref).abs().max().item() <= 1e-5
    assert model.config.clip_dim == 1664 and _with_readout(model, "z+max", "meanstd").config.clip_dim == 3328


def test_the_audio_encoder_gives_the_z_max_columns_that_training_sees():
    """``AudioEncoder(x, maxima=True)`` (what the invariance loss's ``view.readout=z+max`` trains on) returns z, z_d
    and the block maxima that the shipped ``z+max`` readout puts after z, bit for bit."""
    model = _with_readout(random_model(), "z+max").eval()
    x = torch.randn(8, 96, 96) * 2 - 6
    with torch.no_grad():
        ref = model(x)
        z, z_d, m = model.audio(model.scale(x).unsqueeze(1), maxima=True)
        z0, z_d0 = model.audio(model.scale(x).unsqueeze(1))
    assert torch.equal(z, z0) and torch.equal(z_d, z_d0)
    assert torch.equal(torch.cat([z, m], 1), ref)
