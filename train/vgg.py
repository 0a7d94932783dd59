"""VGG19 feature extractor in torchvision's layout, without torchvision.

The perceptual losses of SRGAN, ESRGAN and Real-ESRGAN compare VGG19 features of the output and the ground truth.
`VGG19Features` rebuilds `torchvision.models.vgg19().features` module for module (same indices, 3x3 convolutions
with padding 1, ReLU not in place, MaxPool2d(2, 2)), so the ImageNet weights that torchvision downloads
(`vgg19-dcbb9e9d.pth`, keys `features.{i}.weight/bias` plus `classifier.*`) load into it unchanged, while the
project does not depend on torchvision. The weights are never downloaded here: pass the file.

Layer names follow ESRGAN/BasicSR: `convX_Y` is the output of the convolution BEFORE its ReLU (ESRGAN's
pre-activation features), `reluX_Y` the same after the ReLU, `poolX` the max-pool output.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["VGG19_LAYERS", "VGG19Features", "IMAGENET_MEAN", "IMAGENET_STD", "load_vgg19_state_dict"]

# torchvision's configuration "E" (VGG19): output channels of each conv, "M" for a 2x2 max-pool.
_VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, 256, "M",
    512, 512, 512, 512, "M",
    512, 512, 512, 512, "M",
)  # fmt: skip


def _layer_names() -> tuple[str, ...]:
    names: list[str] = []
    block, conv = 1, 1
    for v in _VGG19_CFG:
        if v == "M":
            names.append(f"pool{block}")
            block, conv = block + 1, 1
        else:
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
            conv += 1
    return tuple(names)


VGG19_LAYERS: tuple[str, ...] = _layer_names()
"""The 37 modules of torchvision's `vgg19().features`, in order (index i is `features.{i}`)."""

_LAYER_INDEX = {name: i for i, name in enumerate(VGG19_LAYERS)}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_WEIGHTS_HELP = (
    "the perceptual loss needs VGG19 ImageNet weights in torchvision's layout: the file vgg19-dcbb9e9d.pth, as "
    'saved by `torch.save(torchvision.models.vgg19(weights="IMAGENET1K_V1").state_dict(), path)` (or any .pth / '
    ".safetensors file with the keys features.{i}.weight and features.{i}.bias). Pass it with "
    "--vgg19-weights PATH. (--perceptual-random-init uses random VGG weights; it exists for tests only, and such a "
    "loss is meaningless for training.)"
)


def he_init_(modules: nn.Module, generator: torch.Generator) -> None:
    """He-normal weights (fan-in, so ReLU activations keep their scale) and zero biases for every conv of
    `modules`: the random networks that stand in for ImageNet weights in tests."""
    with torch.no_grad():
        for m in modules.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu", generator=generator)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


def vgg_layers(cfg: Sequence[int | str]) -> list[nn.Module]:
    """torchvision's `vgg*().features` modules for a configuration (output channels, "M" for a 2x2 max-pool), with
    torchvision's indices: 3x3 convolutions with padding 1, each followed by a ReLU (not in place)."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            assert isinstance(v, int)
            layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            in_ch = v
    return layers


def _build_features(num_modules: int) -> nn.Sequential:
    """The first `num_modules` modules of torchvision's `vgg19().features`, with the same indices."""
    layers = vgg_layers(_VGG19_CFG)
    assert len(layers) == len(VGG19_LAYERS)
    return nn.Sequential(*layers[:num_modules])


def load_vgg19_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a VGG19 weights file (.pth/.pt with `torch.load(weights_only=True)`, or .safetensors) as a flat dict.

    The file may be torchvision's full `vgg19` state dict (its `classifier.*` keys are returned too and ignored by
    `VGG19Features`), a dict holding only `features.*` keys, or either wrapped as {"state_dict": {...}}. Pickled
    code is never executed: a file that needs more than tensors and plain containers is refused (ValueError).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VGG19 weights file not found: {str(path)!r}; {_WEIGHTS_HELP}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: object = load_file(str(path), device="cpu")
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # torch's advice to pass weights_only=False is not repeated
            text = str(e)
            after = (text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text
                     else text.partition("\n\n")[2])
            reason = after.strip().split("\n\n")[0].split(". ")[0].strip()
            raise ValueError(
                f"{str(path)!r} cannot be loaded with torch.load(weights_only=True): it is not a file of tensors "
                f"only, and other pickled objects are not rebuilt for safety ({reason or 'not a pickle'})"
            ) from None
        except (RuntimeError, EOFError, ValueError) as e:
            first = str(e).strip().split(". ")[0] or type(e).__name__
            raise ValueError(f"{str(path)!r} is not a weights file torch can read (truncated or not a .pth: "
                             f"{first})") from None
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise ValueError(f"{str(path)!r} does not hold a state dict (a mapping of names to tensors)")
    return dict(sd)


class VGG19Features(nn.Module):
    """Frozen VGG19 returning the activations of the requested layers.

    Args:
        layers: names from `VGG19_LAYERS` (`convX_Y` before the ReLU, `reluX_Y` after, `poolX`).
        weights: a torchvision-layout VGG19 weights file (vgg19-dcbb9e9d.pth, or .safetensors with the same keys).
        random_init: use deterministic random weights instead (tests only; exclusive with `weights`).
        use_input_norm: normalize the input with ImageNet's mean and std, as the weights expect.
        range_norm: the input is in [-1, 1]; map it to [0, 1] first.

    Only `features` modules up to the deepest requested layer are built. Parameters are frozen and the module
    stays in eval mode (`train()` is a no-op), but gradients flow to the input.
    """

    mean: Tensor  # buffers (not persistent), (1, 3, 1, 1)
    std: Tensor

    def __init__(
        self,
        layers: Sequence[str],
        *,
        weights: str | Path | None = None,
        random_init: bool = False,
        use_input_norm: bool = True,
        range_norm: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(layers, str):
            layers = [layers]
        layers = list(dict.fromkeys(layers))  # unique, in the requested order
        if not layers:
            raise ValueError("VGG19Features needs at least one layer name")
        unknown = [name for name in layers if name not in _LAYER_INDEX]
        if unknown:
            raise ValueError(f"unknown VGG19 layer name(s) {unknown}; valid names: {', '.join(VGG19_LAYERS)}")
        if weights is not None and random_init:
            raise ValueError("pass either weights or random_init=True, not both")
        if weights is None and not random_init:
            raise FileNotFoundError(f"no VGG19 weights given: {_WEIGHTS_HELP}")

        self.layers: tuple[str, ...] = tuple(layers)
        self._indices = {_LAYER_INDEX[name]: name for name in layers}
        self.use_input_norm = use_input_norm
        self.range_norm = range_norm
        self.features = _build_features(max(self._indices) + 1)
        # Not persistent: the state dict holds only torchvision's `features.*` keys.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        if weights is not None:
            self._load(weights)
        else:
            self._random_init()
        self.requires_grad_(False)
        super().train(False)

    def _random_init(self, seed: int = 0) -> None:
        """Deterministic He-normal weights (fan-in, so activations keep their scale) and zero biases."""
        he_init_(self.features, torch.Generator().manual_seed(seed))

    def _load(self, weights: str | Path) -> None:
        sd = load_vgg19_state_dict(weights)
        own = self.features.state_dict()
        # Check every key this (possibly truncated) network needs before copying any.
        for key, t in own.items():
            src = sd.get(f"features.{key}")
            if src is None:
                raise ValueError(f"{str(weights)!r}: missing key 'features.{key}' (not a torchvision VGG19 state dict)")
            if not isinstance(src, Tensor) or tuple(src.shape) != tuple(t.shape):
                shape = tuple(src.shape) if isinstance(src, Tensor) else type(src).__name__
                raise ValueError(f"{str(weights)!r}: 'features.{key}' has shape {shape}, expected {tuple(t.shape)}")
        with torch.no_grad():
            for key, t in own.items():
                t.copy_(sd[f"features.{key}"])

    def train(self, mode: bool = True) -> VGG19Features:
        """Stays in eval mode: the extractor is a fixed function."""
        return super().train(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x: (N, 3, H, W) RGB in [0, 1] (in [-1, 1] with `range_norm`). Returns {layer name: activation}."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"VGG19Features expects (N, 3, H, W) RGB input, got shape {tuple(x.shape)}")
        if self.range_norm:
            x = (x + 1) / 2
        if self.use_input_norm:
            x = (x - self.mean) / self.std
        out: dict[str, Tensor] = {}
        last = max(self._indices)
        for i, module in enumerate(self.features):
            x = module(x)
            if i in self._indices:
                out[self._indices[i]] = x
            if i == last:
                break
        return {name: out[name] for name in self.layers}
