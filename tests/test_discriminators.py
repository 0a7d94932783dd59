"""Discriminators: output shapes, BasicSR / Real-ESRGAN key names, parameter counts by hand, spectral norm,
input checks, backward passes and the registry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from train.discriminators import (
    DISCRIMINATORS,
    SRGANDiscriminator,
    UNetDiscriminatorSN,
    VGGStyleDiscriminator,
    build_discriminator,
)


@pytest.fixture(autouse=True)
def _seeded() -> Iterator[None]:
    """Each test starts from seed 0, and the process's random state is put back after it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv(cin: int, cout: int, k: int, bias: bool) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c  # affine weight and bias


def backward_reaches_all_parameters(model: nn.Module, x: torch.Tensor) -> None:
    model.train()
    model.zero_grad()
    out = model(x)
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert sum(p.grad.abs().sum().item() for p in model.parameters() if p.grad is not None) > 0


# ------------------------------------------------------------------------------------------------ VGG-style


def test_vgg_style_128_shape_keys_and_parameter_count():
    d = VGGStyleDiscriminator(num_in_ch=3, num_feat=64, input_size=128)
    x = torch.rand(2, 3, 128, 128)
    d.eval()
    with torch.no_grad():
        assert d(x).shape == (2, 1)
    sd = d.state_dict()
    for k in ("conv0_0.weight", "conv0_0.bias", "conv0_1.weight", "bn0_1.weight", "bn0_1.bias", "bn0_1.running_mean",
              "bn0_1.running_var", "conv4_1.weight", "bn4_1.running_var", "linear1.weight", "linear1.bias",
              "linear2.weight", "linear2.bias"):  # fmt: skip
        assert k in sd, k
    assert "conv0_1.bias" not in sd and "conv1_0.bias" not in sd and "conv5_0.weight" not in sd
    assert sd["linear1.weight"].shape == (100, 8 * 64 * 16)
    assert sd["linear2.weight"].shape == (1, 100)

    nf = 64
    expected = (
        conv(3, nf, 3, True)
        + conv(nf, nf, 4, False) + bn(nf)  # conv0_1, bn0_1
        + conv(nf, 2 * nf, 3, False) + bn(2 * nf)  # conv1_0
        + conv(2 * nf, 2 * nf, 4, False) + bn(2 * nf)  # conv1_1
        + conv(2 * nf, 4 * nf, 3, False) + bn(4 * nf)  # conv2_0
        + conv(4 * nf, 4 * nf, 4, False) + bn(4 * nf)  # conv2_1
        + conv(4 * nf, 8 * nf, 3, False) + bn(8 * nf)  # conv3_0
        + conv(8 * nf, 8 * nf, 4, False) + bn(8 * nf)  # conv3_1
        + conv(8 * nf, 8 * nf, 3, False) + bn(8 * nf)  # conv4_0
        + conv(8 * nf, 8 * nf, 4, False) + bn(8 * nf)  # conv4_1
        + (8 * nf * 4 * 4 * 100 + 100)  # linear1
        + (100 + 1)  # linear2
    )  # fmt: skip
    print(f"VGGStyleDiscriminator(nf=64, 128): {n_params(d):,} parameters (by hand {expected:,})")
    assert n_params(d) == expected == 14_499_401


def test_vgg_style_256_and_input_checks():
    d = VGGStyleDiscriminator(num_feat=8, input_size=256)
    assert "conv5_0.weight" in d.state_dict() and "bn5_1.running_mean" in d.state_dict()
    assert d.state_dict()["linear1.weight"].shape == (100, 8 * 8 * 16)
    with torch.no_grad():
        assert d.eval()(torch.rand(1, 3, 256, 256)).shape == (1, 1)
    with pytest.raises(ValueError, match="256"):
        d(torch.rand(1, 3, 128, 128))
    d128 = VGGStyleDiscriminator(num_feat=8)
    with pytest.raises(ValueError, match="128") as e:
        d128(torch.rand(1, 3, 96, 96))
    assert "gt_size" in str(e.value)
    with pytest.raises(ValueError, match="128"):
        d128(torch.rand(1, 3, 128, 96))
    with pytest.raises(ValueError, match="128 or 256"):
        VGGStyleDiscriminator(input_size=192)


def test_vgg_style_backward():
    backward_reaches_all_parameters(VGGStyleDiscriminator(num_feat=16), torch.rand(2, 3, 128, 128))


# ------------------------------------------------------------------------------------------------ U-Net SN


def test_unet_shape_and_keys():
    d = UNetDiscriminatorSN(num_in_ch=3, num_feat=16)
    with torch.no_grad():
        out = d.eval()(torch.rand(2, 3, 32, 48))
    assert out.shape == (2, 1, 32, 48)
    expected = {"conv0.weight", "conv0.bias", "conv9.weight", "conv9.bias"}
    for i in range(1, 9):
        expected |= {f"conv{i}.weight_orig", f"conv{i}.weight_u", f"conv{i}.weight_v"}
    assert set(d.state_dict()) == expected  # Real-ESRGAN's net_d keys
    assert d.state_dict()["conv1.weight_orig"].shape == (32, 16, 4, 4)
    assert d.state_dict()["conv4.weight_orig"].shape == (64, 128, 3, 3)
    assert d.state_dict()["conv9.weight"].shape == (1, 16, 3, 3)
    nf = 16
    by_hand = (
        conv(3, nf, 3, True) + conv(nf, 2 * nf, 4, False) + conv(2 * nf, 4 * nf, 4, False)
        + conv(4 * nf, 8 * nf, 4, False) + conv(8 * nf, 4 * nf, 3, False) + conv(4 * nf, 2 * nf, 3, False)
        + conv(2 * nf, nf, 3, False) + 2 * conv(nf, nf, 3, False) + conv(nf, 1, 3, True)
    )  # fmt: skip
    assert n_params(d) == by_hand
    assert n_params(UNetDiscriminatorSN()) == 4_376_897  # Real-ESRGAN's net_d (num_feat 64)


def test_unet_without_skip_connections_differs():
    torch.manual_seed(1)
    a = UNetDiscriminatorSN(num_feat=8, skip_connection=True).eval()
    b = UNetDiscriminatorSN(num_feat=8, skip_connection=False).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))


def test_unet_spectral_norm_bounds_largest_singular_value():
    torch.manual_seed(2)
    d = UNetDiscriminatorSN(num_feat=16).train()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        d.conv1.weight_orig.mul_(4.0)  # the default init has sigma < 1; make the normalization do something
    w_orig = d.conv1.weight_orig.detach()
    sigma_orig = torch.linalg.matrix_norm(w_orig.reshape(w_orig.shape[0], -1), ord=2).item()
    for _ in range(10):
        d(x)
    w = d.conv1.weight.detach()
    sigma = torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2).item()
    print(f"conv1: sigma(weight_orig) = {sigma_orig:.4f}, sigma(weight) after 10 passes = {sigma:.5f}")
    assert sigma_orig > 1.5  # the normalization does something
    assert 1.0 - 1e-4 <= sigma <= 1.05  # the power-iteration estimate never exceeds the true sigma


def test_unet_input_checks_and_backward():
    d = UNetDiscriminatorSN(num_feat=8)
    with pytest.raises(ValueError, match="multiples of 8"):
        d(torch.rand(1, 3, 32, 36))
    with pytest.raises(ValueError, match="multiples of 8"):
        d(torch.rand(1, 3, 20, 32))
    backward_reaches_all_parameters(d, torch.rand(2, 3, 24, 40))


# ------------------------------------------------------------------------------------------------ SRGAN


def test_srgan_shapes_and_parameter_count():
    d = SRGANDiscriminator().eval()
    with torch.no_grad():
        assert d(torch.rand(2, 3, 96, 96)).shape == (2, 1)
        assert d(torch.rand(1, 3, 64, 80)).shape == (1, 1)
        assert d(torch.rand(1, 3, 16, 16)).shape == (1, 1)
    with pytest.raises(ValueError, match="16"):
        d(torch.rand(1, 3, 8, 32))
    by_hand = (
        conv(3, 64, 3, True)
        + conv(64, 64, 3, False) + bn(64)
        + conv(64, 128, 3, False) + bn(128) + conv(128, 128, 3, False) + bn(128)
        + conv(128, 256, 3, False) + bn(256) + conv(256, 256, 3, False) + bn(256)
        + conv(256, 512, 3, False) + bn(512) + conv(512, 512, 3, False) + bn(512)
        + conv(512, 1024, 1, True) + conv(1024, 1, 1, True)
    )  # fmt: skip
    print(f"SRGANDiscriminator(nf=64): {n_params(d):,} parameters")
    assert n_params(d) == by_hand


def test_srgan_backward():
    backward_reaches_all_parameters(SRGANDiscriminator(num_feat=16), torch.rand(2, 3, 32, 40))


# ------------------------------------------------------------------------------------------------ registry


def test_registry():
    assert set(DISCRIMINATORS) == {"vgg128", "unet", "unet-gan", "srgan"}
    d = build_discriminator("vgg128", num_feat=8)
    assert isinstance(d, VGGStyleDiscriminator) and d.input_size == 128
    assert isinstance(build_discriminator("unet", num_feat=8, skip_connection=False), UNetDiscriminatorSN)
    assert isinstance(build_discriminator("srgan", num_in_ch=1, num_feat=8), SRGANDiscriminator)
    with pytest.raises(ValueError, match="vgg128") as e:
        build_discriminator("patchgan")
    assert "unet" in str(e.value) and "srgan" in str(e.value) and "patchgan" in str(e.value)
    with pytest.raises(ValueError, match="input_size"):
        build_discriminator("vgg128", input_size=256)


def test_unet_gan_gives_global_and_per_pixel_logits_and_features():
    """U-Net GAN's discriminator: the encoder's global logit is the spectral-normalized linear layer over the
    bottleneck summed over space, the decoder's logits are the plain U-Net's, and the features are its stages."""
    torch.manual_seed(0)
    d = build_discriminator("unet-gan", num_feat=8).eval()
    x = torch.rand(2, 3, 32, 24)
    out = d.forward_all(x)
    assert out.encoder.shape == (2, 1) and out.decoder.shape == (2, 1, 32, 24)
    assert [tuple(f.shape[1:]) for f in out.features] == [(8, 32, 24), (16, 16, 12), (32, 8, 6), (64, 4, 3),
                                                          (32, 8, 6), (16, 16, 12), (8, 32, 24)]
    with torch.no_grad():
        torch.testing.assert_close(out.decoder, d(x))
        w = d.linear_enc.weight  # the normalized weight spectral_norm computed for this (eval) forward
        torch.testing.assert_close(out.encoder, out.features[3].sum(dim=(2, 3)) @ w.t() + d.linear_enc.bias)
    assert "linear_enc.weight_orig" in d.state_dict()
    plain = build_discriminator("unet", num_feat=8)
    assert "linear_enc.weight_orig" not in plain.state_dict()  # Real-ESRGAN's keys are unchanged
    with pytest.raises(ValueError, match="encoder_head"):
        plain.forward_all(x)
    (out.encoder.sum() + out.decoder.sum()).backward()
    assert d.conv0.weight.grad is not None and d.linear_enc.weight_orig.grad is not None
