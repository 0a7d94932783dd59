"""Reference generators of the ESRGAN family, checkpoint loading/saving and network interpolation.

    model = engine.models.create("rrdb23")                     # a registered variant (see VARIANTS)
    model, info = engine.models.load("RealESRGAN_x4plus.pth")  # any supported checkpoint layout, or .param (ncnn)
    model, info = engine.models.load("RealESRGAN_x4plus")      # a published model by name (PRETRAINED)
    engine.models.save(model, "net.safetensors")
    blended = engine.models.interpolate(psnr_net, gan_net, alpha=0.8)

Architectures are rows of `ARCHS` (registry.py): an `Arch` names the class and the function that reads its
hyper-parameters from tensor shapes; `register_arch` adds one.
"""

from .base import SRNet
from .cascade import Cascade
from .checkpoint import CheckpointError, ModelInfo, save
from .edsr import EDSR
from .formats import ACCEPTED as ACCEPTED_FORMATS
from .interpolation import InterpolationError, interpolate, interpolated
from .pretrained import PRETRAINED, PretrainedError, load
from .rcan import RCAN
from .registry import ARCHS, VARIANTS, Arch, arch_of, build, create, register_arch
from .rrdbnet import RRDB, ResidualDenseBlock, RRDBNet
from .srresnet import MSRResNet, SRResNet
from .srvgg import SRVGGNetCompact

__all__ = [
    "ACCEPTED_FORMATS", "ARCHS", "PRETRAINED", "VARIANTS", "Arch", "Cascade", "CheckpointError", "EDSR",
    "InterpolationError", "MSRResNet", "ModelInfo", "PretrainedError", "RCAN", "RRDB", "RRDBNet", "ResidualDenseBlock",
    "SRNet", "SRResNet", "SRVGGNetCompact", "arch_of", "build", "create", "interpolate", "interpolated", "load",
    "register_arch", "save",
]
