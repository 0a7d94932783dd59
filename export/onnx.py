"""ONNX export of the reference networks: fp32 or fp16 graphs with dynamic batch, height and width.

    model = export.onnx.export_onnx(net, precision="fp16", io_dtype="fp32")
    export.onnx.save(model, "engines/rrdb23/model.onnx")

The graph is written op by op from the network's own modules by the emitter registered for its architecture
(`EMITTERS`, one `@register_emitter(arch)` function each) rather than traced by `torch.onnx.export`, because the
traced graphs break what engines need (docs/engines.md, "ONNX export"):
- both exporters write `pixel_unshuffle` as Reshape/Transpose with sizes taken from the traced shape, the
  pattern that breaks dynamic shapes in TensorRT (pytorch/TensorRT#595); here it is the standard
  `SpaceToDepth` followed by a constant channel `Gather` (ONNX's order is block-major, PyTorch's channel-major),
  and pixel shuffle is `DepthToSpace` in CRD mode, which is PyTorch's order;
- the TorchScript exporter merges initializers with equal values (all-zero biases become one tensor behind
  Identity nodes) and the dynamo exporter folds some away, so the weights could no longer be refitted by name.

Here every weight initializer is named by its state-dict key (`body.0.rdb1.conv1.weight`), which is what the
alpha refit (ONNX Runtime initializer rebinding, TensorRT's Refitter) and the INT8 calibration map by. Each Conv
node is named by its module's prefix (`body.0.rdb1.conv1`). Constants that are not weights live under `const/`.

An architecture without an emitter is traced instead (TorchScript exporter, `dynamo=False`, without constant
folding and with initializers kept apart, so that they keep their state-dict names), with a warning once per
architecture; whether the names survived, and so whether alpha refit works for it, is `refit_names_ok(model, net)`.

Input `input` is (batch, in_channels, height, width), output `output` is (batch, out_channels, height·s, width·s);
batch, height and width are dynamic (height and width multiples of `net.input_multiple`).
"""

from __future__ import annotations

import copy
import io
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from engine.atomic import atomic_write
from engine.models import SRNet, arch_of
from engine.models.cascade import Cascade
from engine.models.edsr import EDSR
from engine.models.rcan import RCAN
from engine.models.rrdbnet import RRDBNet
from engine.models.srresnet import MSRResNet, SRResNet
from engine.models.srvgg import LEAKY_SLOPE, SRVGGNetCompact

OPSET = 18
NOT_WEIGHTS = ("const/", "qdq/")  # initializer name prefixes of graph constants and INT8 scales (export/quantize.py)
PRECISIONS = ("fp32", "fp16")
INPUT, OUTPUT = "input", "output"
ELEM = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16}

log = logging.getLogger("export.onnx")


class ExportError(ValueError):
    """The network or the options cannot be exported; the message says what to change."""


class _Graph:
    """A growing ONNX graph in one float type (`dtype`): nodes, initializers and fresh value names."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}:{self._count}"

    def op(self, op_type: str, inputs: Sequence[str], *, name: str | None = None, **attrs: Any) -> str:
        out = self.fresh(name or op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=name or out, **attrs))
        return out

    def weight(self, key: str, tensor: torch.Tensor) -> str:
        """An initializer named by its state-dict key, in the graph's float type."""
        if key in self.initializers:
            raise ExportError(f"two tensors are named {key!r}")
        array = tensor.detach().cpu().double().numpy().astype(self.dtype)
        self.initializers[key] = numpy_helper.from_array(array, key)
        return key

    def const(self, value: Any, dtype: Any = None) -> str:
        array = np.asarray(value, dtype=dtype or self.dtype)
        name = f"const/{self._count}"
        self._count += 1
        self.initializers[name] = numpy_helper.from_array(array, name)
        return name

    # layers -----------------------------------------------------------------------------------------------

    def conv(self, conv: nn.Conv2d, prefix: str, x: str) -> str:
        if conv.groups != 1 or conv.dilation != (1, 1) or not isinstance(conv.padding, tuple):
            raise ExportError(f"{prefix}: only plain convolutions are exported (groups 1, dilation 1, int padding)")
        inputs = [x, self.weight(f"{prefix}.weight", conv.weight)]
        if conv.bias is not None:
            inputs.append(self.weight(f"{prefix}.bias", conv.bias))
        ph, pw = conv.padding
        out = self.fresh(prefix)
        self.nodes.append(helper.make_node(
            "Conv", inputs, [out], name=prefix, kernel_shape=list(conv.kernel_size), strides=list(conv.stride),
            pads=[ph, pw, ph, pw]))
        return out

    def leaky_relu(self, x: str, slope: float) -> str:
        return self.op("LeakyRelu", [x], alpha=float(slope))

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def prelu(self, prelu: nn.PReLU, prefix: str, x: str) -> str:
        # ONNX PRelu broadcasts the slope unidirectionally: (C,) must become (C, 1, 1) to apply per channel.
        slope = prelu.weight.detach().reshape(-1, 1, 1)
        return self.op("PRelu", [x, self.weight(f"{prefix}.weight", slope)])

    def batch_norm(self, bn: nn.BatchNorm2d, prefix: str, x: str) -> str:
        if bn.running_mean is None or bn.running_var is None or bn.weight is None or bn.bias is None:
            raise ExportError(f"{prefix}: batch norm without running statistics or affine weights")
        inputs = [x, self.weight(f"{prefix}.weight", bn.weight), self.weight(f"{prefix}.bias", bn.bias),
                  self.weight(f"{prefix}.running_mean", bn.running_mean),
                  self.weight(f"{prefix}.running_var", bn.running_var)]
        return self.op("BatchNormalization", inputs, epsilon=float(bn.eps))

    def add(self, a: str, b: str) -> str:
        return self.op("Add", [a, b])

    def scaled(self, x: str, factor: float) -> str:
        return x if factor == 1.0 else self.op("Mul", [x, self.const(factor)])

    def resize(self, x: str, factor: int, mode: str) -> str:
        """PyTorch's `interpolate(scale_factor=factor)`: nearest (floor of asymmetric coordinates) or bilinear
        with align_corners=False (half-pixel coordinates)."""
        scales = self.const([1.0, 1.0, float(factor), float(factor)], np.float32)
        if mode == "nearest":
            return self.op("Resize", [x, "", scales], mode="nearest", coordinate_transformation_mode="asymmetric",
                           nearest_mode="floor")
        return self.op("Resize", [x, "", scales], mode="linear", coordinate_transformation_mode="half_pixel")

    def pixel_shuffle(self, x: str, factor: int) -> str:
        return self.op("DepthToSpace", [x], blocksize=factor, mode="CRD")

    def pixel_unshuffle(self, x: str, factor: int, channels: int) -> str:
        # SpaceToDepth writes channel (i·r + j)·C + c; PyTorch's pixel_unshuffle writes c·r² + i·r + j.
        y = self.op("SpaceToDepth", [x], blocksize=factor)
        r2 = factor * factor
        order = [(k % r2) * channels + k // r2 for k in range(channels * r2)]
        return self.op("Gather", [y, self.const(order, np.int64)], axis=1)


# architectures ---------------------------------------------------------------------------------------------

Emitter = Callable[[_Graph, Any, str, str], str]  # (graph, network, key prefix, input value) → output value
EMITTERS: dict[str, Emitter] = {}


def register_emitter(arch: str) -> Callable[[Emitter], Emitter]:
    """Decorator: the function writes the ONNX nodes of registered architecture `arch` (one emitter per arch)."""
    def add(emitter: Emitter) -> Emitter:
        if arch in EMITTERS:
            raise ValueError(f"architecture {arch!r} already has an ONNX emitter ({EMITTERS[arch].__name__})")
        EMITTERS[arch] = emitter
        return emitter
    return add


@register_emitter("rrdbnet")
def _rrdbnet(g: _Graph, net: RRDBNet, p: str, x: str) -> str:
    if net.unshuffle > 1:
        x = g.pixel_unshuffle(x, net.unshuffle, net.in_channels)
    feat = g.conv(net.conv_first, f"{p}conv_first", x)
    body = feat
    for i, rrdb in enumerate(net.body):
        rrdb_in = body
        for k in (1, 2, 3):
            rdb = getattr(rrdb, f"rdb{k}")
            q = f"{p}body.{i}.rdb{k}"
            parts = [body]
            for j in (1, 2, 3, 4):
                y = g.leaky_relu(g.conv(getattr(rdb, f"conv{j}"), f"{q}.conv{j}", g.op("Concat", parts, axis=1)
                                        if len(parts) > 1 else parts[0]), 0.2)
                parts.append(y)
            y5 = g.conv(rdb.conv5, f"{q}.conv5", g.op("Concat", parts, axis=1))
            body = g.add(body, g.scaled(y5, 0.2))
        body = g.add(rrdb_in, g.scaled(body, 0.2))
    feat = g.add(feat, g.conv(net.conv_body, f"{p}conv_body", body))
    for k in range(1, net.num_upsample + 1):
        feat = g.leaky_relu(g.conv(getattr(net, f"conv_up{k}"), f"{p}conv_up{k}", g.resize(feat, 2, "nearest")), 0.2)
    return g.conv(net.conv_last, f"{p}conv_last", g.leaky_relu(g.conv(net.conv_hr, f"{p}conv_hr", feat), 0.2))


@register_emitter("srresnet")
def _srresnet(g: _Graph, net: SRResNet, p: str, x: str) -> str:
    feat = g.prelu(net.prelu_first, f"{p}prelu_first", g.conv(net.conv_first, f"{p}conv_first", x))
    body = feat
    block: Any  # the submodules, typed as nn.Module by torch
    for i, block in enumerate(net.body):
        q = f"{p}body.{i}"
        y = g.prelu(block.prelu, f"{q}.prelu", g.batch_norm(block.bn1, f"{q}.bn1", g.conv(block.conv1, f"{q}.conv1",
                                                                                             body)))
        body = g.add(body, g.batch_norm(block.bn2, f"{q}.bn2", g.conv(block.conv2, f"{q}.conv2", y)))
    feat = g.add(feat, g.batch_norm(net.bn_body, f"{p}bn_body", g.conv(net.conv_body, f"{p}conv_body", body)))
    stage: Any
    for i, stage in enumerate(net.upsample):
        q = f"{p}upsample.{i}"
        feat = g.prelu(stage.prelu, f"{q}.prelu",
                       g.pixel_shuffle(g.conv(stage.conv, f"{q}.conv", feat), stage.shuffle.upscale_factor))
    return g.conv(net.conv_last, f"{p}conv_last", feat)


def _res_blocks(g: _Graph, blocks: Any, p: str, x: str) -> str:
    block: Any
    for i, block in enumerate(blocks):
        q = f"{p}body.{i}"
        y = g.conv(block.conv2, f"{q}.conv2", g.relu(g.conv(block.conv1, f"{q}.conv1", x)))
        x = g.add(x, g.scaled(y, float(block.res_scale)))
    return x


@register_emitter("msrresnet")
def _msrresnet(g: _Graph, net: MSRResNet, p: str, x: str) -> str:
    feat = _res_blocks(g, net.body, p, g.leaky_relu(g.conv(net.conv_first, f"{p}conv_first", x), 0.1))
    factor = net.pixel_shuffle.upscale_factor
    feat = g.leaky_relu(g.pixel_shuffle(g.conv(net.upconv1, f"{p}upconv1", feat), factor), 0.1)
    if net.scale == 4:
        feat = g.leaky_relu(g.pixel_shuffle(g.conv(net.upconv2, f"{p}upconv2", feat), factor), 0.1)
    out = g.conv(net.conv_last, f"{p}conv_last", g.leaky_relu(g.conv(net.conv_hr, f"{p}conv_hr", feat), 0.1))
    return g.add(out, g.resize(x, net.scale, "linear"))


def _mean_shifted(g: _Graph, net: EDSR | RCAN, p: str, x: str, trunk: Callable[[str], str]) -> str:
    """EDSR's and RCAN's frame: (x − mean)·img_range ─ conv_first ─ trunk (+ long skip) ─ conv_after_body ─
    upsample (conv, PixelShuffle pairs) ─ conv_last ─ /img_range + mean."""
    mean = g.const(net.mean.detach().cpu().double().numpy())
    feat = g.conv(net.conv_first, f"{p}conv_first", g.scaled(g.op("Sub", [x, mean]), float(net.img_range)))
    feat = g.add(feat, g.conv(net.conv_after_body, f"{p}conv_after_body", trunk(feat)))
    layer: Any
    for i, layer in enumerate(net.upsample):
        if isinstance(layer, nn.Conv2d):
            feat = g.conv(layer, f"{p}upsample.{i}", feat)
        else:
            feat = g.pixel_shuffle(feat, layer.upscale_factor)
    out = g.conv(net.conv_last, f"{p}conv_last", feat)
    return g.op("Add", [g.op("Div", [out, g.const(float(net.img_range))]), mean])


@register_emitter("edsr")
def _edsr(g: _Graph, net: EDSR, p: str, x: str) -> str:
    return _mean_shifted(g, net, p, x, lambda feat: _res_blocks(g, net.body, p, feat))


def _rcan_groups(g: _Graph, net: RCAN, p: str, x: str) -> str:
    group: Any
    block: Any
    for i, group in enumerate(net.body):  # type: ignore[arg-type]  # an nn.Sequential of ResidualGroups
        group_in = x
        for j, block in enumerate(group.residual_group):
            q = f"{p}body.{i}.residual_group.{j}.rcab"
            y = g.conv(block.rcab[2], f"{q}.2", g.relu(g.conv(block.rcab[0], f"{q}.0", x)))
            att = block.rcab[3].attention  # pool, squeeze conv, ReLU, excite conv, sigmoid
            w = g.relu(g.conv(att[1], f"{q}.3.attention.1", g.op("GlobalAveragePool", [y])))
            w = g.op("Sigmoid", [g.conv(att[3], f"{q}.3.attention.3", w)])
            x = g.add(x, g.op("Mul", [y, w]))  # (N, C, H, W) · (N, C, 1, 1)
        x = g.add(group_in, g.conv(group.conv, f"{p}body.{i}.conv", x))
    return x


@register_emitter("rcan")
def _rcan(g: _Graph, net: RCAN, p: str, x: str) -> str:
    return _mean_shifted(g, net, p, x, lambda feat: _rcan_groups(g, net, p, feat))


@register_emitter("srvgg")
def _srvgg(g: _Graph, net: SRVGGNetCompact, p: str, x: str) -> str:
    feat = x
    layer: Any
    for i, layer in enumerate(net.body):
        if isinstance(layer, nn.Conv2d):
            feat = g.conv(layer, f"{p}body.{i}", feat)
        elif isinstance(layer, nn.PReLU):
            feat = g.prelu(layer, f"{p}body.{i}", feat)
        elif isinstance(layer, nn.LeakyReLU):
            feat = g.leaky_relu(feat, LEAKY_SLOPE)
        else:
            feat = g.relu(feat)
    return g.add(g.pixel_shuffle(feat, net.scale), g.resize(x, net.scale, "nearest"))


@register_emitter("cascade")
def _cascade(g: _Graph, net: Cascade, p: str, x: str) -> str:
    stage: Any
    for i, stage in enumerate(net.stages):
        x = _emit(g, stage, f"{p}stages.{i}.", x)
    return x


class _NoEmitter(Exception):
    """A network (or a stage of it) has no emitter: export traces the whole network instead."""


def _emit(g: _Graph, net: SRNet, prefix: str, x: str) -> str:
    try:
        emitter = EMITTERS.get(arch_of(net).name)
    except ValueError:  # a class that is no registered architecture
        emitter = None
    if emitter is None:
        raise _NoEmitter(type(net).__name__)
    return emitter(g, net, prefix, x)


def export_onnx(net: SRNet, *, precision: str = "fp32", io_dtype: str = "fp32", opset: int = OPSET) -> onnx.ModelProto:
    """The ONNX graph of `net` (in eval mode) with dynamic batch, height and width.

    `precision` fp32 or fp16 sets the weights' and the computation's type; `io_dtype` (fp32 or fp16) the type of
    `input` and `output` (an fp16 graph with fp32 I/O casts at both ends). The graph is written by the emitters
    of `net`'s architecture (and of each cascade stage's); a network without one is traced by torch.onnx.export
    (see the module's docstring). The returned model passed `onnx.checker` with full checking.
    """
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be fp32 or fp16, got {precision!r}")
    if io_dtype not in PRECISIONS:
        raise ExportError(f"io_dtype must be fp32 or fp16, got {io_dtype!r}")
    if opset < 17:
        raise ExportError(f"opset must be 17 or newer, got {opset}")
    if net.training:
        raise ExportError("the network is in training mode (batch norm would use batch statistics): call .eval()")
    try:
        model = _emitted(net, precision, io_dtype, opset)
    except _NoEmitter as e:
        _warn_traced(net, str(e))
        model = _traced(net, precision, io_dtype, opset)
    onnx.checker.check_model(model, full_check=True)
    return model


def _emitted(net: SRNet, precision: str, io_dtype: str, opset: int) -> onnx.ModelProto:
    """The graph written by the architectures' emitters; _NoEmitter when one is missing."""
    g = _Graph(np.dtype(np.float16 if precision == "fp16" else np.float32))
    x = INPUT
    if io_dtype != precision:
        x = g.op("Cast", [x], name="cast_input", to=ELEM[precision])
    with torch.no_grad():
        y = _emit(g, net, "", x)
    if io_dtype != precision:
        y = g.op("Cast", [y], name="cast_output", to=ELEM[io_dtype])
    g.nodes.append(helper.make_node("Identity", [y], [OUTPUT], name="output"))

    s = net.scale
    inputs = [helper.make_tensor_value_info(INPUT, ELEM[io_dtype], ["batch", net.in_channels, "height", "width"])]
    outputs = [helper.make_tensor_value_info(OUTPUT, ELEM[io_dtype],
                                             ["batch", net.out_channels, f"height*{s}", f"width*{s}"])]
    graph = helper.make_graph(g.nodes, f"{net.arch}_x{s}", inputs, outputs, list(g.initializers.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="esrgan-engine")
    model.ir_version = min(model.ir_version, 10)  # readable by onnxruntime ≥ 1.20 and TensorRT 10
    return model


_warned: set[str] = set()


def _warn_traced(net: SRNet, missing: str) -> None:
    """Say once per network class that its graph is traced, not written by an emitter."""
    name = type(net).__name__
    if name not in _warned:
        _warned.add(name)
        where = "" if missing == name else f" (a stage of {name})"
        log.warning("no ONNX emitter for %s%s: tracing it with torch.onnx.export; refit of its weights for alpha "
                    "works only where export.onnx.refit_names_ok says so", missing, where)


def _traced(net: SRNet, precision: str, io_dtype: str, opset: int) -> onnx.ModelProto:
    """`net` traced by the TorchScript exporter at `precision`, its initializers named by state-dict keys where the
    exporter kept them (other tensors are renamed under const/), `io_dtype` casts at both ends."""
    dtype = torch.float16 if precision == "fp16" else torch.float32
    traced = copy.deepcopy(net).to(device="cpu", dtype=dtype)
    side = 8 * net.input_multiple
    probe = torch.rand(1, net.in_channels, side, side, generator=torch.Generator().manual_seed(0)).to(dtype)
    s = net.scale
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice and tracer warnings
        torch.onnx.export(
            traced, (probe,), buffer, dynamo=False,  # type: ignore[arg-type]  # a file object works too
            opset_version=opset, input_names=[INPUT], output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch", 2: "height", 3: "width"},
                          OUTPUT: {0: "batch", 2: f"height*{s}", 3: f"width*{s}"}},
            # constant folding fuses batch norm into convs and renames what it folds; initializers kept as inputs
            # are not merged when equal: both keep the state-dict names refit maps by
            do_constant_folding=False, keep_initializers_as_inputs=True, training=torch.onnx.TrainingMode.EVAL)
    model = onnx.load_from_string(buffer.getvalue())
    graph = model.graph
    keys = set(net.state_dict())
    renamed = {t.name: f"const/{t.name}" for t in graph.initializer if t.name not in keys}
    for t in graph.initializer:
        t.name = renamed.get(t.name, t.name)
    initializers = {t.name for t in graph.initializer} | set(renamed)
    kept = [v for v in graph.input if v.name not in initializers]
    del graph.input[:]
    graph.input.extend(kept)
    nodes = list(graph.node)
    for node in nodes:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    if io_dtype != precision:
        for node in nodes:
            node.input[:] = ["cast_input" if name == INPUT else name for name in node.input]
            node.output[:] = ["cast_output" if name == OUTPUT else name for name in node.output]
        nodes = [helper.make_node("Cast", [INPUT], ["cast_input"], name="cast_input", to=ELEM[precision]), *nodes,
                 helper.make_node("Cast", ["cast_output"], [OUTPUT], name="cast_output", to=ELEM[io_dtype])]
        graph.input[0].type.tensor_type.elem_type = ELEM[io_dtype]
        graph.output[0].type.tensor_type.elem_type = ELEM[io_dtype]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.name = f"{net.arch}_x{s}"
    model.producer_name = "esrgan-engine (traced)"
    model.ir_version = min(model.ir_version, 10)
    return model


def refit_names_ok(model: onnx.ModelProto, net: SRNet) -> bool:
    """Whether alpha refit works for `model`: its weight initializers are exactly `net`'s floating-point state-dict
    tensors, by name (graphs of the emitters always; traced graphs when the exporter kept every name)."""
    return _refit_problem(model, net) is None


def require_refit_names(model: onnx.ModelProto, net: SRNet) -> None:
    """Raise ExportError naming the first tensor that breaks `refit_names_ok`."""
    problem = _refit_problem(model, net)
    if problem is not None:
        raise ExportError(f"alpha refit is unavailable for this {type(net).__name__} graph: {problem}; build an "
                          "engine per alpha instead, or register an ONNX emitter for its architecture")


def _refit_problem(model: onnx.ModelProto, net: SRNet) -> str | None:
    weights = set(weight_names(model))
    tensors = [k for k, t in net.state_dict().items() if t.is_floating_point()]
    missing = next((k for k in tensors if k not in weights), None)
    if missing is not None:
        return f"no initializer is named by its state-dict tensor {missing!r}"
    extra = next((w for w in weight_names(model) if w not in set(tensors)), None)
    return None if extra is None else f"its initializer {extra!r} is no state-dict tensor"


def weight_names(model: onnx.ModelProto) -> list[str]:
    """The initializers that are network weights (named by state-dict keys), in graph order."""
    return [t.name for t in model.graph.initializer if not t.name.startswith(NOT_WEIGHTS)]


def external_tensors(model: onnx.ModelProto) -> list[str]:
    """Names of the tensors of `model` (initializers and constants, subgraphs included) whose data lives in another
    file. Our graphs keep every tensor inline; a graph that names a file could make a loader read it."""
    found: list[str] = []

    def graph(g: onnx.GraphProto) -> None:
        tensors = list(g.initializer)
        for node in g.node:
            for attr in node.attribute:
                tensors += ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
                tensors += [s.values for s in list(attr.sparse_tensors) + ([attr.sparse_tensor]
                                                                           if attr.HasField("sparse_tensor") else [])]
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    graph(sub)
        found.extend(t.name or "<unnamed>" for t in tensors if t.data_location == TensorProto.EXTERNAL)

    graph(model.graph)
    return found


def save(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Write `model` atomically (a temporary file beside `path`, then a rename)."""
    data = model.SerializeToString()
    atomic_write(path, lambda tmp: open(tmp, "wb").write(data))


def initializer_arrays(model: onnx.ModelProto, state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The network weights of `model` taken from a state dict: for every weight initializer, the tensor of the
    same name reshaped to the initializer's shape and cast to its type (what a refit or a rebinding writes)."""
    out: dict[str, np.ndarray] = {}
    for init in model.graph.initializer:
        if init.name.startswith(NOT_WEIGHTS):
            continue
        if init.name not in state:
            raise ExportError(f"the graph's weight {init.name!r} is not in the state dict")
        dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
        array = state[init.name].detach().cpu().double().numpy().astype(dtype)
        out[init.name] = np.ascontiguousarray(array.reshape(tuple(init.dims)))
    return out


def set_initializers(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> None:
    """Replace weight initializers of `model` in place by name; shapes and types must stay as they are."""
    by_name = {t.name: t for t in model.graph.initializer}
    for name, array in arrays.items():
        if name not in by_name:
            raise ExportError(f"the graph has no initializer {name!r}")
        old = by_name[name]
        if tuple(old.dims) != array.shape or helper.tensor_dtype_to_np_dtype(old.data_type) != array.dtype:
            raise ExportError(f"{name}: the graph holds {tuple(old.dims)} "
                              f"{helper.tensor_dtype_to_np_dtype(old.data_type)}, got {array.shape} {array.dtype}")
        old.CopyFrom(numpy_helper.from_array(array, name))
