"""LPIPS, the learned perceptual image patch similarity (Zhang et al. 2018), without torchvision.

The reference release is the `lpips` PyPI package (richzhang/PerceptualSimilarity), version 0.1. For two RGB images
x, y in [-1, 1] it computes, with a frozen ImageNet backbone and five learned per-channel weights w_k >= 0:

    d(x, y) = sum_k  mean_hw  sum_c  w_k,c * (n_k(x) - n_k(y))_c,h,w ** 2
    n_k(x)  = f_k(s(x)) / (||f_k(s(x))||_2 over channels + 1e-10)      (unit-normalized along channels)
    s(x)    = (x - [-.030, -.088, -.188]) / [.458, .448, .450]            (the reference's ScalingLayer, per RGB)

f_k are the backbone's activations at five taps (the reference's `pretrained_networks.py` slices):

    net="vgg":  VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3   features.{3, 8, 15, 22, 29}, 64/128/256/512/512 ch
    net="alex": AlexNet relu1 .. relu5                             features.{1, 4, 7, 9, 11},   64/192/384/256/256 ch

The project's images are in [0, 1]: with `normalize=True` (the default here, the reference's `normalize=True`) they
are mapped to [-1, 1] with 2x - 1 first; `normalize=False` takes [-1, 1] input as the reference does by default.

Weights are read from local files only, in the reference release's layouts (nothing is downloaded):

* backbone: torchvision's ImageNet file, `vgg16-397923af.pth` or `alexnet-owt-7be5be79.pth` (keys
  `features.{i}.weight/bias`; `classifier.*` is ignored). The backbones are rebuilt module for module with
  torchvision's indices, like `train.vgg.VGG19Features`, so those files load unchanged.
* linear heads: the reference's `lpips/weights/v0.1/vgg.pth` or `alex.pth`, keys `lin{k}.model.1.weight` of shape
  (1, C_k, 1, 1). `LPIPSLinear` keeps the reference's (Dropout, 1x1 conv without bias) sequence so the keys match;
  the dropout never acts (the module stays in eval mode).

The channel norm is written as the reference writes it, `sqrt(sum(f**2))` (`torch.linalg.vector_norm` sums in
another order, so its float32 rounding differs). Its backward is NaN at an all-zero feature vector, but every
tap follows a ReLU, whose backward zeroes the gradient there, so the input gradient stays finite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from train.vgg import he_init_, load_vgg19_state_dict, vgg_layers

__all__ = ["LPIPS", "LPIPS_NETS", "LPIPSBackbone", "LPIPSLinear", "LPIPSNet", "lpips_distance"]

SCALING_SHIFT = (-0.030, -0.088, -0.188)
SCALING_SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10
_REDUCTIONS = ("mean", "none")


def _vgg16_features() -> list[nn.Module]:
    """torchvision's `vgg16().features` (configuration "D"): indices 0..30."""
    return vgg_layers((64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"))


def _alexnet_features() -> list[nn.Module]:
    """torchvision's `alexnet().features`: indices 0..12."""
    return [
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=False),  # 0, 1: relu1
        nn.MaxPool2d(kernel_size=3, stride=2),                                          # 2
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=False),           # 3, 4: relu2
        nn.MaxPool2d(kernel_size=3, stride=2),                                          # 5
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=False),          # 6, 7: relu3
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=False),          # 8, 9: relu4
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=False),          # 10, 11: relu5
        nn.MaxPool2d(kernel_size=3, stride=2),                                          # 12
    ]  # fmt: skip


@dataclass(frozen=True)
class LPIPSNet:
    """One LPIPS variant: its backbone, where it is tapped, and which files hold its weights."""

    name: str
    build: Callable[[], list[nn.Module]]  # torchvision's `features`, every module, in order
    taps: tuple[int, ...]  # indices into `features` whose outputs are compared
    channels: tuple[int, ...]  # channels at each tap (the lin heads' C_k)
    min_size: int  # smallest image side the backbone takes
    backbone_file: str
    backbone_how: str
    lin_file: str


LPIPS_NETS: dict[str, LPIPSNet] = {
    "vgg": LPIPSNet(
        name="vgg",
        build=_vgg16_features,
        taps=(3, 8, 15, 22, 29),
        channels=(64, 128, 256, 512, 512),
        min_size=16,  # relu5_3 follows four 2x2 pools
        backbone_file="vgg16-397923af.pth",
        backbone_how='torchvision.models.vgg16(weights="IMAGENET1K_V1")',
        lin_file="lpips/weights/v0.1/vgg.pth",
    ),
    "alex": LPIPSNet(
        name="alex",
        build=_alexnet_features,
        taps=(1, 4, 7, 9, 11),
        channels=(64, 192, 384, 256, 256),
        min_size=31,  # conv1 (11x11 stride 4) must leave 7 pixels for the two 3x3 stride-2 pools
        backbone_file="alexnet-owt-7be5be79.pth",
        backbone_how='torchvision.models.alexnet(weights="IMAGENET1K_V1")',
        lin_file="lpips/weights/v0.1/alex.pth",
    ),
}
"""The LPIPS variants by the reference's `net=` name."""


def _weights_help(spec: LPIPSNet) -> tuple[str, str]:
    backbone = (
        f"the ImageNet backbone in torchvision's layout, {spec.backbone_file} (what torchvision downloads to "
        f"~/.cache/torch/hub/checkpoints/, or torch.save({spec.backbone_how}.state_dict(), PATH); .safetensors with "
        "the keys features.{i}.weight/bias also works)"
    )
    lin = (
        f"the LPIPS v0.1 linear heads, {spec.lin_file} from the `lpips` PyPI package "
        f"(richzhang/PerceptualSimilarity), keys lin0..lin4.model.1.weight"
    )
    return backbone, lin


def _read(path: Path, what: str) -> dict[str, Tensor]:
    """A weights file as a flat dict, via train.vgg's reader (torch.load(weights_only=True) or safetensors)."""
    try:
        return load_vgg19_state_dict(path)
    except ValueError as e:
        raise ValueError(f"{e} (expected {what})") from e


def _check_shape(path: Path, sd: dict[str, Tensor], key: str, shape: tuple[int, ...], hint: str) -> Tensor:
    src = sd.get(key)
    if src is None:
        raise ValueError(f"{str(path)!r}: missing key {key!r} ({hint})")
    if not isinstance(src, Tensor) or tuple(src.shape) != shape:
        got = tuple(src.shape) if isinstance(src, Tensor) else type(src).__name__
        raise ValueError(f"{str(path)!r}: {key!r} has shape {got}, expected {shape} ({hint})")
    return src


class LPIPSBackbone(nn.Module):
    """torchvision's `features` of VGG16 or AlexNet up to LPIPS's last tap, same indices; returns the 5 taps.

    Built with PyTorch's default initialization: `LPIPS` loads the weights (`load`) or draws them (`random_init`).
    """

    def __init__(self, spec: LPIPSNet) -> None:
        super().__init__()
        self.taps = spec.taps
        self.features = nn.Sequential(*spec.build()[: max(spec.taps) + 1])

    def load(self, path: Path, hint: str) -> None:
        """Copy `features.{i}.weight/bias` from a torchvision-layout file; every shape is checked before copying."""
        sd = _read(path, hint)
        own = self.features.state_dict()
        srcs = {key: _check_shape(path, sd, f"features.{key}", tuple(t.shape), hint) for key, t in own.items()}
        with torch.no_grad():
            for key, t in own.items():
                t.copy_(srcs[key])

    def random_init(self, generator: torch.Generator) -> None:
        """He-normal weights (fan-in, so activations keep their scale) and zero biases, as train.vgg."""
        he_init_(self.features, generator)

    def forward(self, x: Tensor) -> list[Tensor]:
        out: list[Tensor] = []
        for i, module in enumerate(self.features):
            x = module(x)
            if i in self.taps:
                out.append(x)
        return out


class LPIPSLinear(nn.Module):
    """The reference's NetLinLayer: Dropout then a bias-free 1x1 conv C -> 1 (state dict key `model.1.weight`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    @property
    def weight(self) -> Tensor:
        """The per-channel weights w_c, (1, C, 1, 1)."""
        conv = self.model[1]
        assert isinstance(conv, nn.Conv2d)
        return conv.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS distance between two RGB image batches, for use as a loss or a metric.

    Args:
        net: "vgg" (VGG16; the variant usually used as a training loss) or "alex" (AlexNet; the reference's
            default and its recommended forward metric). See `LPIPS_NETS`.
        backbone_weights: torchvision's ImageNet weights of that backbone (vgg16-397923af.pth /
            alexnet-owt-7be5be79.pth, or .safetensors with the same keys).
        lin_weights: the reference's v0.1 linear heads (lpips/weights/v0.1/vgg.pth / alex.pth).
        random_init: deterministic random backbone and non-negative random heads instead of both files. For tests
            only: such a distance is meaningless. Exclusive with the two paths.
        normalize: inputs are in [0, 1] and are mapped to [-1, 1] with 2x - 1 (the reference's `normalize=True`);
            False: inputs are already in [-1, 1] (the reference's default).
        reduction: "mean" (over the batch: a scalar, for a loss) or "none" (one distance per image, (N,), for a
            metric; the reference returns the same values as (N, 1, 1, 1)).

    Raises FileNotFoundError naming every missing file (and what it is) when weights are not given or do not exist,
    ValueError naming the key when a file lacks a key or holds a wrong shape, or when a head has a negative weight.

    The module is frozen: parameters do not require grad, it stays in eval mode (`train()` is a no-op), but
    gradients flow to both inputs. The distance is computed in float32 even inside an autocast region (float64 if
    the module was converted with `.double()`), as `train.losses.PerceptualLoss` does: raw VGG activations reach
    magnitudes of thousands and the unit normalization squares them, which overflows float16 and loses precision
    in bfloat16.
    """

    shift: Tensor  # (1, 3, 1, 1) buffers, not persistent
    scale: Tensor

    def __init__(
        self,
        net: str = "vgg",
        *,
        backbone_weights: str | Path | None = None,
        lin_weights: str | Path | None = None,
        random_init: bool = False,
        normalize: bool = True,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if net not in LPIPS_NETS:
            raise ValueError(f"unknown LPIPS net {net!r}; expected one of {', '.join(map(repr, LPIPS_NETS))}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; expected one of {_REDUCTIONS}")
        spec = LPIPS_NETS[net]
        self.spec = spec
        self.normalize = normalize
        self.reduction = reduction
        self.register_buffer("shift", torch.tensor(SCALING_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALING_SCALE).view(1, 3, 1, 1), persistent=False)
        self.net = LPIPSBackbone(spec)
        # lin0..lin4 as attributes, as the reference names them, so its files' keys are this module's keys.
        for k, c in enumerate(spec.channels):
            self.add_module(f"lin{k}", LPIPSLinear(c))

        if random_init:
            if backbone_weights is not None or lin_weights is not None:
                raise ValueError("pass either backbone_weights and lin_weights, or random_init=True, not both")
            self._random_init()
        else:
            backbone_path, lin_path = self._check_files(backbone_weights, lin_weights)
            backbone_help, lin_help = _weights_help(spec)
            self.net.load(backbone_path, backbone_help)
            self._load_lins(lin_path, lin_help)
        self.requires_grad_(False)
        super().train(False)

    @property
    def lins(self) -> list[LPIPSLinear]:
        return [getattr(self, f"lin{k}") for k in range(len(self.spec.channels))]

    def _check_files(self, backbone: str | Path | None, lin: str | Path | None) -> tuple[Path, Path]:
        """Both paths, or one FileNotFoundError listing every file that is not given or not there."""
        problems = []
        args = ("backbone_weights", "lin_weights")
        for arg, path, what in zip(args, (backbone, lin), _weights_help(self.spec), strict=True):
            if path is None:
                problems.append(f"  {arg}: not given; it is {what}")
            elif not Path(path).is_file():
                problems.append(f"  {arg}: {str(path)!r} does not exist; it should be {what}")
        if problems:
            raise FileNotFoundError(
                f"LPIPS(net={self.spec.name!r}) reads its weights from two local files (nothing is downloaded):\n"
                + "\n".join(problems)
                + "\n(random_init=True uses random weights; it exists for tests only, such a distance is meaningless)"
            )
        assert backbone is not None and lin is not None
        return Path(backbone), Path(lin)

    def _load_lins(self, path: Path, hint: str) -> None:
        sd = _read(path, hint)
        hint = f"{hint}; net={self.spec.name!r} has channels {self.spec.channels}: is this another net's file?"
        srcs = []
        for k, lin in enumerate(self.lins):
            key = f"lin{k}.model.1.weight"
            src = _check_shape(path, sd, key, tuple(lin.weight.shape), hint)
            if (src < 0).any():
                raise ValueError(f"{str(path)!r}: {key!r} has negative weights; LPIPS heads are non-negative ({hint})")
            srcs.append(src)
        with torch.no_grad():
            for lin, src in zip(self.lins, srcs, strict=True):
                lin.weight.copy_(src)

    def _random_init(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.net.random_init(g)
        with torch.no_grad():
            for lin in self.lins:
                w = lin.weight
                w.copy_(torch.rand(w.shape, generator=g))

    def train(self, mode: bool = True) -> LPIPS:
        """Stays in eval mode: LPIPS is a fixed function (its dropout never acts)."""
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """x, y: (N, 3, H, W) RGB in [0, 1] ([-1, 1] with normalize=False), H and W >= `spec.min_size`.

        Returns the float32 distance: a scalar (reduction="mean") or (N,) (reduction="none").
        """
        if x.shape != y.shape:
            raise ValueError(f"LPIPS: x has shape {tuple(x.shape)} but y has {tuple(y.shape)}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects (N, 3, H, W) RGB input, got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.spec.min_size:
            raise ValueError(
                f"LPIPS(net={self.spec.name!r}) needs images of at least {self.spec.min_size}x{self.spec.min_size} "
                f"pixels, got {tuple(x.shape[-2:])}"
            )
        dtype = torch.float64 if self.shift.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=x.device.type, enabled=False):
            x, y = x.to(dtype), y.to(dtype)
            if self.normalize:
                x, y = 2 * x - 1, 2 * y - 1
            feats_x = self.net((x - self.shift) / self.scale)
            feats_y = self.net((y - self.shift) / self.scale)
            dist = x.new_zeros(x.shape[0])
            for lin, fx, fy in zip(self.lins, feats_x, feats_y, strict=True):
                diff = (_unit_normalize(fx) - _unit_normalize(fy)) ** 2
                dist = dist + lin(diff).mean(dim=(1, 2, 3))  # (N, 1, h, w) -> (N,)
        return dist.mean() if self.reduction == "mean" else dist


def _unit_normalize(f: Tensor) -> Tensor:
    """f / (||f|| over channels + 1e-10), the reference's `normalize_tensor`."""
    return f / (torch.sqrt(torch.sum(f**2, dim=1, keepdim=True)) + EPS)


def _as_batch(img: Tensor | np.ndarray, device: torch.device, name: str) -> Tensor:
    """(H, W, 3) uint8 numpy -> (1, 3, H, W) in [0, 1]; a (3, H, W) or (N, 3, H, W) float tensor is taken as is."""
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"{name} must be an (H, W, 3) uint8 RGB array, got {img.dtype} {img.shape}")
        return torch.from_numpy(np.ascontiguousarray(img)).to(device).permute(2, 0, 1)[None].float() / 255
    if not isinstance(img, Tensor) or img.dim() not in (3, 4) or img.shape[-3] != 3:
        shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
        raise ValueError(f"{name} must be a (3, H, W) or (N, 3, H, W) tensor in [0, 1], got {shape}")
    return (img[None] if img.dim() == 3 else img).to(device)


@torch.no_grad()
def lpips_distance(model: LPIPS, img: Tensor | np.ndarray, ref: Tensor | np.ndarray, crop_border: int = 0) -> float:
    """LPIPS between `img` and `ref` as a validation metric (lower is closer), averaged over a batch.

    Args:
        model: an `LPIPS` built with normalize=True (inputs in [0, 1]); build it once and reuse it.
        img, ref: (H, W, 3) uint8 RGB arrays (as `train.evaluate.to_uint8` makes them, i.e. the 8-bit images the
            papers score), or (3, H, W) / (N, 3, H, W) float tensors in [0, 1]. Moved to the model's device.
        crop_border: pixels removed from each border first (0, as BasicSR's calculate_lpips; pass the scale to
            match the cropped PSNR/SSIM).
    """
    if not model.normalize:
        raise ValueError("lpips_distance takes images in [0, 1]: build the LPIPS model with normalize=True")
    device = model.shift.device
    a, b = _as_batch(img, device, "img"), _as_batch(ref, device, "ref")
    if crop_border:
        a = a[..., crop_border:-crop_border, crop_border:-crop_border]
        b = b[..., crop_border:-crop_border, crop_border:-crop_border]
    return float(model(a, b).mean())
