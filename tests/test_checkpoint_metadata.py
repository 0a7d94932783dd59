"""Our safetensors' metadata (engine.arch, engine.hparams) is checked against the tensors before anything is built
(issue 15.6): the shapes give every hyper-parameter they can, the metadata only what they cannot (EDSR's res_scale,
the mean shift, RCAN's reduction, RRDBNet's pixel_unshuffle at ×4), and every bad value is one CheckpointError
naming the file and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from util import randomize_

import engine.models as M
import engine.models.rrdbnet as rrdbnet

SMALL = dict(num_feat=4, num_block=1, num_grow_ch=2)


def _with_metadata(path: Path, net: M.SRNet, **entries: str) -> Path:
    """`net` saved by M.save, then its metadata entries replaced (as an edited or damaged file would have)."""
    M.save(net, path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    save_file(tensors, str(path), metadata={**meta, **entries})
    return path


def _hparams(net: M.SRNet, **changes: Any) -> str:
    return json.dumps({**net.hparams, **changes})


def _error(path: Path) -> str:
    with pytest.raises(M.CheckpointError) as e:
        M.load(path)
    assert str(e.value).startswith(f"{path}: ")
    return str(e.value)


def test_a_huge_num_block_is_refused_before_any_block_is_built(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """num_block 20000 used to build a 14 G-parameter network (minutes, then an allocator error)."""
    net = M.build("rrdbnet", SMALL)
    path = _with_metadata(tmp_path / "net.safetensors", net, **{"engine.hparams": _hparams(net, num_block=20000)})
    built = []
    real_init = rrdbnet.RRDB.__init__

    def counting_init(self: rrdbnet.RRDB, *args: Any, **kwargs: Any) -> None:
        built.append(1)
        assert len(built) <= 4, "the loader is building the blocks the metadata claims"
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(rrdbnet.RRDB, "__init__", counting_init)
    message = _error(path)
    assert "num_block=20000, but the tensors hold 1" in message and built == []


def test_a_cascade_stage_with_a_huge_num_block_is_refused(tmp_path: Path) -> None:
    net = M.build("cascade", {"stages": [{"arch": "rrdbnet", "hparams": SMALL}] * 2})
    stages = [{"arch": "rrdbnet", "hparams": SMALL}, {"arch": "rrdbnet", "hparams": {**SMALL, "num_block": 20000}}]
    path = _with_metadata(tmp_path / "x16.safetensors", net, **{"engine.hparams": json.dumps({"stages": stages})})
    assert "num_block=20000, but the tensors hold 1" in _error(path)


def _deep_cascade(depth: int) -> str:
    stage = json.dumps({"arch": "rrdbnet", "hparams": SMALL})
    text = stage
    for _ in range(depth):
        text = '{"arch": "cascade", "hparams": {"stages": [' + text + ", " + stage + "]}}"
    return text[len('{"arch": "cascade", "hparams": '):-1]


# (arch, engine.hparams, the words the message must hold); the tensors are always a SMALL rrdbnet.
BAD = {
    "negative num_block": ("rrdbnet", {"num_block": -3}, "num_block=-3 must be a whole number from 1"),
    "negative num_feat": ("rrdbnet", {"num_feat": -4}, "num_feat=-4 must be a whole number from 1"),
    "huge num_feat": ("rrdbnet", {"num_feat": 10**30}, "num_feat=1000000000000000000000000000000 must be"),
    "float num_feat": ("rrdbnet", {"num_feat": 4.5}, "num_feat=4.5 must be a whole number"),
    "bool num_feat": ("rrdbnet", {"num_feat": True}, "num_feat=True must be a whole number"),
    "string scale": ("rrdbnet", {"scale": "4"}, "scale='4' must be a whole number"),
    "string pixel_unshuffle": ("rrdbnet", {"pixel_unshuffle": "yes"}, "pixel_unshuffle='yes' must be true or false"),
    "wrong num_grow_ch": ("rrdbnet", {"num_grow_ch": 3}, "tensor 'body.0.rdb1.conv1.weight' has shape [2, 4, 3, 3], "
                          "the network's is [3, 4, 3, 3]"),
    "wrong scale": ("rrdbnet", {"scale": 8}, "tensor 'conv_up3.weight' is missing"),
    "unknown field": ("rrdbnet", {"dropout": 0.5}, "rrdbnet has no hyper-parameter 'dropout'"),
    "hparams a list": ("rrdbnet", [1, 2], "a dict of keyword arguments, got [1, 2]"),
    "hparams null": ("rrdbnet", None, "a dict of keyword arguments, got None"),
    "not JSON": ("rrdbnet", "{num_block: 3", "engine.hparams metadata is not valid JSON"),
    "JSON nested 100000 deep": ("rrdbnet", "[" * 100_000 + "]" * 100_000, "engine.hparams metadata is not valid JSON"),
    "unknown arch": ("transformer", {}, "it names a 'transformer' network, the tensors are a rrdbnet"),
    "another arch": ("edsr", {}, "it names a 'edsr' network, the tensors are a rrdbnet"),
    "cascade over one network": ("cascade", {"stages": []}, "it names a 'cascade' network, the tensors are a rrdbnet"),
    "cascade 2000 deep": ("cascade", _deep_cascade(2000), "not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_metadata_is_one_checkpoint_error_naming_the_field(tmp_path: Path, case: str) -> None:
    arch, hparams, words = BAD[case]
    net = M.build("rrdbnet", SMALL)
    if isinstance(hparams, dict):
        hparams = _hparams(net, **hparams) if arch == "rrdbnet" else json.dumps(hparams)
    elif not isinstance(hparams, str):
        hparams = json.dumps(hparams)
    path = _with_metadata(tmp_path / "net.safetensors", net, **{"engine.arch": arch, "engine.hparams": hparams})
    assert words in _error(path)


@pytest.mark.parametrize("field, value, words", [
    ("res_scale", float("nan"), "res_scale=nan must be a finite number"),
    ("res_scale", float("inf"), "res_scale=inf must be a finite number"),
    ("img_range", 0, "img_range must be positive"),
    ("rgb_mean", [float("nan")] * 3, "rgb_mean=[nan, nan, nan] must be a list of finite numbers"),
    ("rgb_mean", "abc", "rgb_mean='abc' must be a list of finite numbers"),
    ("rgb_mean", [0.1], "rgb_mean has 1 values for num_in_ch=3"),
])
def test_metadata_only_values_are_checked_too(tmp_path: Path, field: str, value: Any, words: str) -> None:
    """What the shapes cannot tell comes from the metadata, so it must be sound: a NaN res_scale or a zero
    img_range gave NaN or black images."""
    net = M.build("edsr", dict(num_feat=4, num_block=1, scale=2))
    path = _with_metadata(tmp_path / "edsr.safetensors", net, **{"engine.hparams": _hparams(net, **{field: value})})
    assert words in _error(path)


@pytest.mark.parametrize("arch, hparams", [
    ("rcan", dict(num_feat=16, num_group=1, num_block=1, reduction=5, scale=2)),  # the shapes say 16 // 3 = 5 too
    ("rcan", dict(num_feat=16, num_group=1, num_block=1, reduction=6, scale=2)),  # squeezes to 2: shapes say 8
    ("rrdbnet", dict(SMALL, pixel_unshuffle=False)),  # ×4: no unshuffle either way; the shapes say True
    ("rrdbnet", dict(SMALL, num_in_ch=12, scale=4)),  # the shapes alone read a ×2 pixel-unshuffle network
    ("edsr", dict(num_feat=4, num_block=1, scale=3, res_scale=0.1, img_range=1.0, rgb_mean=(0.5, 0.25, 0.125))),
    ("srresnet", dict(num_feat=1, num_block=1, scale=2, prelu_per_channel=True)),
])
def test_metadata_decides_what_shapes_cannot_tell(tmp_path: Path, arch: str, hparams: dict[str, Any]) -> None:
    net = randomize_(M.build(arch, hparams))
    M.save(net, tmp_path / "net.safetensors")
    model, info = M.load(tmp_path / "net.safetensors")
    assert info.hparams == net.hparams
    x = torch.rand(1, net.in_channels, 4, 4)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
