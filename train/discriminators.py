"""Discriminators for GAN super-resolution; all return raw logits (no sigmoid: the losses in `train.losses` take
logits).

- `VGGStyleDiscriminator`: ESRGAN's (BasicSR's key names, so BasicSR `net_d` checkpoints load), fixed input size.
- `UNetDiscriminatorSN`: Real-ESRGAN's U-Net with spectral normalization, per-pixel logits (Real-ESRGAN's keys).
  With `encoder_head=True` ("unet-gan") it is also a U-Net GAN discriminator (Schönfeld et al. 2020): a global
  logit from the encoder's bottleneck beside the decoder's per-pixel logits, and the intermediate features
  (`forward_all`), for the ×16 perceptual-extreme losses in `train.losses`.
- `SRGANDiscriminator`: SRGAN's, in fully convolutional form (global pooling instead of a flatten), any size.

Initialization: PyTorch's defaults (Kaiming-uniform with a = sqrt(5) for convolutions and linear layers, BN weight
1 and bias 0), as BasicSR and Real-ESRGAN use for these discriminators (they apply no custom init).
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import spectral_norm

__all__ = [
    "VGGStyleDiscriminator",
    "UNetDiscriminatorSN",
    "UNetOutput",
    "SRGANDiscriminator",
    "DISCRIMINATORS",
    "build_discriminator",
]

_SLOPE = 0.2


def _lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, negative_slope=_SLOPE)


class VGGStyleDiscriminator(nn.Module):
    """ESRGAN's VGG-style discriminator (BasicSR's `VGGStyleDiscriminator`, same parameter names).

    Five (input_size 128) or six (256) stages of [3x3 conv + BN + LeakyReLU, 4x4 stride-2 conv + BN + LeakyReLU]
    bring the input to 4x4 with 8 * num_feat channels; then linear1 (8 * num_feat * 16 -> 100), LeakyReLU,
    linear2 (100 -> 1). The first conv has a bias and no BN. Output: logits (N, 1). The input must be exactly
    input_size x input_size (the training crop / gt_size).
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, input_size: int = 128) -> None:
        super().__init__()
        if input_size not in (128, 256):
            raise ValueError(f"VGGStyleDiscriminator: input_size must be 128 or 256, got {input_size}")
        self.input_size = input_size
        nf = num_feat

        self.conv0_0 = nn.Conv2d(num_in_ch, nf, 3, 1, 1, bias=True)
        self.conv0_1 = nn.Conv2d(nf, nf, 4, 2, 1, bias=False)
        self.bn0_1 = nn.BatchNorm2d(nf, affine=True)

        self.conv1_0 = nn.Conv2d(nf, nf * 2, 3, 1, 1, bias=False)
        self.bn1_0 = nn.BatchNorm2d(nf * 2, affine=True)
        self.conv1_1 = nn.Conv2d(nf * 2, nf * 2, 4, 2, 1, bias=False)
        self.bn1_1 = nn.BatchNorm2d(nf * 2, affine=True)

        self.conv2_0 = nn.Conv2d(nf * 2, nf * 4, 3, 1, 1, bias=False)
        self.bn2_0 = nn.BatchNorm2d(nf * 4, affine=True)
        self.conv2_1 = nn.Conv2d(nf * 4, nf * 4, 4, 2, 1, bias=False)
        self.bn2_1 = nn.BatchNorm2d(nf * 4, affine=True)

        self.conv3_0 = nn.Conv2d(nf * 4, nf * 8, 3, 1, 1, bias=False)
        self.bn3_0 = nn.BatchNorm2d(nf * 8, affine=True)
        self.conv3_1 = nn.Conv2d(nf * 8, nf * 8, 4, 2, 1, bias=False)
        self.bn3_1 = nn.BatchNorm2d(nf * 8, affine=True)

        self.conv4_0 = nn.Conv2d(nf * 8, nf * 8, 3, 1, 1, bias=False)
        self.bn4_0 = nn.BatchNorm2d(nf * 8, affine=True)
        self.conv4_1 = nn.Conv2d(nf * 8, nf * 8, 4, 2, 1, bias=False)
        self.bn4_1 = nn.BatchNorm2d(nf * 8, affine=True)

        if input_size == 256:
            self.conv5_0 = nn.Conv2d(nf * 8, nf * 8, 3, 1, 1, bias=False)
            self.bn5_0 = nn.BatchNorm2d(nf * 8, affine=True)
            self.conv5_1 = nn.Conv2d(nf * 8, nf * 8, 4, 2, 1, bias=False)
            self.bn5_1 = nn.BatchNorm2d(nf * 8, affine=True)

        self.linear1 = nn.Linear(nf * 8 * 4 * 4, 100)
        self.linear2 = nn.Linear(100, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise ValueError(
                f"VGGStyleDiscriminator(input_size={self.input_size}) expects (N, C, {self.input_size}, "
                f"{self.input_size}) input, got {tuple(x.shape)}: the crop size (gt_size) must equal "
                f"{self.input_size}"
            )
        feat = _lrelu(self.conv0_0(x))
        feat = _lrelu(self.bn0_1(self.conv0_1(feat)))  # /2
        feat = _lrelu(self.bn1_0(self.conv1_0(feat)))
        feat = _lrelu(self.bn1_1(self.conv1_1(feat)))  # /4
        feat = _lrelu(self.bn2_0(self.conv2_0(feat)))
        feat = _lrelu(self.bn2_1(self.conv2_1(feat)))  # /8
        feat = _lrelu(self.bn3_0(self.conv3_0(feat)))
        feat = _lrelu(self.bn3_1(self.conv3_1(feat)))  # /16
        feat = _lrelu(self.bn4_0(self.conv4_0(feat)))
        feat = _lrelu(self.bn4_1(self.conv4_1(feat)))  # /32
        if self.input_size == 256:
            feat = _lrelu(self.bn5_0(self.conv5_0(feat)))
            feat = _lrelu(self.bn5_1(self.conv5_1(feat)))  # /64
        feat = feat.flatten(1)  # (N, 8 * num_feat * 4 * 4)
        feat = _lrelu(self.linear1(feat))
        return self.linear2(feat)


class UNetOutput(NamedTuple):
    """What a U-Net discriminator says about a batch: `encoder` (N, 1) global logits, `decoder` (N, 1, H, W)
    per-pixel logits, and `features`, the activations of every encoder and decoder stage (for feature matching)."""

    encoder: Tensor
    decoder: Tensor
    features: list[Tensor]


class UNetDiscriminatorSN(nn.Module):
    """Real-ESRGAN's U-Net discriminator with spectral normalization (same parameter names: conv0 .. conv9).

    Encoder conv0 (3x3) then three 4x4 stride-2 convs; decoder: bilinear x2 upsampling + 3x3 conv (+ the encoder
    feature of the same size when `skip_connection`), twice more 3x3 convs, and conv9 to one channel. conv1..conv8
    use `torch.nn.utils.spectral_norm` (state-dict keys `weight_orig`, `weight_u`, `weight_v`, as Real-ESRGAN's
    checkpoints); conv0 and conv9 are plain. Output: per-pixel logits (N, 1, H, W). H and W must be multiples
    of 8.

    `encoder_head=True` adds U-Net GAN's encoder output: the bottleneck's activations summed over space (BigGAN's
    global sum pooling) into a spectral-normalized linear layer `linear_enc`, one global logit per image.
    `forward_all` returns it with the per-pixel logits and the seven stage activations (x0..x3 of the encoder,
    x4..x6 of the decoder, each after its LeakyReLU and skip).
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, skip_connection: bool = True,
                 encoder_head: bool = False) -> None:
        super().__init__()
        self.skip_connection = skip_connection
        nf = num_feat
        self.conv0 = nn.Conv2d(num_in_ch, nf, kernel_size=3, stride=1, padding=1)
        # downsample
        self.conv1 = spectral_norm(nn.Conv2d(nf, nf * 2, 4, 2, 1, bias=False))
        self.conv2 = spectral_norm(nn.Conv2d(nf * 2, nf * 4, 4, 2, 1, bias=False))
        self.conv3 = spectral_norm(nn.Conv2d(nf * 4, nf * 8, 4, 2, 1, bias=False))
        # upsample
        self.conv4 = spectral_norm(nn.Conv2d(nf * 8, nf * 4, 3, 1, 1, bias=False))
        self.conv5 = spectral_norm(nn.Conv2d(nf * 4, nf * 2, 3, 1, 1, bias=False))
        self.conv6 = spectral_norm(nn.Conv2d(nf * 2, nf, 3, 1, 1, bias=False))
        # extra convolutions
        self.conv7 = spectral_norm(nn.Conv2d(nf, nf, 3, 1, 1, bias=False))
        self.conv8 = spectral_norm(nn.Conv2d(nf, nf, 3, 1, 1, bias=False))
        self.conv9 = nn.Conv2d(nf, 1, 3, 1, 1)
        self.linear_enc = spectral_norm(nn.Linear(nf * 8, 1)) if encoder_head else None

    def forward(self, x: Tensor) -> Tensor:
        """Per-pixel logits (N, 1, H, W)."""
        return self._run(x)[0]

    def forward_all(self, x: Tensor) -> UNetOutput:
        """Global and per-pixel logits and the stage features; needs `encoder_head=True`."""
        if self.linear_enc is None:
            raise ValueError("forward_all needs the encoder head: build the discriminator with encoder_head=True "
                             "(discriminator 'unet-gan')")
        decoder, features = self._run(x)
        encoder = self.linear_enc(features[3].sum(dim=(2, 3)))
        return UNetOutput(encoder, decoder, features)

    def _run(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        if x.dim() != 4 or x.shape[-2] % 8 or x.shape[-1] % 8:
            raise ValueError(
                f"UNetDiscriminatorSN expects (N, C, H, W) input with H and W multiples of 8, got {tuple(x.shape)}"
            )
        x0 = _lrelu(self.conv0(x))
        x1 = _lrelu(self.conv1(x0))
        x2 = _lrelu(self.conv2(x1))
        x3 = _lrelu(self.conv3(x2))
        features = [x0, x1, x2, x3]

        x = x3
        for conv, skip in ((self.conv4, x2), (self.conv5, x1), (self.conv6, x0)):
            x = _lrelu(conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)))
            if self.skip_connection:
                x = x + skip
            features.append(x)
        x6 = x

        out = _lrelu(self.conv7(x6))
        out = _lrelu(self.conv8(out))
        return self.conv9(out), features


class SRGANDiscriminator(nn.Module):
    """SRGAN's discriminator (Ledig et al. 2017) in fully convolutional form.

    3x3 conv (in -> nf) + LeakyReLU(0.2); seven blocks of 3x3 conv + BN + LeakyReLU(0.2) with channels nf (stride
    2), 2nf (1), 2nf (2), 4nf (1), 4nf (2), 8nf (1), 8nf (2); then global average pooling, 1x1 conv 8nf -> 16nf
    (the paper's dense 1024), LeakyReLU(0.2), 1x1 conv 16nf -> 1. With nf = 64 these are the paper's 64..512 and
    1024 channels. The convolutions followed by BN have no bias (BN's shift makes it redundant). Output: logits
    (N, 1), no sigmoid. Any input of at least 16 x 16.
    """

    min_size = 16

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64) -> None:
        super().__init__()
        nf = num_feat
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, nf, 3, 1, 1), nn.LeakyReLU(_SLOPE)]
        in_ch = nf
        for out_ch, stride in ((nf, 2), (nf * 2, 1), (nf * 2, 2), (nf * 4, 1), (nf * 4, 2), (nf * 8, 1), (nf * 8, 2)):
            layers += [nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch), nn.LeakyReLU(_SLOPE)]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(nf * 8, nf * 16, 1),
            nn.LeakyReLU(_SLOPE),
            nn.Conv2d(nf * 16, 1, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[-2] < self.min_size or x.shape[-1] < self.min_size:
            raise ValueError(
                f"SRGANDiscriminator expects (N, C, H, W) input with H, W >= {self.min_size}, got {tuple(x.shape)}"
            )
        return self.classifier(self.features(x)).flatten(1)


DISCRIMINATORS: dict[str, type[nn.Module]] = {
    "vgg128": VGGStyleDiscriminator,
    "unet": UNetDiscriminatorSN,
    "unet-gan": UNetDiscriminatorSN,
    "srgan": SRGANDiscriminator,
}


def build_discriminator(name: str, **kwargs) -> nn.Module:
    """Make a discriminator by name: "vgg128" (ESRGAN, 128x128 crops), "unet" (Real-ESRGAN), "unet-gan" (the same
    U-Net with U-Net GAN's encoder head: global and per-pixel logits), "srgan".

    kwargs go to the class (num_in_ch, num_feat, skip_connection for "unet" and "unet-gan"). "vgg128" fixes
    input_size=128; for 256x256 crops build `VGGStyleDiscriminator(input_size=256)` directly.
    """
    if name not in DISCRIMINATORS:
        raise ValueError(f"unknown discriminator {name!r}; known: {', '.join(DISCRIMINATORS)}")
    if name == "vgg128":
        size = kwargs.pop("input_size", 128)
        if size != 128:
            raise ValueError(f"discriminator 'vgg128' has input_size 128, got input_size={size}")
        return VGGStyleDiscriminator(input_size=128, **kwargs)
    if name == "unet-gan":
        kwargs["encoder_head"] = True
    return DISCRIMINATORS[name](**kwargs)
