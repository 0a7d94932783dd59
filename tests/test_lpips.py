"""LPIPS (train.lpips): the formula written out by hand in float64 on injected feature maps, metric properties,
torchvision/reference weight layouts (against independently written networks), errors, autocast."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from train.lpips import LPIPS, lpips_distance

NETS = ("vgg", "alex")
CHANNELS = {"vgg": (64, 128, 256, 512, 512), "alex": (64, 192, 384, 256, 256)}
SIZE = 32  # AlexNet needs >= 31 pixels, VGG16 >= 16
SHIFT = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
SCALE = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)


def torchvision_features(net: str) -> nn.Sequential:
    """torchvision's `vgg16().features` / `alexnet().features`, written here independently of train.lpips."""
    if net == "alex":
        return nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        )  # fmt: skip
    layers: list[nn.Module] = []
    c = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if isinstance(v, str):
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = v
    return nn.Sequential(*layers)


# The reference's slices end after these modules (pretrained_networks.py: range(4), range(4, 9), ...).
TAPS = {"vgg": (3, 8, 15, 22, 29), "alex": (1, 4, 7, 9, 11)}


def torchvision_state_dict(net: str, seed: int = 0) -> dict[str, Tensor]:
    """A synthetic ImageNet file: torchvision's key names and shapes, random values, classifier keys included."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, t in torchvision_features(net).state_dict().items():
        fan_in = t[0].numel() if t.dim() == 4 else 1
        std = math.sqrt(2.0 / fan_in) if t.dim() == 4 else 0.1
        sd[f"features.{key}"] = torch.randn(t.shape, generator=g) * std
    sd["classifier.1.weight"] = torch.zeros(7, 5)  # ignored
    return sd


def lin_state_dict(net: str, seed: int = 1) -> dict[str, Tensor]:
    """The reference's v0.1 head file layout: lin{k}.model.1.weight, (1, C_k, 1, 1), non-negative."""
    g = torch.Generator().manual_seed(seed)
    return {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(CHANNELS[net])}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, tuple[str, str]]:
    d = tmp_path_factory.mktemp("lpips")
    out = {}
    for net in NETS:
        torch.save(torchvision_state_dict(net), d / f"{net}-backbone.pth")
        torch.save(lin_state_dict(net), d / f"{net}-lin.pth")
        out[net] = (str(d / f"{net}-backbone.pth"), str(d / f"{net}-lin.pth"))
    return out


@pytest.fixture(scope="module")
def random_lpips() -> dict[str, LPIPS]:
    return {net: LPIPS(net, random_init=True) for net in NETS}


def images(n: int = 2, seed: int = 0, size: int = SIZE) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.rand(n, 3, size, size, generator=g)


class FixedBackbone(nn.Module):
    """Returns prepared feature maps: the first set on its first call, the second on its second; records inputs."""

    def __init__(self, outputs: list[list[Tensor]]) -> None:
        super().__init__()
        self.outputs = outputs
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor) -> list[Tensor]:
        self.inputs.append(x)
        return self.outputs[len(self.inputs) - 1]


def hand_lpips(fa: list[Tensor], fb: list[Tensor], weights: list[Tensor]) -> Tensor:
    """sum_k mean_hw sum_c w_c (n1 - n2)^2 with n = f / (sqrt(sum_c f^2) + 1e-10), in float64, per image."""
    total = torch.zeros(fa[0].shape[0], dtype=torch.float64)
    for a, b, w in zip(fa, fb, weights, strict=True):
        a, b, w = a.double(), b.double(), w.double().view(1, -1, 1, 1)
        na = a / (a.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
        nb = b / (b.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
        total += (w * (na - nb) ** 2).sum(dim=1).mean(dim=(1, 2))
    return total


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_formula_on_fixed_features(net, dtype):
    g = torch.Generator().manual_seed(3)
    sizes = (7, 5, 4, 3, 2)
    outputs = [
        [
            torch.randn(2, c, s, s + 1, generator=g, dtype=dtype).relu()
            for c, s in zip(CHANNELS[net], sizes, strict=True)
        ]
        for _ in range(2)
    ]
    lp = LPIPS(net, random_init=True, reduction="none").to(dtype)
    weights = [torch.rand(1, c, 1, 1, generator=g, dtype=dtype) for c in CHANNELS[net]]
    with torch.no_grad():
        for lin, w in zip(lp.lins, weights, strict=True):
            lin.weight.copy_(w)
    lp.net = FixedBackbone(outputs)
    x, y = images(2, seed=4)
    d = lp(x, y)

    expected = hand_lpips(outputs[0], outputs[1], weights)
    assert d.dtype == dtype and d.shape == (2,)
    # float32: the normalization and the channel sums round at ~1e-7 relative; float64: exact up to summation order.
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(d.double(), expected, rtol=tol, atol=0)
    assert expected.min() > 0.1  # the test compares real numbers
    # The backbone saw the reference's scaling of 2x - 1.
    for seen, img in zip(lp.net.inputs, (x, y), strict=True):
        torch.testing.assert_close(seen.double(), ((2 * img.double() - 1) - SHIFT) / SCALE, rtol=1e-6, atol=1e-6)

    lp.reduction = "mean"
    lp.net.inputs.clear()
    torch.testing.assert_close(lp(x, y).double(), expected.mean(), rtol=tol, atol=0)


def test_normalize_false_takes_minus_one_to_one():
    lp = LPIPS("vgg", random_init=True, normalize=False)
    lp.net = FixedBackbone([[torch.ones(1, c, 2, 2) for c in CHANNELS["vgg"]]] * 2)
    x, y = images(1)
    lp(2 * x - 1, 2 * y - 1)
    torch.testing.assert_close(lp.net.inputs[0].double(), ((2 * x.double() - 1) - SHIFT) / SCALE)


@pytest.mark.parametrize("net", NETS)
def test_zero_for_identical_and_symmetric(net, random_lpips):
    lp = random_lpips[net]
    lp.reduction = "none"
    x, y = images(3)
    with torch.no_grad():
        assert torch.equal(lp(x, x), torch.zeros(3))
        torch.testing.assert_close(lp(x, y), lp(y, x), rtol=1e-6, atol=0)


@pytest.mark.parametrize("net", NETS)
def test_positive_and_gradient_reaches_input(net, random_lpips):
    lp = random_lpips[net]
    lp.reduction = "mean"
    x, y = images(2)
    x.requires_grad_(True)
    d = lp(x, y)
    d.backward()
    assert d.item() > 1e-3
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in lp.parameters())
    # Frozen and in eval mode even after .train().
    lp.train()
    assert not lp.training and not any(m.training for m in lp.modules())
    # A closer image is closer.
    with torch.no_grad():
        near = (y + 0.02 * (x - y)).clamp(0, 1)
        assert lp(near, y) < lp(x, y)


@pytest.mark.parametrize("net", NETS)
def test_loads_torchvision_and_reference_layouts(net, files):
    backbone, lin = files[net]
    lp = LPIPS(net, backbone_weights=backbone, lin_weights=lin, reduction="none")
    sd, lin_sd = torchvision_state_dict(net), lin_state_dict(net)
    own = lp.net.features.state_dict()
    assert len(own) == len(sd) - 1  # every features.* key, no classifier
    for key, t in own.items():
        assert torch.equal(t, sd[f"features.{key}"]), key
    for key, t in lin_sd.items():
        assert torch.equal(lp.state_dict()[key], t), key

    # The taps are the reference's: compare with the independent network, tapped by hand, in float64.
    ref = torchvision_features(net).double()
    ref.load_state_dict({k[len("features.") :]: v for k, v in sd.items() if k.startswith("features.")})
    x, y = images(2)
    taps_lp = lp.net(((2 * x - 1) - lp.shift) / lp.scale)
    h = ((2 * x.double() - 1) - SHIFT) / SCALE
    taps_ref = []
    with torch.no_grad():
        for i, m in enumerate(ref[: TAPS[net][-1] + 1]):
            h = m(h)
            if i in TAPS[net]:
                taps_ref.append(h)
    assert [t.shape[1] for t in taps_lp] == list(CHANNELS[net])
    for a, b in zip(taps_lp, taps_ref, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4 * b.abs().max().item())

    # And the whole distance against the hand formula on those float64 features.
    fy = []
    with torch.no_grad():
        h = ((2 * y.double() - 1) - SHIFT) / SCALE
        for i, m in enumerate(ref[: TAPS[net][-1] + 1]):
            h = m(h)
            if i in TAPS[net]:
                fy.append(h)
    expected = hand_lpips(taps_ref, fy, list(lin_sd.values()))
    torch.testing.assert_close(lp(x, y).double(), expected, rtol=1e-4, atol=0)


@pytest.mark.parametrize("net", NETS)
def test_missing_files_are_named(net, files, tmp_path):
    backbone_file = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}[net]
    with pytest.raises(FileNotFoundError) as e:
        LPIPS(net)
    msg = str(e.value)
    assert "backbone_weights: not given" in msg and "lin_weights: not given" in msg
    assert backbone_file in msg and f"lpips/weights/v0.1/{net}.pth" in msg and "random_init=True" in msg

    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError) as e:
        LPIPS(net, backbone_weights=files[net][0], lin_weights=missing)
    msg = str(e.value)
    assert repr(str(missing)) in msg and "backbone_weights" not in msg and f"v0.1/{net}.pth" in msg

    with pytest.raises(ValueError, match="not both"):
        LPIPS(net, backbone_weights=files[net][0], random_init=True)


@pytest.mark.parametrize("net", NETS)
def test_wrong_shapes_and_keys_are_named(net, files, tmp_path):
    backbone, lin = files[net]
    sd = torchvision_state_dict(net)
    second_conv = {"vgg": "features.2.weight", "alex": "features.3.weight"}[net]
    sd[second_conv] = sd[second_conv][:, :-1]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=rf"'{second_conv}' has shape"):
        LPIPS(net, backbone_weights=tmp_path / "bad.pth", lin_weights=lin)

    del sd["features.0.bias"]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing key 'features\.0\.bias'"):
        LPIPS(net, backbone_weights=tmp_path / "bad.pth", lin_weights=lin)

    other = "alex" if net == "vgg" else "vgg"
    torch.save(lin_state_dict(other), tmp_path / "lin.pth")  # lin1 has 192 channels for alex, 128 for vgg
    with pytest.raises(ValueError, match=r"'lin1\.model\.1\.weight' has shape .*another net's file"):
        LPIPS(net, backbone_weights=backbone, lin_weights=tmp_path / "lin.pth")

    bad_lin = lin_state_dict(net)
    bad_lin["lin4.model.1.weight"][0, 0] = -0.5
    torch.save(bad_lin, tmp_path / "lin.pth")
    with pytest.raises(ValueError, match=r"'lin4\.model\.1\.weight' has negative weights"):
        LPIPS(net, backbone_weights=backbone, lin_weights=tmp_path / "lin.pth")


class NotATensor:
    """Unpickling it would import and run code from this module: torch.load(weights_only=True) refuses."""


def test_pickled_code_is_refused(files, tmp_path):
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1), "obj": NotATensor()}, tmp_path / "p.pth")
    with pytest.raises(ValueError, match="weights_only"):
        LPIPS("vgg", backbone_weights=files["vgg"][0], lin_weights=tmp_path / "p.pth")


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16])
def test_autocast_computes_in_float32(net, amp_dtype, random_lpips):
    lp = random_lpips[net]
    lp.reduction = "none"
    x, y = images(2)
    x = x.to(amp_dtype)  # e.g. a generator output under autocast
    with torch.no_grad():
        expected = lp(x.float(), y)
        with torch.autocast("cpu", dtype=amp_dtype):
            d = lp(x, y)
    assert d.dtype == torch.float32
    assert torch.equal(d, expected)


def test_input_checks(random_lpips):
    with pytest.raises(ValueError, match="at least 31x31"):
        random_lpips["alex"](*images(1, size=30))
    random_lpips["alex"](*images(1, size=31))  # the smallest AlexNet input
    random_lpips["vgg"](*images(1, size=16))
    with pytest.raises(ValueError, match="y has"):
        random_lpips["vgg"](torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 16))
    with pytest.raises(ValueError, match="unknown LPIPS net"):
        LPIPS("squeeze", random_init=True)


def test_lpips_distance_metric(random_lpips):
    lp = random_lpips["vgg"]
    x, y = images(1)
    a = x[0].mul(255).round().byte().permute(1, 2, 0).numpy()  # (H, W, 3) uint8, as train.evaluate.to_uint8
    b = y[0].mul(255).round().byte().permute(1, 2, 0).numpy()
    lp.reduction = "mean"
    with torch.no_grad():
        expected = lp(
            torch.from_numpy(a).permute(2, 0, 1)[None] / 255.0, torch.from_numpy(b).permute(2, 0, 1)[None] / 255.0
        )
    assert lpips_distance(lp, a, b) == pytest.approx(expected.item(), rel=1e-6)
    assert lpips_distance(lp, x[0], y[0]) == pytest.approx(lp(x, y).item(), rel=1e-6)
    assert lpips_distance(lp, a, a) == 0.0
    cropped = lpips_distance(lp, x, y, crop_border=4)
    assert cropped == pytest.approx(lp(x[..., 4:-4, 4:-4], y[..., 4:-4, 4:-4]).item(), rel=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        lpips_distance(lp, a.astype(np.float32), b)
