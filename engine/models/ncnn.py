"""ncnn models (a `.param` text graph and its `.bin` weights) read as our networks, and ours written as ncnn models.

Reading (`read_ncnn`, used by `engine.models.load("x.param")`) never runs the graph: it parses the `.param`,
reads the weights of its layers from the `.bin` in layer order, reduces the graph to a canonical form and compares
it with the graph our network of the same hyper-parameters gives (`save_ncnn` writes exactly that graph). Only
then are the convolutions, in order, given our state-dict keys. Recognised: RRDBNet (ESRGAN / Real-ESRGAN, any
blocks, features, growth and scale, with or without pixel unshuffle) and SRVGGNetCompact.

    .param:  7767517                                  magic
             <layers> <blobs>
             <type> <name> <#in> <#out> <in blobs…> <out blobs…> k=v …   one line per layer
             k=v: an int, a float (has '.' or 'e'), or an array: -233xx=n,v1,…,vn is param xx (old style)
    .bin:    per Convolution: a 4-byte storage tag, then the weight (out, in, kh, kw):
                 0 or 0x0002C056 float32 · 0x01306B47 float16 (padded to 4 bytes) · 0x000D4B38 int8 (refused)
             then its bias (float32, untagged); per PReLU: its slopes (float32, untagged)

Canonical form: Split layers are aliases; fused conv activations and ReLU layers are one "act" node; Eltwise
sums, BinaryOp adds and scalar multiplies are one linear-combination node (terms sorted); each conv and PReLU
carries its ordinal, so the k-th conv of the file is the k-th of our network. Two graphs are the same network
when their outputs are the same node. A graph whose output is one of ours followed by an Interp (the
realesr-animevideov3 ×2/×3 files: the ×4 network, then a bicubic downscale) loads as the network, and the resize
is named in the metadata ("ncnn.output_resize"): `F.interpolate(y, scale_factor=s, mode="bicubic")` applied to the
network's output gives what the ncnn graph gives.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write
from .base import SRNet
from .registry import ARCHS, check_hparams, full_hparams

MAGIC = 7767517
FP32_TAG, FP32_SCALED_TAG, FP16_TAG, INT8_TAG = 0, 0x0002C056, 0x01306B47, 0x000D4B38
ARRAY_KEY = -23300  # an array param xx is written as key -23300 - xx
MAX_LAYERS = 1 << 16  # a real x4 RRDBNet has ~1000
LEAKY = 0.2  # RRDBNet's LeakyReLU slope
RESIZE_NAMES = {1: "nearest", 2: "bilinear", 3: "bicubic"}

# The params each layer type may carry: "i" a whole number, "f" a number, "a" an array of numbers, or the one value
# we support.
_PARAMS: dict[str, dict[int, Any]] = {
    "Input": {0: "i", 1: "i", 2: "i", 11: "i"},
    "Split": {},
    "Convolution": {0: "i", 1: "i", 11: "i", 2: "i", 12: "i", 3: "i", 13: "i", 4: "i", 14: "i", 15: "i", 16: "i",
                    5: "i", 6: "i", 8: 0, 9: "i", 10: "a", 18: 0.0, 19: 0},
    "ReLU": {0: "f"},
    "PReLU": {0: "i"},
    "Eltwise": {0: "i", 1: "a"},
    "BinaryOp": {0: "i", 1: "i", 2: "f"},
    "Concat": {0: 0},
    "Interp": {0: "i", 1: "f", 2: "f", 3: 0, 4: 0, 5: 0, 6: "i"},
    "PixelShuffle": {0: "i", 1: "i"},
    "Reorg": {0: "i", 1: "i"},
}
_KINDS = {"i": lambda v: isinstance(v, int), "f": lambda v: isinstance(v, (int, float)) and math.isfinite(v),
          "a": lambda v: isinstance(v, tuple) and all(math.isfinite(x) for x in v)}


class NcnnError(ValueError):
    """An ncnn model that cannot be read as one of our networks; the message names the file and the layer."""


@dataclass
class Layer:
    """One line of a `.param`: `params` maps param id → int, float or tuple (an array)."""

    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, Any] = field(default_factory=dict)
    line: int = 0
    key: str | None = None  # written graphs only: the state-dict prefix of a conv's or PReLU's weights


def _where(path: str, layer: Layer) -> str:
    return f"{path}: layer {layer.name!r} ({layer.type}, line {layer.line})"


# ---------------------------------------------------------------------------------------------------------
# The .param text.


def _value(text: str) -> int | float:
    return float(text) if re.search(r"[.eE]", text) else int(text)


def _param(token: str, where: str) -> tuple[int, Any]:
    key_text, sep, value = token.partition("=")
    if not sep or not re.fullmatch(r"-?\d+", key_text):
        raise NcnnError(f"{where}: {token!r} is not a k=v param")
    key = int(key_text)
    try:
        if key <= ARRAY_KEY:  # old-style array: the count, then the values
            count, *items = value.split(",")
            if int(count) != len(items):
                raise NcnnError(f"{where}: array param {token!r} declares {count} values and holds {len(items)}")
            return ARRAY_KEY - key, tuple(_value(v) for v in items)
        if "," in value:  # new-style array
            return key, tuple(_value(v) for v in value.split(","))
        return key, _value(value)
    except ValueError:
        raise NcnnError(f"{where}: param {token!r} is not a number or an array of numbers (string params are not "
                        "supported)") from None


def parse_param(text: str, path: str) -> list[Layer]:
    """The layers of a `.param` text, in file order. NcnnError (naming `path` and the layer) for a wrong magic,
    counts that disagree with the header, malformed lines or params, an unknown layer type or param, a blob used
    before a layer makes it, or a blob made twice."""
    lines = [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines or lines[0][1] != [str(MAGIC)]:
        first = " ".join(lines[0][1])[:40] if lines else ""
        raise NcnnError(f"{path}: not an ncnn .param: it begins with {first!r}, not the magic number {MAGIC} "
                        "(a binary .param.bin is not supported: use the text .param)")
    if len(lines) < 2 or len(lines[1][1]) != 2 or not all(t.isdigit() for t in lines[1][1]):
        raise NcnnError(f"{path}: line 2 must hold the layer and blob counts")
    n_layers, n_blobs = map(int, lines[1][1])
    if n_layers > MAX_LAYERS or n_layers != len(lines) - 2:
        raise NcnnError(f"{path}: the header declares {n_layers} layers and the file holds {len(lines) - 2} (at most "
                        f"{MAX_LAYERS}); the file is truncated or damaged")
    layers: list[Layer] = []
    made: set[str] = set()
    for n, tokens in lines[2:]:
        where = f"{path}: line {n}"
        if len(tokens) < 4 or not (tokens[2].isdigit() and tokens[3].isdigit()):
            raise NcnnError(f"{where}: a layer line is `type name #inputs #outputs blobs… params…`, got "
                            f"{' '.join(tokens)[:60]!r}")
        n_in, n_out = int(tokens[2]), int(tokens[3])
        if len(tokens) < 4 + n_in + n_out:
            raise NcnnError(f"{where}: layer {tokens[1]!r} declares {n_in} inputs and {n_out} outputs; the line has "
                            "fewer blob names")
        layer = Layer(tokens[0], tokens[1], tokens[4:4 + n_in], tokens[4 + n_in:4 + n_in + n_out], line=n)
        where = _where(path, layer)
        if layer.type not in _PARAMS:
            raise NcnnError(f"{where}: unsupported layer type {layer.type!r}; supported: {', '.join(_PARAMS)}")
        for token in tokens[4 + n_in + n_out:]:
            key, value = _param(token, where)
            kind = _PARAMS[layer.type].get(key)
            if kind is None or not (_KINDS[kind](value) if isinstance(kind, str) else value == kind):
                raise NcnnError(f"{where}: unsupported param {token!r}")
            layer.params[key] = value
        for blob in layer.bottoms:
            if blob not in made:
                raise NcnnError(f"{where}: blob {blob!r} is used before a layer makes it")
        for blob in layer.tops:
            if blob in made:
                raise NcnnError(f"{where}: blob {blob!r} is made a second time")
            made.add(blob)
        layers.append(layer)
    if n_blobs != len(made):
        raise NcnnError(f"{path}: the header declares {n_blobs} blobs and the layers make {len(made)}; the file is "
                        "damaged")
    return layers


# ---------------------------------------------------------------------------------------------------------
# The .bin weights.


@dataclass(frozen=True)
class Weights:
    """The tensors of the weighted layers and the storage kinds found ("fp32", "fp16")."""

    tensors: dict[int, list[torch.Tensor]]  # by the layer's line in the .param
    storage: frozenset[str]


def _conv_shape(layer: Layer, where: str) -> tuple[int, int, int, int]:
    """(out, in, kh, kw) of a Convolution, the input channels from its weight_data_size."""
    out, kw = layer.params.get(0, 0), layer.params.get(1, 0)
    kh, size = layer.params.get(11, kw), layer.params.get(6, 0)
    if not all(isinstance(v, int) and v > 0 for v in (out, kw, kh, size)) or size % (out * kh * kw):
        raise NcnnError(f"{where}: num_output (0={out}), kernel (1={kw}, 11={kh}) and weight_data_size (6={size}) "
                        "must be positive whole numbers with the size a multiple of num_output·kernel²")
    return out, size // (out * kh * kw), kh, kw


def read_weights(layers: list[Layer], data: bytes, param_path: str, bin_path: str) -> Weights:
    """The weights of `layers` read from the `.bin` bytes `data`, in layer order. NcnnError naming the `.bin` and
    the layer for a truncated file, int8 or table-quantized weights, or bytes left over."""
    at = 0
    tensors: dict[int, list[torch.Tensor]] = {}
    storage: set[str] = set()

    def take(layer: Layer, nbytes: int, what: str) -> bytes:
        nonlocal at
        if at + nbytes > len(data):
            raise NcnnError(f"{bin_path}: ends at byte {len(data):,} while {_where(param_path, layer)} reads its "
                            f"{what} ({nbytes:,} bytes from byte {at:,}); the .bin is truncated or belongs to another "
                            ".param")
        at += nbytes
        return data[at - nbytes:at]

    def floats(layer: Layer, n: int, what: str) -> torch.Tensor:
        return torch.from_numpy(np.frombuffer(take(layer, 4 * n, what), dtype="<f4").astype(np.float32))

    for layer in layers:
        where = _where(param_path, layer)
        if layer.type == "Convolution":
            shape = _conv_shape(layer, where)
            n = math.prod(shape)
            tag = int.from_bytes(take(layer, 4, "weight storage tag"), "little")
            if tag == FP16_TAG:
                raw = take(layer, (2 * n + 3) // 4 * 4, "float16 weights")
                weight = torch.from_numpy(np.frombuffer(raw, dtype="<f2", count=n).astype(np.float32))
                storage.add("fp16")
            elif tag in (FP32_TAG, FP32_SCALED_TAG):
                weight = floats(layer, n, "float32 weights")
                storage.add("fp32")
            elif tag == INT8_TAG:
                raise NcnnError(f"{bin_path}: {where} has int8-quantized weights, which are not supported; use the "
                                "model's float32 or float16 files")
            else:
                raise NcnnError(f"{bin_path}: {where} has weights with storage tag {tag:#010x}: not float32 or "
                                "float16 (ncnn's 256-value table quantization is not supported), or the .bin does not "
                                "belong to this .param")
            tensors[layer.line] = [weight.reshape(shape)]
            if layer.params.get(5, 0):
                tensors[layer.line].append(floats(layer, shape[0], "bias"))
        elif layer.type == "PReLU":
            n = layer.params.get(0, 0)
            if not isinstance(n, int) or n <= 0:
                raise NcnnError(f"{where}: num_slope (0={n}) must be a positive whole number")
            tensors[layer.line] = [floats(layer, n, "slopes")]
    if at != len(data):
        last = next((layer for layer in reversed(layers) if layer.line in tensors), None)
        after = f"after {_where(param_path, last)}, the last with weights" if last else "(no layer has weights)"
        raise NcnnError(f"{bin_path}: holds {len(data) - at:,} bytes beyond the {at:,} the .param's layers read, "
                        f"{after}; the .bin belongs to another .param or is damaged")
    return Weights(tensors, frozenset(storage))


# ---------------------------------------------------------------------------------------------------------
# Canonical graphs.


class _Nodes:
    """Hash-consed canonical nodes: equal tuples get equal ids, shared by the graphs compared."""

    def __init__(self) -> None:
        self.ids: dict[tuple[Any, ...], int] = {}
        self.nodes: list[tuple[Any, ...]] = []

    def __call__(self, node: tuple[Any, ...]) -> int:
        if node not in self.ids:
            self.ids[node] = len(self.nodes)
            self.nodes.append(node)
        return self.ids[node]

    def lin(self, terms: list[tuple[float, int]]) -> int:
        """A linear combination; a scaled node inside is multiplied out, and 1·x is x."""
        flat = []
        for coef, node in terms:
            inner = self.nodes[node]
            if inner[0] == "lin" and len(inner[1]) == 1:
                coef, node = coef * inner[1][0][0], inner[1][0][1]
            flat.append((_f32(coef), node))
        if len(flat) == 1 and flat[0][0] == 1.0:
            return flat[0][1]
        return self(("lin", tuple(sorted(flat))))


def _f32(value: Any) -> float:
    return float(np.float32(value))


@dataclass
class _Canonical:
    layer_ids: list[int]  # the canonical node of each layer's first output
    output: int
    output_layer: Layer
    convs: list[Layer]  # in file order
    prelus: list[Layer]


def _canonical(layers: list[Layer], nodes: _Nodes, path: str) -> _Canonical:
    blobs: dict[str, int] = {}
    convs: list[Layer] = []
    prelus: list[Layer] = []
    ids: list[int] = []
    consumed = {b for layer in layers for b in layer.bottoms}
    for layer in layers:
        where, p = _where(path, layer), layer.params
        ins = [blobs[b] for b in layer.bottoms]
        arity = {"Input": 0, "Eltwise": None, "Concat": None, "Split": 1}.get(layer.type, 1)
        if layer.type == "BinaryOp":
            arity = 1 if p.get(1, 0) else 2
        if (arity is not None and len(ins) != arity) or (arity is None and not ins) or (
                layer.type != "Split" and len(layer.tops) != 1):
            raise NcnnError(f"{where}: {len(ins)} inputs and {len(layer.tops)} outputs; this layer takes "
                            f"{arity if arity is not None else 'one or more'} and makes one")
        if layer.type == "Input":
            node = nodes(("input",))
        elif layer.type == "Split":
            node = ins[0]
        elif layer.type == "Convolution":
            out, cin, kh, kw = _conv_shape(layer, where)
            dw, sw, pl = p.get(2, 1), p.get(3, 1), p.get(4, 0)
            dh, sh, pr, pt = p.get(12, dw), p.get(13, sw), p.get(15, pl), p.get(14, pl)
            geometry = (dw, dh, sw, sh, pl, pr, pt, p.get(16, pt))
            node = nodes(("conv", len(convs), out, cin, kh, kw, geometry, bool(p.get(5, 0)), ins[0]))
            convs.append(layer)
            act = p.get(9, 0)
            slope = p.get(10, (0.0,))
            if act == 1:
                node = nodes(("act", 0.0, node))
            elif act == 2:
                if not isinstance(slope, tuple) or len(slope) != 1:
                    raise NcnnError(f"{where}: a LeakyReLU activation (9=2) needs its slope as 10 (-23310=1,slope)")
                node = nodes(("act", _f32(slope[0]), node))
            elif act != 0:
                raise NcnnError(f"{where}: unsupported fused activation 9={act} (ReLU 1 and LeakyReLU 2 are)")
        elif layer.type == "ReLU":
            node = nodes(("act", _f32(p.get(0, 0.0)), ins[0]))
        elif layer.type == "PReLU":
            node = nodes(("prelu", len(prelus), p.get(0, 0), ins[0]))
            prelus.append(layer)
        elif layer.type == "Eltwise":
            coeffs = p.get(1, (1.0,) * len(ins))
            if p.get(0, 0) != 1 or not isinstance(coeffs, tuple) or len(coeffs) != len(ins):
                raise NcnnError(f"{where}: only a sum (0=1) with one coefficient per input is supported")
            node = nodes.lin(list(zip(coeffs, ins, strict=True)))
        elif layer.type == "BinaryOp":
            op, scalar = p.get(0, 0), p.get(1, 0)
            if op == 0 and not scalar:
                node = nodes.lin([(1.0, ins[0]), (1.0, ins[1])])
            elif op == 2 and scalar:
                node = nodes.lin([(p.get(2, 0.0), ins[0])])
            else:
                raise NcnnError(f"{where}: unsupported BinaryOp (0={op} 1={scalar}); an add of two inputs and a "
                                "multiply by a scalar are")
        elif layer.type == "Concat":
            node = nodes(("concat", tuple(ins)))
        elif layer.type == "Interp":
            if p.get(0, 0) not in RESIZE_NAMES:
                raise NcnnError(f"{where}: unsupported resize type 0={p.get(0, 0)}")
            node = nodes(("interp", p.get(0, 0), _f32(p.get(1, 1.0)), _f32(p.get(2, 1.0)), p.get(6, 0), ins[0]))
        elif layer.type == "PixelShuffle":
            node = nodes(("shuffle", p.get(0, 1), p.get(1, 0), ins[0]))
        else:  # Reorg: space to depth
            node = nodes(("reorg", p.get(0, 1), p.get(1, 0), ins[0]))
        for blob in layer.tops:
            blobs[blob] = node
        ids.append(node)
    ends = [(layer, b) for layer in layers for b in layer.tops if b not in consumed]
    if len(ends) != 1:
        names = ", ".join(f"{b!r} of {layer.name!r}" for layer, b in ends[:4]) or "none"
        raise NcnnError(f"{path}: the graph must have one output blob; it has {len(ends)} ({names})")
    return _Canonical(ids, blobs[ends[0][1]], ends[0][0], convs, prelus)


# ---------------------------------------------------------------------------------------------------------
# Our networks as ncnn graphs.


class _Graph:
    """A graph being written: layers in order, each conv / PReLU with the state-dict prefix of its weights."""

    def __init__(self) -> None:
        self.layers: list[Layer] = []

    def add(self, type: str, bottoms: list[str], params: dict[int, Any] | None = None, key: str | None = None) -> str:
        top = "data" if type == "Input" else str(len(self.layers))
        self.layers.append(Layer(type, f"{type.lower()}_{len(self.layers)}", bottoms, [top], params or {}, key=key))
        return top

    def conv(self, key: str, x: str, cin: int, out: int, slope: float | None = None) -> str:
        """A 3×3 conv with bias (`key`.weight of shape (out, cin, 3, 3)), then LeakyReLU(`slope`) if given."""
        params: dict[int, Any] = {0: out, 1: 3, 4: 1, 5: 1, 6: out * cin * 9}
        if slope is not None:
            params |= {9: 2, 10: (float(slope),)} if slope else {9: 1}
        return self.add("Convolution", [x], params, key)

    def finish(self) -> list[Layer]:
        """The layers with the last one's output named "output" and a Split after every blob used twice."""
        self.layers[-1].tops = ["output"]
        uses: dict[str, list[Layer]] = {}
        for layer in self.layers:
            for b in layer.bottoms:
                uses.setdefault(b, []).append(layer)
        out: list[Layer] = []
        for layer in self.layers:
            out.append(layer)
            for b in layer.tops:
                if len(uses.get(b, [])) > 1:
                    tops = [f"{b}_splitncnn_{i}" for i in range(len(uses[b]))]
                    out.append(Layer("Split", f"splitncnn_{b}", [b], tops))
                    for consumer, top in zip(uses[b], tops, strict=True):
                        consumer.bottoms[consumer.bottoms.index(b)] = top
        return out


def _rrdbnet_graph(g: _Graph, hp: dict[str, Any]) -> None:
    """RRDBNet (see rrdbnet.py), its layers in forward order; pixel unshuffle is a Reorg."""
    nf, gc, scale = hp["num_feat"], hp["num_grow_ch"], hp["scale"]
    unshuffle = 4 // scale if scale < 4 and hp["pixel_unshuffle"] else 1
    x = g.add("Input", [])
    if unshuffle > 1:
        x = g.add("Reorg", [x], {0: unshuffle, 1: 0})
    feat = h = g.conv("conv_first", x, hp["num_in_ch"] * unshuffle**2, nf)
    for b in range(hp["num_block"]):
        rrdb_in = h
        for r in (1, 2, 3):
            xs = [h]
            for c in (1, 2, 3, 4):
                joined = xs[0] if c == 1 else g.add("Concat", list(xs))
                xs.append(g.conv(f"body.{b}.rdb{r}.conv{c}", joined, nf + (c - 1) * gc, gc, LEAKY))
            y = g.conv(f"body.{b}.rdb{r}.conv5", g.add("Concat", xs), nf + 4 * gc, nf)
            h = g.add("Eltwise", [y, h], {0: 1, 1: (0.2, 1.0)})
        h = g.add("Eltwise", [h, rrdb_in], {0: 1, 1: (0.2, 1.0)})
    feat = g.add("BinaryOp", [feat, g.conv("conv_body", h, nf, nf)], {0: 0})
    for k in range(1, int(math.log2(scale * unshuffle)) + 1):
        feat = g.conv(f"conv_up{k}", g.add("Interp", [feat], {0: 1, 1: 2.0, 2: 2.0}), nf, nf, LEAKY)
    g.conv("conv_last", g.conv("conv_hr", feat, nf, nf, LEAKY), nf, hp["num_out_ch"])


def _srvgg_graph(g: _Graph, hp: dict[str, Any]) -> None:
    """SRVGGNetCompact (see srvgg.py): its activations as PReLU or ReLU layers, the shuffle, the upsampled input."""
    nf, n, s = hp["num_feat"], hp["num_conv"], hp["scale"]
    x = h = g.add("Input", [])
    for i in range(n + 1):
        h = g.conv(f"body.{2 * i}", h, hp["num_in_ch"] if i == 0 else nf, nf)
        if hp["act_type"] == "prelu":
            h = g.add("PReLU", [h], {0: nf}, f"body.{2 * i + 1}")
        else:
            h = g.add("ReLU", [h], {0: 0.1} if hp["act_type"] == "leakyrelu" else {})
    h = g.add("PixelShuffle", [g.conv(f"body.{2 * n + 2}", h, nf, hp["num_out_ch"] * s * s)], {0: s})
    g.add("BinaryOp", [h, g.add("Interp", [x], {0: 1, 1: float(s), 2: float(s)})], {0: 0})


GRAPHS: dict[str, Callable[[_Graph, dict[str, Any]], None]] = {"rrdbnet": _rrdbnet_graph, "srvgg": _srvgg_graph}


def graph_of(arch: str, hparams: dict[str, Any]) -> list[Layer]:
    """The ncnn layers of the network `arch` (RRDBNet or SRVGGNetCompact) with `hparams` (defaults filled in):
    input blob "data" (RGB in [0, 1]), output blob "output", as realesrgan-ncnn-vulkan names them."""
    if arch not in GRAPHS:
        raise ValueError(f"no ncnn graph for {arch}; ncnn models are written for {', '.join(GRAPHS)}")
    g = _Graph()
    GRAPHS[arch](g, full_hparams(arch, hparams))
    return g.finish()


# ---------------------------------------------------------------------------------------------------------
# Reading: from the graph to our network.


@dataclass(frozen=True)
class Converted:
    """An ncnn model as our network: `state_dict` in our key names; `metadata` says how it was stored."""

    arch: str
    hparams: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, str]


def _hparams(layers: list[Layer], convs: list[Layer], path: str) -> tuple[str, dict[str, Any]]:
    """The architecture the graph should be and its hyper-parameters, read from the conv shapes and the layers."""
    types = {layer.type for layer in layers}
    first, last = (_conv_shape(c, _where(path, c)) for c in (convs[0], convs[-1]))
    if "PReLU" in types or "PixelShuffle" in types:
        shuffle = next((layer for layer in layers if layer.type == "PixelShuffle"), None)
        act = "prelu" if "PReLU" in types else "relu"
        slopes = [layer.params.get(0, 0.0) for layer in layers if layer.type == "ReLU"]
        slopes += [v[0] if isinstance(v := c.params.get(10, (0.0,)), tuple) and v else 0.0
                   for c in convs if c.params.get(9, 0) in (1, 2)]
        if act == "relu" and slopes and _f32(slopes[0]) == _f32(0.1):
            act = "leakyrelu"
        scale = shuffle.params.get(0, 1) if shuffle else 1
        return "srvgg", dict(num_in_ch=first[1], num_out_ch=first[1], num_feat=first[0], num_conv=len(convs) - 2,
                             scale=scale, act_type=act)
    ups = sum(1 for layer in layers if layer.type == "Interp" and layer.params.get(0) == 1
              and _f32(layer.params.get(1, 1.0)) == _f32(layer.params.get(2, 1.0)) == 2.0)
    reorg = next((layer.params.get(0, 1) for layer in layers if layer.type == "Reorg"), 1)
    blocks, rest = divmod(len(convs) - 4 - ups, 15)
    if rest or blocks < 1 or reorg not in (1, 2, 4) or first[1] % (reorg * reorg):
        raise NcnnError(f"{_where(path, convs[-1])}: the graph is neither an RRDBNet ({len(convs)} convolutions and "
                        f"{ups} nearest upsamplings do not make 1 + 15·blocks + 1 + upsamplings + 2) nor an "
                        "SRVGGNetCompact (no PReLU or PixelShuffle)")
    gc = _conv_shape(convs[1], _where(path, convs[1]))[0]
    scale = 2**ups // reorg
    return "rrdbnet", dict(num_in_ch=first[1] // reorg**2, num_out_ch=last[0], scale=scale, num_feat=first[0],
                           num_block=blocks, num_grow_ch=gc, pixel_unshuffle=reorg > 1 or ups >= 2)


def _convert(layers: list[Layer], weights: Weights, path: str) -> Converted:
    convs = [layer for layer in layers if layer.type == "Convolution"]
    if not convs:
        raise NcnnError(f"{path}: the graph has no Convolution layer; it is neither an RRDBNet nor an SRVGGNetCompact")
    arch, hp = _hparams(layers, convs, path)
    try:
        check_hparams(arch, hp)
    except ValueError as e:
        raise NcnnError(f"{_where(path, convs[0])}: the graph reads as a {arch} with {hp}, which is no valid network "
                        f"({e})") from None
    nodes = _Nodes()
    expected = _canonical(graph_of(arch, hp), nodes, "<ours>")
    found = _canonical(layers, nodes, path)
    metadata = {"ncnn.weights": " and ".join(sorted(weights.storage, reverse=True)) or "none"}
    output = found.output
    resize = nodes.nodes[output]
    if output != expected.output and resize[0] == "interp" and resize[-1] == expected.output:
        metadata["ncnn.output_resize"] = (f"{RESIZE_NAMES[resize[1]]} ×{resize[2]:g} (height), ×{resize[3]:g} "
                                          f"(width) after the network (layer {found.output_layer.name!r})")
        output = resize[-1]
    if output != expected.output:
        known = set(expected.layer_ids)
        bad = next((layer for layer, i in zip(layers, found.layer_ids, strict=True) if i not in known),
                   found.output_layer)
        raise NcnnError(f"{_where(path, bad)}: the graph is not a {ARCHS[arch].cls.__name__} with {hp}: this layer "
                        f"has no counterpart in it (or the graph ends here); only RRDBNet and SRVGGNetCompact graphs "
                        "are read")
    sd: dict[str, torch.Tensor] = {}
    for ours, theirs in [*zip(expected.convs, found.convs, strict=True),
                         *zip(expected.prelus, found.prelus, strict=True)]:
        tensors = weights.tensors[theirs.line]
        sd[f"{ours.key}.weight"] = tensors[0]
        if len(tensors) > 1:
            sd[f"{ours.key}.bias"] = tensors[1]
    return Converted(arch, hp, sd, metadata)


def most_weight_bytes(layers: list[Layer], path: str) -> int:
    """The most bytes the weights of `layers` can take in a `.bin` (every conv weight float32)."""
    total = 0
    for layer in layers:
        if layer.type == "Convolution":
            out = _conv_shape(layer, _where(path, layer))[0]
            total += 4 + 4 * layer.params[6] + (4 * out if layer.params.get(5, 0) else 0)
        elif layer.type == "PReLU" and isinstance(n := layer.params.get(0, 0), int):
            total += 4 * max(n, 0)
    return total


def read_ncnn(param_text: str, read_bin: Callable[[int], bytes], param_path: str, bin_path: str) -> Converted:
    """An ncnn model as our network's architecture, hyper-parameters and state dict (float32).

    `param_text` is the `.param`; `read_bin(most)` returns the `.bin`'s bytes, refusing a file of more than `most`
    bytes (what the layers can read at most) before reading it. The paths name the files in errors: NcnnError,
    naming the file and the layer, for everything wrong (see `parse_param`, `read_weights`), and for a graph that
    is not one of our networks."""
    layers = parse_param(param_text, param_path)
    data = read_bin(most_weight_bytes(layers, param_path))
    return _convert(layers, read_weights(layers, data, param_path, bin_path), param_path)


# ---------------------------------------------------------------------------------------------------------
# Writing.


def _format(value: Any) -> str:
    return f"{value:e}" if isinstance(value, float) else str(value)


def param_text(layers: list[Layer]) -> str:
    """`layers` as `.param` text."""
    blobs = {b for layer in layers for b in layer.tops}
    lines = [str(MAGIC), f"{len(layers)} {len(blobs)}"]
    for layer in layers:
        params = [f"{ARRAY_KEY - k}={len(v)},{','.join(map(_format, v))}" if isinstance(v, tuple)
                  else f"{k}={_format(v)}" for k, v in layer.params.items()]
        lines.append(" ".join([f"{layer.type:<24}", f"{layer.name:<24}", str(len(layer.bottoms)), str(len(layer.tops)),
                               *layer.bottoms, *layer.tops, *params]))
    return "\n".join(lines) + "\n"


def save_ncnn(net: SRNet, param_path: str | os.PathLike[str], bin_path: str | os.PathLike[str] | None = None, *,
              fp16: bool = False) -> None:
    """Write `net` (RRDBNet or SRVGGNetCompact) as an ncnn model: `param_path` and `bin_path` (default: the `.bin`
    beside it). Conv weights are stored as float16 when `fp16`, else float32; biases and slopes as float32. Input
    blob "data" (RGB in [0, 1]), output blob "output". Both files are written atomically."""
    layers = graph_of(net.arch, net.hparams)
    sd = {k: v.detach().float().cpu() for k, v in net.state_dict().items()}
    chunks: list[bytes] = []
    for layer in layers:
        if layer.type == "Convolution":
            w = sd[f"{layer.key}.weight"].numpy().ravel()
            if fp16:
                raw = w.astype("<f2").tobytes()
                chunks += [FP16_TAG.to_bytes(4, "little"), raw + b"\0" * (-len(raw) % 4)]
            else:
                chunks += [FP32_TAG.to_bytes(4, "little"), w.astype("<f4").tobytes()]
            if f"{layer.key}.bias" in sd:
                chunks.append(sd[f"{layer.key}.bias"].numpy().astype("<f4").tobytes())
        elif layer.type == "PReLU":
            chunks.append(sd[f"{layer.key}.weight"].numpy().astype("<f4").tobytes())
    param_path = Path(param_path)
    bin_path = Path(bin_path) if bin_path is not None else param_path.with_suffix(".bin")
    text = param_text(layers)
    atomic_write(bin_path, lambda tmp: Path(tmp).write_bytes(b"".join(chunks)))
    atomic_write(param_path, lambda tmp: Path(tmp).write_text(text))
