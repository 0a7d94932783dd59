"""VGG19 features (torchvision layout, against an independent float64 network), the perceptual loss, and the
GAN losses against their formulas written out with -log(sigmoid(.)) in float64."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from train.discriminators import UNetOutput
from train.losses import (
    ESRGAN_LAYER_WEIGHTS,
    REAL_ESRGAN_LAYER_WEIGHTS,
    PerceptualLoss,
    ragan_d_loss,
    ragan_g_loss,
    vanilla_d_loss,
    vanilla_g_loss,
)
from train.vgg import VGG19_LAYERS, VGG19Features

CFG_E: list[int | str] = [
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
]  # fmt: skip
CONV_IDX = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
POOL_IDX = (4, 9, 18, 27, 36)
MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)


def independent_vgg19(seed: int = 0) -> nn.Sequential:
    """torchvision's vgg19().features written from configuration 'E', with random weights that keep the
    activations' scale (He-normal) and non-zero biases, so that every tensor matters."""
    layers: list[nn.Module] = []
    c = 3
    for v in CFG_E:
        if isinstance(v, str):
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            c = v
    seq = nn.Sequential(*layers)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in seq:
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return seq


def name_to_index(name: str) -> int:
    # Written independently of train.vgg: walk the config.
    i, block, conv = 0, 1, 1
    for v in CFG_E:
        if v == "M":
            if name == f"pool{block}":
                return i
            i, block, conv = i + 1, block + 1, 1
        else:
            if name == f"conv{block}_{conv}":
                return i
            if name == f"relu{block}_{conv}":
                return i + 1
            i, conv = i + 2, conv + 1
    raise KeyError(name)


def reference_features(seq: nn.Sequential, x: torch.Tensor, names, *, norm: bool = True) -> dict[str, torch.Tensor]:
    """Activations of the independent network in float64, input normalized by hand."""
    x = x.double()
    if norm:
        x = (x - MEAN) / STD
    want = {name_to_index(n): n for n in names}
    out = {}
    with torch.no_grad():
        for i, m in enumerate(seq.double()):
            x = m(x)
            if i in want:
                out[want[i]] = x.clone()
            if i == max(want):
                break
    return out


@pytest.fixture(scope="module")
def tv(tmp_path_factory):
    """(independent float64 network, torchvision-layout state dict, its .pth path)."""
    seq = independent_vgg19(0)
    sd = {f"features.{k}": v.clone() for k, v in seq.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    sd["classifier.0.weight"] = torch.randn(16, 8, generator=g)  # fake classifier keys, ignored
    sd["classifier.0.bias"] = torch.randn(16, generator=g)
    sd["classifier.6.weight"] = torch.randn(10, 16, generator=g)
    path = tmp_path_factory.mktemp("vgg") / "vgg19-fake.pth"
    torch.save(sd, path)
    return seq.double(), sd, path


def rand_img(*shape, seed=0, lo=0.0, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 2e-4):
    """float32 network vs float64 reference: relative to the activation scale."""
    a, b = a.double(), b.double()
    assert a.shape == b.shape
    scale = b.abs().max().item()
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * scale)


# ------------------------------------------------------------------------------------------------ VGG19Features


def test_layer_names_follow_torchvision_indices():
    assert len(VGG19_LAYERS) == 37
    assert VGG19_LAYERS[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")
    assert VGG19_LAYERS[34] == "conv5_4" and VGG19_LAYERS[35] == "relu5_4" and VGG19_LAYERS[36] == "pool5"
    assert [i for i, n in enumerate(VGG19_LAYERS) if n.startswith("conv")] == list(CONV_IDX)
    assert [i for i, n in enumerate(VGG19_LAYERS) if n.startswith("pool")] == list(POOL_IDX)
    for i, n in enumerate(VGG19_LAYERS):
        assert name_to_index(n) == i


def test_structure_matches_torchvision():
    f = VGG19Features(["pool5"], random_init=True).features
    assert len(f) == 37
    ref = independent_vgg19()
    for i, (m, r) in enumerate(zip(f, ref, strict=True)):
        assert type(m) is type(r), i
        if i in CONV_IDX:
            assert isinstance(m, nn.Conv2d)
            assert (m.in_channels, m.out_channels, m.kernel_size, m.padding) == (
                r.in_channels, r.out_channels, (3, 3), (1, 1),
            )  # fmt: skip
        elif i in POOL_IDX:
            assert isinstance(m, nn.MaxPool2d) and m.kernel_size == 2 and m.stride == 2
        else:
            assert isinstance(m, nn.ReLU) and not m.inplace
    assert set(f.state_dict()) == set(ref.state_dict())


def test_loads_torchvision_state_dict_and_matches_independent_network(tv):
    seq, _, path = tv
    names = ["conv1_2", "relu2_2", "pool2", "conv3_4", "relu4_1", "conv5_4", "relu5_4"]
    vgg = VGG19Features(names, weights=path)
    x = rand_img(2, 3, 32, 32, seed=3)
    with torch.no_grad():
        got = vgg(x)
    assert list(got) == names  # exactly the requested layers, in order
    ref = reference_features(seq, x, names)
    for n in names:
        close(got[n], ref[n])
    # pre-ReLU features really have negatives, post-ReLU ones do not
    assert (got["conv5_4"] < 0).float().mean() > 0.1
    assert (got["relu5_4"] >= 0).all()
    assert got["conv5_4"].shape == (2, 512, 2, 2)


def test_range_norm_and_no_input_norm(tv):
    seq, _, path = tv
    x = rand_img(1, 3, 16, 16, seed=4)
    ref = reference_features(seq, x, ["conv3_1"])["conv3_1"]
    vgg = VGG19Features(["conv3_1"], weights=path, range_norm=True)
    with torch.no_grad():
        close(vgg(2 * x - 1)["conv3_1"], ref)  # [-1, 1] input mapped to [0, 1] first
    vgg = VGG19Features(["conv3_1"], weights=path, use_input_norm=False)
    with torch.no_grad():
        close(vgg(x)["conv3_1"], reference_features(seq, x, ["conv3_1"], norm=False)["conv3_1"])


def test_loads_bare_features_dict_and_safetensors(tv, tmp_path):
    from safetensors.torch import save_file

    seq, sd, _ = tv
    feats_only = {k: v for k, v in sd.items() if k.startswith("features.")}
    p1 = tmp_path / "bare.pth"
    torch.save(feats_only, p1)
    p2 = tmp_path / "vgg.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(p2))
    x = rand_img(1, 3, 16, 16, seed=5)
    ref = reference_features(seq, x, ["conv4_4"])["conv4_4"]
    for p in (p1, p2):
        with torch.no_grad():
            close(VGG19Features(["conv4_4"], weights=p)(x)["conv4_4"], ref)


def test_missing_weights_message():
    with pytest.raises(FileNotFoundError) as e:
        VGG19Features(["conv5_4"])
    msg = str(e.value)
    assert "--vgg19-weights" in msg and "vgg19" in msg and "vgg19-dcbb9e9d.pth" in msg
    assert "--perceptual-random-init" in msg
    with pytest.raises(FileNotFoundError, match="--vgg19-weights"):
        PerceptualLoss(ESRGAN_LAYER_WEIGHTS)


def test_nonexistent_path(tmp_path):
    p = tmp_path / "nope" / "vgg19.pth"
    with pytest.raises(FileNotFoundError, match="nope"):
        VGG19Features(["conv5_4"], weights=p)


def test_missing_key_and_wrong_shape(tv, tmp_path):
    _, sd, _ = tv
    bad = dict(sd)
    del bad["features.10.weight"]
    p = tmp_path / "missing.pth"
    torch.save(bad, p)
    with pytest.raises(ValueError, match=r"features\.10\.weight") as e:
        VGG19Features(["conv5_4"], weights=p)
    assert "missing.pth" in str(e.value)
    # the truncated network for conv2_2 does not need features.10
    VGG19Features(["conv2_2"], weights=p)

    bad = dict(sd)
    bad["features.2.bias"] = torch.zeros(32)
    p = tmp_path / "shape.pth"
    torch.save(bad, p)
    with pytest.raises(ValueError, match=r"features\.2\.bias") as e:
        VGG19Features(["conv5_4"], weights=p)
    assert "shape.pth" in str(e.value)


_UNPICKLED: list[str] = []


def _mark_unpickled(tag: str) -> str:
    _UNPICKLED.append(tag)
    return tag


class _Payload:
    def __reduce__(self):
        return (_mark_unpickled, ("ran",))


def test_weights_only_refuses_pickled_objects(tv, tmp_path):
    _, sd, _ = tv
    evil = dict(sd)
    evil["extra"] = _Payload()
    p = tmp_path / "evil.pth"
    torch.save(evil, p)
    with pytest.raises(ValueError, match="weights_only") as e:
        VGG19Features(["conv1_1"], weights=p)
    assert "evil.pth" in str(e.value) and "_mark_unpickled" in str(e.value)
    assert "weights_only` set to `False`" not in str(e.value)  # torch's advice to unpickle anyway is not passed on
    assert _UNPICKLED == []  # the payload was never executed


def test_unreadable_weights_files_are_value_errors(tv, tmp_path):
    _, sd, _ = tv
    torch.save(sd, tmp_path / "whole.pth")
    (tmp_path / "truncated.pth").write_bytes((tmp_path / "whole.pth").read_bytes()[:500])
    (tmp_path / "empty.pth").write_bytes(b"")
    for name, match in (("truncated.pth", "truncated or not a .pth: PytorchStreamReader failed"),
                        ("empty.pth", "truncated or not a .pth: EOFError")):
        with pytest.raises(ValueError, match=match) as e:
            VGG19Features(["conv1_1"], weights=tmp_path / name)
        assert name in str(e.value)


def test_unknown_layer_and_argument_errors():
    with pytest.raises(ValueError, match="conv5_4") as e:
        VGG19Features(["conv5_5"], random_init=True)
    assert "conv5_5" in str(e.value) and "relu1_1" in str(e.value)
    with pytest.raises(ValueError):
        VGG19Features([], random_init=True)
    with pytest.raises(ValueError, match="not both"):
        VGG19Features(["conv1_1"], weights="x.pth", random_init=True)
    with pytest.raises(ValueError, match="criterion"):
        PerceptualLoss(ESRGAN_LAYER_WEIGHTS, criterion="l3", random_init=True)


def test_truncation_frozen_and_eval():
    vgg = VGG19Features(["conv2_2"], random_init=True)
    assert len(vgg.features) == 8  # modules 0..7, conv2_2 is features.7
    assert isinstance(vgg.features[7], nn.Conv2d)
    assert len(VGG19Features(["relu2_2", "conv1_1"], random_init=True).features) == 9
    assert all(not p.requires_grad for p in vgg.parameters())
    assert set(vgg.state_dict()) == {f"features.{i}.{k}" for i in (0, 2, 5, 7) for k in ("weight", "bias")}
    vgg.train()
    assert not vgg.training and not any(m.training for m in vgg.modules())
    loss = PerceptualLoss({"conv2_2": 1.0}, random_init=True)
    loss.train()
    assert not loss.vgg.training
    # frozen parameters, but gradients reach the input
    x = rand_img(1, 3, 16, 16).requires_grad_(True)
    vgg(x)["conv2_2"].square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in vgg.parameters())


def test_random_init_is_deterministic():
    a = VGG19Features(["conv3_1"], random_init=True).state_dict()
    b = VGG19Features(["conv3_1"], random_init=True).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ PerceptualLoss


def test_perceptual_loss_uses_pre_activation_features(tv):
    seq, _, path = tv
    x = rand_img(2, 3, 32, 32, seed=10)
    gt = rand_img(2, 3, 32, 32, seed=11)
    conv = PerceptualLoss({"conv5_4": 1.0}, weights=path)(x, gt)
    relu = PerceptualLoss({"relu5_4": 1.0}, weights=path)(x, gt)
    fx = reference_features(seq, x, ["conv5_4"])["conv5_4"]
    fg = reference_features(seq, gt, ["conv5_4"])["conv5_4"]
    expected_conv = (fx - fg).abs().mean().item()
    expected_relu = (fx.relu() - fg.relu()).abs().mean().item()
    print(f"conv5_4 L1 {conv.item():.6f} (ref {expected_conv:.6f}), relu5_4 L1 {relu.item():.6f} "
          f"(ref {expected_relu:.6f})")  # fmt: skip
    assert conv.item() == pytest.approx(expected_conv, rel=1e-4)
    assert relu.item() == pytest.approx(expected_relu, rel=1e-4)
    assert abs(conv.item() - relu.item()) > 0.05 * conv.item()
    assert ESRGAN_LAYER_WEIGHTS == {"conv5_4": 1.0}


def test_real_esrgan_layer_weights_and_criteria(tv):
    seq, _, path = tv
    x = rand_img(2, 3, 32, 32, seed=12)
    gt = rand_img(2, 3, 32, 32, seed=13)
    names = list(REAL_ESRGAN_LAYER_WEIGHTS)
    fx = reference_features(seq, x, names)
    fg = reference_features(seq, gt, names)
    by_hand = {
        "l1": sum(w * (fx[n] - fg[n]).abs().mean() for n, w in REAL_ESRGAN_LAYER_WEIGHTS.items()),
        "mse": sum(w * (fx[n] - fg[n]).square().mean() for n, w in REAL_ESRGAN_LAYER_WEIGHTS.items()),
        "fro": sum(w * (fx[n] - fg[n]).square().sum().sqrt() for n, w in REAL_ESRGAN_LAYER_WEIGHTS.items()),
    }
    for crit, expected in by_hand.items():
        got = PerceptualLoss(REAL_ESRGAN_LAYER_WEIGHTS, criterion=crit, weights=path)(x, gt)
        print(f"{crit}: {got.item():.6f} (by hand {expected.item():.6f})")
        assert got.dtype == torch.float32 and got.dim() == 0
        assert got.item() == pytest.approx(expected.item(), rel=1e-4)
    assert REAL_ESRGAN_LAYER_WEIGHTS == {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}


def test_perceptual_loss_gradient_only_through_x(tv):
    _, _, path = tv
    loss_fn = PerceptualLoss(ESRGAN_LAYER_WEIGHTS, weights=path)
    x = rand_img(1, 3, 32, 32, seed=14).requires_grad_(True)
    gt = rand_img(1, 3, 32, 32, seed=15).requires_grad_(True)
    loss_fn(x, gt).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert gt.grad is None
    assert PerceptualLoss(ESRGAN_LAYER_WEIGHTS, weights=path)(gt.detach(), gt.detach()).item() == 0.0


def test_perceptual_loss_float32_under_autocast():
    loss_fn = PerceptualLoss(REAL_ESRGAN_LAYER_WEIGHTS, random_init=True)
    x = rand_img(2, 3, 32, 32, seed=16)
    gt = rand_img(2, 3, 32, 32, seed=17)
    plain = loss_fn(x, gt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = loss_fn(x, gt)
        auto_bf16_in = loss_fn(x.bfloat16(), gt.bfloat16())
    assert auto.dtype == torch.float32 and auto_bf16_in.dtype == torch.float32
    torch.testing.assert_close(auto, plain, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(auto_bf16_in, loss_fn(x.bfloat16().float(), gt.bfloat16().float()), rtol=1e-6, atol=0.0)


# ------------------------------------------------------------------------------------------------ GAN losses

REAL = [2.0, -1.0, 0.5]
FAKE = [0.3, -0.7, 1.1]


def nlog_sig(z: torch.Tensor) -> torch.Tensor:
    return -torch.log(torch.sigmoid(z))


def nlog_one_minus_sig(z: torch.Tensor) -> torch.Tensor:
    return -torch.log(1 - torch.sigmoid(z))


def ragan_d_by_hand(r: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return 0.5 * (nlog_sig(r - f.mean()).mean() + nlog_one_minus_sig(f - r.mean()).mean())


def ragan_g_by_hand(r: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return 0.5 * (nlog_one_minus_sig(r - f.mean()).mean() + nlog_sig(f - r.mean()).mean())


def test_ragan_losses_on_fixed_logits():
    r64 = torch.tensor(REAL, dtype=torch.float64)
    f64 = torch.tensor(FAKE, dtype=torch.float64)
    d_ref, g_ref = ragan_d_by_hand(r64, f64).item(), ragan_g_by_hand(r64, f64).item()
    # by hand once more, scalar arithmetic: mean(real) = 0.5, mean(fake) = 0.2333...
    mr, mf = sum(REAL) / 3, sum(FAKE) / 3
    sp = lambda z: math.log1p(math.exp(-z))  # -log(sigmoid(z))  # noqa: E731
    d_scalar = 0.5 * (sum(sp(r - mf) for r in REAL) / 3 + sum(sp(-(f - mr)) for f in FAKE) / 3)
    assert d_ref == pytest.approx(d_scalar, abs=1e-12)
    print(f"ragan_d {d_ref:.9f} ragan_g {g_ref:.9f}")

    r32, f32 = r64.float(), f64.float()
    d, g = ragan_d_loss(r32, f32), ragan_g_loss(r32, f32)
    assert d.dtype == torch.float32 and d.dim() == 0
    assert d.item() == pytest.approx(d_ref, abs=1e-6)
    assert g.item() == pytest.approx(g_ref, abs=1e-6)
    # float64 logits stay float64
    assert ragan_d_loss(r64, f64).item() == pytest.approx(d_ref, abs=1e-12)
    assert ragan_g_loss(r64, f64).item() == pytest.approx(g_ref, abs=1e-12)
    # (N, 1) logits as a VGG-style discriminator gives
    assert ragan_d_loss(r32.view(3, 1), f32.view(3, 1)).item() == pytest.approx(d_ref, abs=1e-6)


def test_ragan_per_pixel_logits_use_mean_over_all_elements():
    g = torch.Generator().manual_seed(0)
    r = 2 * torch.randn(2, 1, 4, 6, generator=g, dtype=torch.float64)
    f = 2 * torch.randn(2, 1, 4, 6, generator=g, dtype=torch.float64)
    assert ragan_d_loss(r, f).item() == pytest.approx(ragan_d_by_hand(r.flatten(), f.flatten()).item(), abs=1e-12)
    assert ragan_g_loss(r, f).item() == pytest.approx(ragan_g_by_hand(r.flatten(), f.flatten()).item(), abs=1e-12)
    assert ragan_d_loss(r.float(), f.float()).item() == pytest.approx(ragan_d_by_hand(r, f).item(), abs=1e-6)
    # bfloat16 logits (autocast) are computed in float32
    assert ragan_g_loss(r.bfloat16(), f.bfloat16()).dtype == torch.float32


def test_ragan_g_gradients_reach_both_inputs():
    r = torch.tensor(REAL, dtype=torch.float64, requires_grad=True)
    f = torch.tensor(FAKE, dtype=torch.float64, requires_grad=True)
    ragan_g_loss(r, f).backward()
    r2 = torch.tensor(REAL, dtype=torch.float64, requires_grad=True)
    f2 = torch.tensor(FAKE, dtype=torch.float64, requires_grad=True)
    ragan_g_by_hand(r2, f2).backward()
    assert r.grad.abs().min() > 0 and f.grad.abs().min() > 0
    torch.testing.assert_close(r.grad, r2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(f.grad, f2.grad, rtol=1e-10, atol=1e-12)
    # the discriminator loss too
    r.grad, f.grad = None, None
    ragan_d_loss(r, f).backward()
    assert r.grad.abs().min() > 0 and f.grad.abs().min() > 0


def test_vanilla_losses():
    r64 = torch.tensor(REAL, dtype=torch.float64)
    f64 = torch.tensor(FAKE, dtype=torch.float64)
    d_ref = 0.5 * (nlog_sig(r64).mean() + nlog_one_minus_sig(f64).mean()).item()
    g_ref = nlog_sig(f64).mean().item()
    print(f"vanilla_d {d_ref:.9f} vanilla_g {g_ref:.9f}")
    assert vanilla_d_loss(r64.float(), f64.float()).item() == pytest.approx(d_ref, abs=1e-6)
    assert vanilla_g_loss(f64.float()).item() == pytest.approx(g_ref, abs=1e-6)
    # large logits stay finite (logits, not probabilities)
    big = torch.tensor([80.0, -80.0])
    assert torch.isfinite(vanilla_d_loss(big, -big)) and torch.isfinite(ragan_g_loss(big, -big))
    assert vanilla_g_loss(torch.tensor([-80.0])).item() == pytest.approx(80.0, rel=1e-6)


# ---------------------------------------------------------------------------------------------------------
# U-Net discriminator, CutMix consistency and feature matching, against hand computations in numpy float64.


def _unet_out(seed: int, n: int = 2, h: int = 4, w: int = 6) -> UNetOutput:
    g = torch.Generator().manual_seed(seed)
    return UNetOutput(3 * torch.randn(n, 1, generator=g, dtype=torch.float64),
                      3 * torch.randn(n, 1, h, w, generator=g, dtype=torch.float64), [])


def test_unet_hinge_losses_equal_their_formulas() -> None:
    import numpy as np

    from train.losses import unet_d_loss, unet_g_loss

    real, fake = _unet_out(0), _unet_out(1)

    def hinge(v: torch.Tensor, sign: float) -> float:  # mean of max(0, 1 − sign·v), element by element
        return float(np.mean([max(0.0, 1.0 - sign * x) for x in v.numpy().ravel()]))

    want = hinge(real.encoder, 1) + hinge(fake.encoder, -1) + hinge(real.decoder, 1) + hinge(fake.decoder, -1)
    assert float(unet_d_loss(real, fake)) == pytest.approx(want, rel=1e-12)
    assert float(unet_g_loss(fake)) == pytest.approx(-fake.encoder.numpy().mean() - fake.decoder.numpy().mean())


def test_cutmix_consistency_and_mixed_image_loss_equal_their_definitions_on_a_fixed_mask() -> None:
    import numpy as np

    from train.losses import cutmix, cutmix_consistency_loss, unet_d_mix_loss

    mask = torch.zeros(2, 1, 4, 6, dtype=torch.float64)
    mask[0, :, 1:3, 2:5] = 1  # the real image shows through a box
    mask[1, :, :, :2] = 1
    real, fake, mixed = _unet_out(0), _unet_out(1), _unet_out(2)
    m, dr, df, dm = (t.numpy() for t in (mask, real.decoder, fake.decoder, mixed.decoder))
    total = 0.0
    for idx in np.ndindex(m.shape):  # ‖D_dec(mix) − (M·D_dec(x) + (1 − M)·D_dec(G(z)))‖², pixel by pixel
        target = dr[idx] if m[idx] == 1 else df[idx]
        total += (dm[idx] - target) ** 2
    got = cutmix_consistency_loss(mixed.decoder, real.decoder, fake.decoder, mask)
    assert float(got) == pytest.approx(total / m.size, rel=1e-12)
    # the decoder's labels follow the mask; the encoder calls the mixed image fake
    per_pixel = [max(0.0, 1 - dm[i]) if m[i] == 1 else max(0.0, 1 + dm[i]) for i in np.ndindex(m.shape)]
    enc = np.mean([max(0.0, 1 + v) for v in mixed.encoder.numpy().ravel()])
    assert float(unet_d_mix_loss(mixed, mask)) == pytest.approx(enc + np.mean(per_pixel), rel=1e-12)
    x, y = torch.ones(2, 3, 4, 6, dtype=torch.float64), torch.zeros(2, 3, 4, 6, dtype=torch.float64)
    assert torch.equal(cutmix(x, y, mask), mask.expand(2, 3, 4, 6))


def test_cutmix_masks_are_boxes_of_the_drawn_size_and_reproducible() -> None:
    from train.losses import cutmix_mask

    a = cutmix_mask(64, 32, 40, generator=torch.Generator().manual_seed(3))
    b = cutmix_mask(64, 32, 40, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and set(a.unique().tolist()) <= {0.0, 1.0}
    for m in a[:, 0]:
        rows, cols = m.any(dim=1).nonzero(), m.any(dim=0).nonzero()
        if len(rows):  # one axis-aligned box: every pixel between its first and last row and column is set
            assert m[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
            assert m.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert 0.2 < float(a.mean()) < 0.5  # E[1 − λ] = 1/2, less the clipping at the borders


def test_feature_matching_equals_a_hand_computation() -> None:
    import numpy as np

    from train.losses import feature_matching_loss

    g = torch.Generator().manual_seed(0)
    fake = [(2 * torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)).requires_grad_(),
            2 * torch.randn(2, 5, 2, 2, generator=g, dtype=torch.float64)]
    real = [2 * torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64),
            2 * torch.randn(2, 5, 2, 2, generator=g, dtype=torch.float64)]

    def huber(a: np.ndarray, b: np.ndarray) -> float:  # δ = 1
        d = np.abs(a - b)
        return float(np.mean(np.where(d < 1, 0.5 * d**2, d - 0.5)))

    per_layer = [huber(f.detach().numpy(), r.numpy()) for f, r in zip(fake, real, strict=True)]
    assert float(feature_matching_loss(fake, real)) == pytest.approx(np.mean(per_layer), rel=1e-12)
    assert float(feature_matching_loss(fake, real, [0.3, 2.0])) == pytest.approx(
        0.3 * per_layer[0] + 2.0 * per_layer[1], rel=1e-12)
    assert float(feature_matching_loss(real, real)) == 0.0
    with pytest.raises(ValueError, match="one per layer"):
        feature_matching_loss(fake, real, [1.0])
    feature_matching_loss(fake, real).backward()
    assert fake[0].grad is not None
