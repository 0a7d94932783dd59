"""Losses for GAN super-resolution: VGG19 perceptual loss, (relativistic) GAN losses on logits, and the ×16
perceptual-extreme losses: U-Net discriminator hinge terms (encoder and decoder), CutMix consistency, and feature
matching. (LPIPS is in `train.lpips`.)

The GAN losses take the raw logits C(x) of a discriminator (the discriminators in `train.discriminators` have no
sigmoid) and use `binary_cross_entropy_with_logits`, which is stable for large logits. Every loss is a mean over
all elements, so per-pixel logits (N, 1, H, W) of a U-Net discriminator and per-image logits (N, 1) are handled
alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.vgg import VGG19Features

__all__ = [
    "ESRGAN_LAYER_WEIGHTS",
    "REAL_ESRGAN_LAYER_WEIGHTS",
    "PerceptualLoss",
    "ragan_d_loss",
    "ragan_g_loss",
    "vanilla_d_loss",
    "vanilla_g_loss",
    "unet_d_loss",
    "unet_g_loss",
    "unet_d_mix_loss",
    "cutmix_mask",
    "cutmix",
    "cutmix_consistency_loss",
    "feature_matching_loss",
]

ESRGAN_LAYER_WEIGHTS: dict[str, float] = {"conv5_4": 1.0}
"""ESRGAN: conv5_4 before activation."""

REAL_ESRGAN_LAYER_WEIGHTS: dict[str, float] = {
    "conv1_2": 0.1,
    "conv2_2": 0.1,
    "conv3_4": 1.0,
    "conv4_4": 1.0,
    "conv5_4": 1.0,
}
"""Real-ESRGAN (BasicSR's train_realesrgan_x4plus.yml): several pre-activation layers."""

_CRITERIA = ("l1", "mse", "fro")


class PerceptualLoss(nn.Module):
    """Weighted distance between VGG19 features: sum over layers of w_layer * criterion(phi(x), phi(gt)).

    Args:
        layer_weights: {VGG19 layer name: weight}, e.g. `ESRGAN_LAYER_WEIGHTS`. `convX_Y` layers are taken before
            their ReLU (ESRGAN), `reluX_Y` after.
        criterion: "l1" (mean absolute difference), "mse" (mean squared difference) or "fro" (Frobenius norm of
            the whole difference tensor, not averaged, as BasicSR's `criterion: fro`).
        weights, random_init, use_input_norm, range_norm: passed to `VGG19Features`.

    The features are computed in float32 even inside an autocast region: VGG activations reach magnitudes of
    thousands (and their squares far more), which overflow float16 (max 65504) and lose precision in bfloat16,
    giving inf/NaN or noisy losses. The ground-truth features are computed without gradient.
    """

    def __init__(
        self,
        layer_weights: Mapping[str, float],
        *,
        criterion: str = "l1",
        weights: str | Path | None = None,
        random_init: bool = False,
        use_input_norm: bool = True,
        range_norm: bool = False,
    ) -> None:
        super().__init__()
        if not layer_weights:
            raise ValueError("PerceptualLoss needs at least one layer in layer_weights")
        if criterion not in _CRITERIA:
            raise ValueError(f"unknown perceptual criterion {criterion!r}; expected one of {_CRITERIA}")
        self.layer_weights = {name: float(w) for name, w in layer_weights.items()}
        self.criterion = criterion
        self.vgg = VGG19Features(
            list(self.layer_weights),
            weights=weights,
            random_init=random_init,
            use_input_norm=use_input_norm,
            range_norm=range_norm,
        )

    def _distance(self, a: Tensor, b: Tensor) -> Tensor:
        if self.criterion == "l1":
            return F.l1_loss(a, b)
        if self.criterion == "mse":
            return F.mse_loss(a, b)
        return torch.linalg.vector_norm(a - b)  # "fro": sqrt of the sum of squares over all elements

    def forward(self, x: Tensor, gt: Tensor) -> Tensor:
        """x: the network output, gt: the ground truth, both (N, 3, H, W). Returns a float32 scalar."""
        if x.shape != gt.shape:
            raise ValueError(f"PerceptualLoss: x has shape {tuple(x.shape)} but gt has {tuple(gt.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            x_feats = self.vgg(x.float())
            with torch.no_grad():
                gt_feats = self.vgg(gt.detach().float())
            loss = x.new_zeros((), dtype=torch.float32)
            for name, w in self.layer_weights.items():
                loss = loss + w * self._distance(x_feats[name], gt_feats[name])
        return loss


def _at_least_float32(t: Tensor) -> Tensor:
    """float16/bfloat16 logits (autocast) are promoted to float32; float64 stays float64."""
    return t if t.dtype == torch.float64 else t.float()


def _bce_logits(logits: Tensor, target: float) -> Tensor:
    logits = _at_least_float32(logits)
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def ragan_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Relativistic average GAN loss of the discriminator (ESRGAN, BasicSR's convention).

    With D_Ra(x_r, x_f) = sigma(C(x_r) - E[C(x_f)]) and D_Ra(x_f, x_r) = sigma(C(x_f) - E[C(x_r)]):

        L_D = 0.5 * ( -E[log D_Ra(x_r, x_f)] - E[log(1 - D_Ra(x_f, x_r))] )
            = 0.5 * [ BCEWithLogits(C(x_r) - mean C(x_f), 1) + BCEWithLogits(C(x_f) - mean C(x_r), 0) ]

    The means E[.] are over all elements (per-pixel logits included). In the discriminator step pass the logits
    of detached fakes (`D(G(x).detach())`); detaching is left to the caller.
    """
    real_logits, fake_logits = _at_least_float32(real_logits), _at_least_float32(fake_logits)
    return 0.5 * (
        _bce_logits(real_logits - fake_logits.mean(), 1.0) + _bce_logits(fake_logits - real_logits.mean(), 0.0)
    )


def ragan_g_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Relativistic average GAN loss of the generator (ESRGAN, BasicSR's convention), symmetric to `ragan_d_loss`:

        L_G = 0.5 * ( -E[log(1 - D_Ra(x_r, x_f))] - E[log D_Ra(x_f, x_r)] )
            = 0.5 * [ BCEWithLogits(C(x_r) - mean C(x_f), 0) + BCEWithLogits(C(x_f) - mean C(x_r), 1) ]

    with D_Ra(x_r, x_f) = sigma(C(x_r) - E[C(x_f)]). Gradients flow through both arguments; the generator gets
    them through the fake logits in both terms. BasicSR passes detached real logits here (`D(gt).detach()`, since
    the generator step does not update D); that choice is left to the caller.
    """
    real_logits, fake_logits = _at_least_float32(real_logits), _at_least_float32(fake_logits)
    return 0.5 * (
        _bce_logits(real_logits - fake_logits.mean(), 0.0) + _bce_logits(fake_logits - real_logits.mean(), 1.0)
    )


def vanilla_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Standard GAN discriminator loss: 0.5 * ( -E[log sigma(C(x_r))] - E[log(1 - sigma(C(x_f)))] )
    = 0.5 * [ BCEWithLogits(C(x_r), 1) + BCEWithLogits(C(x_f), 0) ]. Pass detached fakes (caller's job)."""
    return 0.5 * (_bce_logits(real_logits, 1.0) + _bce_logits(fake_logits, 0.0))


def vanilla_g_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss: -E[log sigma(C(x_f))] = BCEWithLogits(C(x_f), 1)."""
    return _bce_logits(fake_logits, 1.0)


# ---------------------------------------------------------------------------------------------------------
# U-Net discriminator (U-Net GAN, Schönfeld et al. 2020), as the ×16 perceptual-extreme system trains with it.
# `real` and `fake` are `train.discriminators.UNetOutput`s: encoder (N, 1) global logits and decoder (N, 1, H, W)
# per-pixel logits. Hinge losses, as BigGAN and U-Net GAN use them.


def _hinge(logits: Tensor, real: bool) -> Tensor:
    logits = _at_least_float32(logits)
    return F.relu(1.0 - logits) if real else F.relu(1.0 + logits)


def unet_d_loss(real: Any, fake: Any) -> Tensor:
    """L_D = E[relu(1 − D_enc(x))] + E[relu(1 + D_enc(G(z)))] + the same over every decoder pixel: the encoder
    judges whole images, the decoder each pixel. Pass the outputs of detached fakes (caller's job)."""
    return (_hinge(real.encoder, True).mean() + _hinge(fake.encoder, False).mean()
            + _hinge(real.decoder, True).mean() + _hinge(fake.decoder, False).mean())


def unet_g_loss(fake: Any) -> Tensor:
    """The generator's hinge loss against both heads: −E[D_enc(G(z))] − E[D_dec(G(z))] (mean over pixels)."""
    return -_at_least_float32(fake.encoder).mean() - _at_least_float32(fake.decoder).mean()


def cutmix_mask(n: int, height: int, width: int, *, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> Tensor:
    """(n, 1, height, width) CutMix masks, 1 where the mixed image shows the real one: per image a box covering
    a fraction 1 − λ of the image, λ ~ U(0, 1), centred uniformly and clipped at the borders (CutMix's boxes)."""
    mask = torch.zeros(n, 1, height, width)
    lam = torch.rand(n, generator=generator)
    centre = torch.rand(n, 2, generator=generator)
    for i in range(n):
        cut = float(torch.sqrt(1.0 - lam[i]))
        ch, cw = int(height * cut), int(width * cut)
        cy, cx = int(centre[i, 0] * height), int(centre[i, 1] * width)
        mask[i, :, max(cy - ch // 2, 0):min(cy + ch // 2, height), max(cx - cw // 2, 0):min(cx + cw // 2, width)] = 1
    return mask.to(device)


def cutmix(real: Tensor, fake: Tensor, mask: Tensor) -> Tensor:
    """mix(x, G(z), M) = M ⊙ x + (1 − M) ⊙ G(z)."""
    return mask * real + (1 - mask) * fake


def unet_d_mix_loss(mixed: Any, mask: Tensor) -> Tensor:
    """The discriminator's loss on a CutMix image: the encoder calls it fake (it is not a real image), and each
    decoder pixel gets the label of the image it came from: E[M ⊙ relu(1 − D_dec) + (1 − M) ⊙ relu(1 + D_dec)]."""
    dec = mixed.decoder
    per_pixel = mask * _hinge(dec, True) + (1 - mask) * _hinge(dec, False)
    return _hinge(mixed.encoder, False).mean() + per_pixel.mean()


def cutmix_consistency_loss(mixed_decoder: Tensor, real_decoder: Tensor, fake_decoder: Tensor, mask: Tensor) -> Tensor:
    """U-Net GAN's consistency regularization: the decoder's output on the mixed image should be the mix of its
    outputs on the two images, ‖D_dec(mix(x, G(z), M)) − mix(D_dec(x), D_dec(G(z)), M)‖², the mean over pixels."""
    target = cutmix(_at_least_float32(real_decoder), _at_least_float32(fake_decoder), mask)
    return F.mse_loss(_at_least_float32(mixed_decoder), target)


def feature_matching_loss(fake_features: Sequence[Tensor], real_features: Sequence[Tensor],
                          weights: Sequence[float] | None = None) -> Tensor:
    """Σ_l w_l · Huber(φ_l(G(z)), φ_l(x)): the smooth-L1 distance (δ = 1, mean over elements) between the
    discriminator's features of the generated and the real images, per layer, weighted. The default weights are
    1/L (the mean over layers). Real features carry no gradient (detached here)."""
    if len(fake_features) != len(real_features):
        raise ValueError(f"feature matching needs as many real as fake feature maps, got {len(real_features)} and "
                         f"{len(fake_features)}")
    if weights is None:
        weights = [1.0 / len(fake_features)] * len(fake_features)
    if len(weights) != len(fake_features):
        raise ValueError(f"feature_matching_layers gives {len(weights)} weights for {len(fake_features)} "
                         f"discriminator layers: give one per layer")
    loss = fake_features[0].new_zeros((), dtype=torch.float32)
    for w, f, r in zip(weights, fake_features, real_features, strict=True):
        if w:
            loss = loss + w * F.smooth_l1_loss(_at_least_float32(f), _at_least_float32(r.detach()), beta=1.0)
    return loss
