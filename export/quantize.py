"""INT8 by explicit quantization: calibrate activation ranges on the reference network, then insert Q/DQ pairs into
the ONNX graph, as TensorRT 10/11 explicit quantization expects (TensorRT 11 has no calibrators any more).

    images = export.quantize.read_calibration_images("calib/")           # a few LR photos like the real inputs
    model = export.quantize.quantize(net, images, gan_net=gan)            # alpha-safe for θ(α), α ∈ [0, 1]
    export.onnx.save(model, "engines/rrdb23/model_int8.onnx")

Every quantized Conv gets
- on its input: QuantizeLinear → DequantizeLinear, per-tensor symmetric, scale = amax / 127, int8 zero point 0,
  where amax is the calibrated range of that Conv's input tensor (`collect_ranges`);
- on its weight: QuantizeLinear → DequantizeLinear, per output channel (axis 0), scale = amax_k / 127 with amax_k
  the largest |θ| of channel k over the PSNR and the GAN networks. The weight initializer stays float and keeps its
  state-dict name: TensorRT quantizes it with the Q scale at build time, and the alpha refit still finds it by name.
  Since |(1 − α)·a + α·b| ≤ max(|a|, |b|), no blended weight is ever clipped.
Biases and every other op stay in the graph's float type. Scales and zero points are initializers named
`qdq/<conv prefix>.input.scale`, `qdq/<conv prefix>.weight.zero_point`, ... (never a state-dict key).

Calibration hooks the reference torch network's nn.Conv2d modules (forward pre-hooks): a module's input is exactly
the ONNX Conv's input (after pixel-unshuffle, mean shift, ...), and the module's name is the Conv node's name.
Methods: "max" (absmax), "percentile" (of |x|), "mse" (the threshold minimizing the expected squared quantization
error) and "entropy" (TensorRT's KL-divergence search, 2048 bins → 128 levels); the last three read a histogram of
|x| over [0, absmax] with a fixed number of bins, filled in a second pass (memory: bins × convs, whatever the data).
With a GAN network, the blended network is calibrated at every α in `alphas` and the largest range is kept.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from engine.models import SRNet, interpolated

from .onnx import export_onnx

METHODS = ("max", "percentile", "mse", "entropy")
# Chosen by bench/int8_quality.py (study: docs/int8.md): mse has the smallest mean loss over three calibration sets
# and no parameter; the first and last convs (3 channels, little work) lose less in FP32 with every method, so they
# stay FP32.
DEFAULT_METHOD = "mse"
DEFAULT_KEEP_FIRST_LAST = True
DEFAULT_ALPHAS = (0.0, 0.5, 1.0)
DEFAULT_PERCENTILE = 99.99
DEFAULT_BINS = 2048
ENTROPY_LEVELS = 128  # TensorRT's entropy calibration: 2048 bins merged into 128 levels (the positive int8 half)
QMAX = 127  # symmetric int8: [-127, 127]
SCALE_PREFIX = "qdq/"
# Scales are floored so that a zero channel (or an input that is always 0) still has a positive, finite scale whose
# reciprocal is finite in the graph's type.
_SCALE_FLOOR = {np.dtype(np.float32): 2.0**-40, np.dtype(np.float16): 2.0**-14}


class QuantizeError(ValueError):
    """Calibration or Q/DQ insertion cannot proceed; the message says what to change."""


# calibration images --------------------------------------------------------------------------------------------


def read_calibration_images(folder: str | os.PathLike[str], *, limit: int = 64) -> list[np.ndarray]:
    """The first `limit` images (by name) of `folder`, as read by engine.imageio.read_image: (H, W) or (H, W, C),
    uint8/uint16/float. They should look like the LR inputs the engine will upscale."""
    from engine.imageio import ImageError, list_inputs, read_image

    if limit < 1:
        raise QuantizeError(f"limit must be at least 1, got {limit}")
    if not os.path.isdir(folder):
        raise QuantizeError(f"calibration folder {folder} does not exist or is not a folder")
    try:
        files = list_inputs(folder)
    except ImageError as e:
        raise QuantizeError(f"calibration folder {folder} has no images ({e}); put a few photos like the ones you "
                            f"will upscale there") from None
    return [read_image(f) for f in files[:limit]]


def image_planes(image: np.ndarray, channels: int) -> np.ndarray:
    """(H, W) or (H, W, C) uint8/uint16/float image → (channels, H, W) float32 in [0, 1] (gray is repeated, alpha
    is dropped)."""
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        got = tuple(image.shape) if hasattr(image, "shape") else type(image).__name__
        raise QuantizeError(f"calibration images must be numpy arrays of shape (H, W) or (H, W, C), got {got}")
    if image.dtype == np.uint8:
        x = image.astype(np.float32) / 255
    elif image.dtype == np.uint16:
        x = image.astype(np.float32) / 65535
    elif np.issubdtype(image.dtype, np.floating):
        x = image.astype(np.float32)
    else:
        raise QuantizeError(f"calibration images must be uint8, uint16 or float in [0, 1], got {image.dtype}")
    x = x[:, :, None] if x.ndim == 2 else x
    c = x.shape[2]
    if c == channels:
        pass
    elif c == 1:
        x = np.repeat(x, channels, axis=2)
    elif c == 4 and channels == 3:
        x = x[:, :, :3]
    else:
        raise QuantizeError(f"a calibration image has {c} channels; the network reads {channels}")
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def calibration_crops(images: Iterable[np.ndarray], *, channels: int, multiple: int = 1, size: int = 128,
                      per_image: int = 4, seed: int = 0) -> list[torch.Tensor]:
    """LR crops fed to the network: (1, channels, h, w) float32 in [0, 1] with h, w ≤ `size` and multiples of
    `multiple`. An image no bigger than `size` is taken whole; a bigger one gives its center crop and
    `per_image` − 1 random crops (fixed `seed`)."""
    if size < multiple or per_image < 1:
        raise QuantizeError(f"crop size {size} must be at least {multiple} and per_image ({per_image}) at least 1")
    rng = np.random.default_rng(seed)
    crops = []
    for k, image in enumerate(images):
        x = image_planes(image, channels)
        h, w = x.shape[1:]
        ch, cw = min(size, h) // multiple * multiple, min(size, w) // multiple * multiple
        if ch == 0 or cw == 0:
            raise QuantizeError(f"calibration image {k} is {h}×{w}; the network needs at least {multiple}×{multiple}")
        n = 1 if (ch, cw) == (h - h % multiple, w - w % multiple) else per_image
        corners = [((h - ch) // 2, (w - cw) // 2)]
        corners += [(int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))) for _ in range(n - 1)]
        crops += [torch.from_numpy(np.ascontiguousarray(x[None, :, t:t + ch, s:s + cw])) for t, s in corners]
    if not crops:
        raise QuantizeError("no calibration images were given; pass a few LR images like the real inputs")
    return crops


# thresholds from a histogram of |x| ------------------------------------------------------------------------------


def amax_from_histogram(hist: np.ndarray, amax: float, method: str, *,
                        percentile: float = DEFAULT_PERCENTILE) -> float:
    """The clipping threshold (same unit as `amax`) of one tensor from `hist`, counts of |x| in equal bins over
    [0, amax] (values equal to amax in the last bin)."""
    hist = np.asarray(hist, np.float64)
    if method == "max":
        return float(amax)
    if amax <= 0 or hist.sum() <= 0:
        return 0.0
    if method == "percentile":
        return _percentile(hist, amax, percentile)
    if method == "mse":
        return _mse(hist, amax)
    if method == "entropy":
        return _entropy(hist, amax)
    raise QuantizeError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


def _percentile(hist: np.ndarray, amax: float, percentile: float) -> float:
    """The `percentile` of |x|, linear within the bin where the cumulative count crosses it."""
    if not 0 < percentile <= 100:
        raise QuantizeError(f"percentile must be in (0, 100], got {percentile}")
    cum = np.cumsum(hist)
    rank = percentile / 100 * cum[-1]  # counts at or below the percentile
    k = min(int(np.searchsorted(cum, rank * (1 - 1e-12))), hist.size - 1)  # (tolerance: rank is rounded)
    below = cum[k - 1] if k else 0.0
    frac = (rank - below) / hist[k] if hist[k] > 0 else 1.0
    return float((k + min(max(frac, 0.0), 1.0)) * amax / hist.size)


def _mse(hist: np.ndarray, amax: float, stride: int = 8) -> float:
    """The bin edge T minimizing Σ count·err(center, T): rounding error (c − s·round(c/s))² with s = T/127 inside
    [0, T], clipping error (c − T)² above. Every `stride`-th edge first, then every edge around the best."""
    n = hist.size
    width = amax / n
    used = hist > 0
    c, h = ((np.arange(n) + 0.5) * width)[used], hist[used]

    def best(k: np.ndarray) -> int:
        t = k[:, None] * width
        s = t / QMAX
        err = np.where(c <= t, (c - s * np.round(c / s)) ** 2, (c - t) ** 2) @ h
        return int(k[int(np.argmin(err))])

    coarse = best(np.unique(np.append(np.arange(stride, n + 1, stride), n)))
    return float(best(np.arange(max(coarse - stride, 1), min(coarse + stride, n) + 1)) * width)


def _entropy(hist: np.ndarray, amax: float, levels: int = ENTROPY_LEVELS) -> float:
    """TensorRT's entropy calibration. For i = levels … bins: P = the first i bins with the counts beyond folded
    into bin i − 1; Q = the first i bins (without those counts) merged into `levels` groups, each group's count
    spread evenly over the bins where P is nonzero; both normalized. The threshold is the upper edge of bin i − 1
    for the i minimizing KL(P‖Q). All i at once from prefix sums, with N = Σ P, P_g and Q_g the groups' counts,
    n_g their nonzero bins: N·KL + N·log N = Σ_j p_j log p_j + N·log Σ Q − Σ_g P_g log(Q_g / n_g)."""
    n = hist.size
    if n < levels:
        raise QuantizeError(f"entropy calibration needs at least {levels} bins, got {n}")

    def xlogx(x: np.ndarray) -> np.ndarray:
        return np.where(x > 0, x * np.log(np.where(x > 0, x, 1)), 0.0)

    cum = np.concatenate([[0.0], np.cumsum(hist)])
    nonzero = np.concatenate([[0], np.cumsum(hist > 0)])
    hlogh = np.concatenate([[0.0], np.cumsum(xlogx(hist))])
    i = np.arange(levels, n + 1)  # candidate bin counts
    tail = cum[-1] - cum[i]  # counts beyond bin i − 1, folded into it in P
    plogp = hlogh[i - 1] + xlogx(hist[i - 1] + tail)
    edges = (np.arange(levels + 1)[None, :] * i[:, None]) // levels  # (candidates, levels + 1)
    q = cum[edges[:, 1:]] - cum[edges[:, :-1]]
    p = q.copy()
    p[:, -1] += tail
    count = nonzero[edges[:, 1:]] - nonzero[edges[:, :-1]]
    count[:, -1] += (hist[i - 1] == 0) & (tail > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogq = np.where(p > 0, p * np.log(q / np.maximum(count, 1)), 0.0).sum(axis=1)  # -inf: P > 0 where Q = 0
        kl = plogp + cum[-1] * np.log(cum[i]) - plogq
    return float(i[int(np.argmin(kl))] * amax / n)


# calibration -----------------------------------------------------------------------------------------------------


def conv_modules(net: nn.Module) -> dict[str, nn.Conv2d]:
    """The network's nn.Conv2d modules by name; export.onnx names each Conv node by the same prefix."""
    return {name: m for name, m in net.named_modules() if isinstance(m, nn.Conv2d)}


@contextmanager
def _pre_hooks(convs: Mapping[str, nn.Conv2d], fn: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    handles = [m.register_forward_pre_hook(partial(lambda name, _m, args: fn(name, args[0].detach()), name))
               for name, m in convs.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _run(net: nn.Module, crops: Sequence[torch.Tensor], convs: Mapping[str, nn.Conv2d],
         fn: Callable[[str, torch.Tensor], None]) -> None:
    p = next(net.parameters())
    with _pre_hooks(convs, fn), torch.inference_mode():
        for x in crops:
            net(x.to(p.device, p.dtype))


Split = Callable[[str, torch.Tensor], Iterable[tuple[str, torch.Tensor]]]


def _whole(name: str, x: torch.Tensor) -> Iterable[tuple[str, torch.Tensor]]:
    return ((name, x),)


def _ranges_of(net: nn.Module, crops: Sequence[torch.Tensor], method: str, percentile: float,
               bins: int, split: Split = _whole, convs: Mapping[str, nn.Conv2d] | None = None) -> dict[str, float]:
    """Activation amax of every conv's input for one network: absmax (pass 1), then a histogram (pass 2). `split`
    names the parts of a conv's input that get their own range (default: the whole tensor, named by the conv)."""
    convs = conv_modules(net) if convs is None else convs
    absmax: dict[str, float] = {}

    def see_max(name: str, x: torch.Tensor) -> None:
        for key, part in split(name, x):
            absmax[key] = max(absmax.get(key, 0.0), float(part.abs().amax()))

    _run(net, crops, convs, see_max)
    bad = [name for name, v in absmax.items() if not np.isfinite(v)]
    if bad:
        raise QuantizeError(f"the input of conv {bad[0]} is not finite (inf or NaN) on the calibration images: the "
                            f"weights or the images are broken ({len(bad)} convs affected)")
    if method == "max":
        return absmax
    hists = {key: torch.zeros(bins, dtype=torch.float64) for key in absmax}

    def see_hist(name: str, x: torch.Tensor) -> None:
        for key, part in split(name, x):
            top = absmax[key]
            if top > 0:  # clamp: a second pass on a GPU may differ from the first in the last bit
                hists[key] += torch.histc(part.abs().float().clamp_(max=top), bins, 0, top).double().cpu()

    _run(net, crops, convs, see_hist)
    return {key: amax_from_histogram(hists[key].numpy(), absmax[key], method, percentile=percentile)
            for key in absmax}


def collect_ranges(net: SRNet, images: Iterable[np.ndarray], *, gan_net: SRNet | None = None,
                   alphas: Sequence[float] = DEFAULT_ALPHAS, method: str = DEFAULT_METHOD,
                   percentile: float = DEFAULT_PERCENTILE, bins: int = DEFAULT_BINS, crop: int = 128,
                   crops_per_image: int = 4, seed: int = 0) -> dict[str, float]:
    """Conv prefix → amax of that conv's input tensor (the unit of the network's activations; images in [0, 1]).

    `images` are LR images, (H, W) or (H, W, C) uint8/uint16/float arrays; each gives up to `crops_per_image` crops
    of at most `crop`×`crop` pixels (see `calibration_crops`), fed one at a time. With `gan_net`, the blended
    network θ(α) = (1 − α)·θ_net + α·θ_gan is calibrated for every α in `alphas` and the largest amax is kept, so the
    ranges hold at those α (include 0 and 1). `method`: one of METHODS; `percentile` for "percentile"; `bins` for
    the histogram methods (≥ 128 for "entropy").
    """
    if method not in METHODS:
        raise QuantizeError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if bins < (ENTROPY_LEVELS if method == "entropy" else 1):
        raise QuantizeError(f"bins must be at least {ENTROPY_LEVELS} for entropy calibration, got {bins}")
    if not 0 < percentile <= 100:
        raise QuantizeError(f"percentile must be in (0, 100], got {percentile}")
    crops = calibration_crops(images, channels=net.in_channels, multiple=net.input_multiple, size=crop,
                              per_image=crops_per_image, seed=seed)
    was_training = net.training
    net.eval()
    try:
        if gan_net is None:
            return _ranges_of(net, crops, method, percentile, bins)
        if not alphas:
            raise QuantizeError("alphas is empty; give the α values the engine will run at, e.g. (0.0, 0.5, 1.0)")
        ranges: dict[str, float] = {}
        for alpha in alphas:
            for name, amax in _ranges_of(interpolated(net, gan_net, alpha), crops, method, percentile, bins).items():
                ranges[name] = max(ranges.get(name, 0.0), amax)
        return ranges
    finally:
        net.train(was_training)


def rdb_slice_ranges(net: SRNet, images: Iterable[np.ndarray], *, gan_net: SRNet | None = None,
                     alphas: Sequence[float] = DEFAULT_ALPHAS, method: str = DEFAULT_METHOD,
                     percentile: float = DEFAULT_PERCENTILE, bins: int = DEFAULT_BINS, crop: int = 128,
                     crops_per_image: int = 4, seed: int = 0) -> dict[str, float]:
    """Per-slice activation ranges of an RRDBNet's dense blocks, for INT8 kernels that keep one int8 buffer per RDB
    with one scale per slice (kernels/rrdbnet_int8.py): `body.{i}.rdb{k}.x` (the RDB's input) and
    `body.{i}.rdb{k}.y{j}` (conv_j's activated output), read as channel ranges of conv5's input, and `conv_body` (the
    trunk's output, conv_body's input). Alpha-safe like `collect_ranges`: the max over the blends at `alphas`."""
    from engine.models.rrdbnet import RRDBNet

    if not isinstance(net, RRDBNet):
        raise QuantizeError(f"slice ranges are for RRDBNet, got {type(net).__name__}")
    if method not in METHODS:
        raise QuantizeError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    nf, gc = net.hparams["num_feat"], net.hparams["num_grow_ch"]
    bounds = [("x", 0, nf)] + [(f"y{j}", nf + (j - 1) * gc, nf + j * gc) for j in range(1, 5)]

    def split(name: str, x: torch.Tensor) -> Iterable[tuple[str, torch.Tensor]]:
        if name == "conv_body":
            return ((name, x),)
        rdb = name.rsplit(".", 1)[0]
        return tuple((f"{rdb}.{key}", x[:, a:b]) for key, a, b in bounds)

    crops = calibration_crops(images, channels=net.in_channels, multiple=net.input_multiple, size=crop,
                              per_image=crops_per_image, seed=seed)
    nets = [net.eval()] if gan_net is None else [interpolated(net.eval(), gan_net, a) for a in alphas]
    ranges: dict[str, float] = {}
    for candidate in nets:
        convs = {name: m for name, m in conv_modules(candidate).items()
                 if name == "conv_body" or name.endswith(".conv5")}
        for key, amax in _ranges_of(candidate, crops, method, percentile, bins, split, convs).items():
            ranges[key] = max(ranges.get(key, 0.0), amax)
    return ranges


def weight_ranges(net: SRNet, gan_net: SRNet | None = None) -> dict[str, np.ndarray]:
    """Conv prefix → (out_channels,) float64 amax per output channel: max |θ| over all but axis 0 of the weight,
    and over both networks when `gan_net` is given (then every blend θ(α), α ∈ [0, 1], stays within it)."""
    convs = conv_modules(net)
    other = conv_modules(gan_net) if gan_net is not None else {}
    out = {}
    for name, conv in convs.items():
        w = conv.weight.detach().double().abs().flatten(1).amax(dim=1)
        if gan_net is not None:
            if name not in other or other[name].weight.shape != conv.weight.shape:
                raise QuantizeError(f"gan_net has no conv {name!r} of shape {tuple(conv.weight.shape)}: the two "
                                    f"networks must have one architecture")
            w = torch.maximum(w, other[name].weight.detach().double().abs().flatten(1).amax(dim=1))
        out[name] = w.cpu().numpy()
    return out


# Q/DQ insertion --------------------------------------------------------------------------------------------------


def scales(amax: np.ndarray | float, dtype: npt.DTypeLike) -> np.ndarray:
    """Symmetric int8 scales amax / 127 in `dtype`, floored so that every scale is positive and finite."""
    dtype = np.dtype(dtype)
    if dtype not in _SCALE_FLOOR:
        raise QuantizeError(f"scales are float32 or float16, got {dtype}")
    s = np.asarray(amax, np.float64) / QMAX
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise QuantizeError(f"ranges must be finite and non-negative, got {amax}")
    return np.asarray(np.maximum(s, _SCALE_FLOOR[dtype]), dtype)  # a float gives a 0-d array: a per-tensor scale


def first_last_convs(model: onnx.ModelProto) -> set[str]:
    """Names of the Conv nodes with no Conv before them (reading the input image) or none after them (writing the
    output image)."""
    nodes = list(model.graph.node)
    after_conv: set[str] = set()  # tensors computed from some Conv's output
    first, last = set(), set()
    for node in nodes:
        if node.op_type == "Conv":
            if node.input[0] not in after_conv:
                first.add(node.name)
            after_conv.update(node.output)
        elif any(t in after_conv for t in node.input):
            after_conv.update(node.output)
    before_conv: set[str] = set()  # tensors some Conv reads, directly or not
    for node in reversed(nodes):
        if node.op_type == "Conv":
            if not any(t in before_conv for t in node.output):
                last.add(node.name)
            before_conv.add(node.input[0])
        elif any(t in before_conv for t in node.output):
            before_conv.update(node.input)
    return first | last


def _initializer(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.array(array), name)  # (not ascontiguousarray: it makes scalars 1-D)


def _qdq(prefix: str, x: str, scale: np.ndarray, axis: int | None) -> tuple[list[onnx.NodeProto], list[TensorProto],
                                                                           str]:
    """Q → DQ of tensor `x` with `scale` (scalar: per tensor; 1-D: along `axis`) and int8 zero points 0."""
    s_name, z_name = f"{SCALE_PREFIX}{prefix}.scale", f"{SCALE_PREFIX}{prefix}.zero_point"
    inits = [_initializer(s_name, scale), _initializer(z_name, np.zeros(scale.shape, np.int8))]
    attrs: dict[str, Any] = {} if axis is None else {"axis": axis}
    q, dq = f"{SCALE_PREFIX}{prefix}.quantized", f"{SCALE_PREFIX}{prefix}.dequantized"
    nodes = [helper.make_node("QuantizeLinear", [x, s_name, z_name], [q], name=f"{SCALE_PREFIX}{prefix}.quantize",
                              **attrs),
             helper.make_node("DequantizeLinear", [q, s_name, z_name], [dq],
                              name=f"{SCALE_PREFIX}{prefix}.dequantize", **attrs)]
    return nodes, inits, dq


def quantize_onnx(model: onnx.ModelProto, ranges: Mapping[str, float], weight_amax: Mapping[str, np.ndarray], *,
                  keep: Iterable[str] = ()) -> onnx.ModelProto:
    """A copy of `model` (from export.onnx.export_onnx, fp32 or fp16) with Q/DQ on the input and the weight of
    every Conv whose name is not in `keep`.

    `ranges`: Conv name → activation amax of its input (collect_ranges); `weight_amax`: Conv name →
    (out_channels,) amax per output channel (weight_ranges). Convs in `keep` stay in the graph's float type. fp16
    graphs get fp16 scales and opset ≥ 19 (where Q/DQ accept fp16). The result passed onnx.checker (full check).
    """
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    keep = set(keep)
    if keep - convs.keys():
        raise QuantizeError(f"keep names convs the graph does not have: {sorted(keep - convs.keys())}; "
                            f"Conv nodes are named by module prefix, e.g. {next(iter(convs), 'conv_first')!r}")
    todo = [name for name in convs if name not in keep]
    missing = [n for n in todo if n not in ranges or n not in weight_amax]
    if missing:
        raise QuantizeError(f"no activation range or weight range for {len(missing)} convs ({missing[:3]} ...): "
                            f"calibrate the network the graph was exported from, or add them to keep")
    inits = {t.name: t for t in model.graph.initializer}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    new_inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    fp16 = False
    for node in model.graph.node:
        if node.op_type != "Conv" or node.name in keep:
            nodes.append(node)
            continue
        weight = inits.get(node.input[1])
        if weight is None:
            raise QuantizeError(f"conv {node.name}: its weight {node.input[1]!r} is not an initializer")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(weight.data_type))
        if dtype not in _SCALE_FLOOR:
            raise QuantizeError(f"conv {node.name}: weights of type {dtype} cannot be quantized (fp32 or fp16 only)")
        fp16 |= dtype == np.float16
        w_amax = np.asarray(weight_amax[node.name], np.float64)
        if w_amax.shape != (weight.dims[0],):
            raise QuantizeError(f"conv {node.name}: weight_amax has shape {w_amax.shape}, expected "
                                f"({weight.dims[0]},) (one per output channel)")
        x_nodes, x_inits, x_dq = _qdq(f"{node.name}.input", node.input[0], scales(float(ranges[node.name]), dtype),
                                      None)
        w_nodes, w_inits, w_dq = _qdq(f"{node.name}.weight", node.input[1], scales(w_amax, dtype), 0)
        conv = onnx.NodeProto()
        conv.CopyFrom(node)
        conv.input[0], conv.input[1] = x_dq, w_dq
        nodes += x_nodes + w_nodes + [conv]
        new_inits += x_inits + w_inits
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(new_inits)
    if fp16:
        for opset in out.opset_import:
            if opset.domain in ("", "ai.onnx") and opset.version < 19:
                opset.version = 19
    onnx.checker.check_model(out, full_check=True)
    return out


def quantize(net: SRNet, calib_images: Iterable[np.ndarray], *, gan_net: SRNet | None = None,
             method: str = DEFAULT_METHOD, keep_first_last: bool = DEFAULT_KEEP_FIRST_LAST,
             alphas: Sequence[float] = DEFAULT_ALPHAS, precision: str = "fp32", **calibration: int | float
             ) -> onnx.ModelProto:
    """The Q/DQ ONNX graph of `net` (export_onnx with `precision`, fp32 I/O): calibrated on `calib_images` (LR
    images, see collect_ranges; extra keywords go there), alpha-safe when `gan_net` is given, the first and last
    convs left unquantized when `keep_first_last`."""
    was_training = net.training
    net.eval()
    try:
        model = export_onnx(net, precision=precision)
    finally:
        net.train(was_training)
    ranges = collect_ranges(net, calib_images, gan_net=gan_net, alphas=alphas, method=method,
                            **calibration)  # type: ignore[arg-type]
    keep = first_last_convs(model) if keep_first_last else set()
    return quantize_onnx(model, ranges, weight_ranges(net, gan_net), keep=keep)
