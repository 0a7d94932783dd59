"""Checkpoint loading beyond the round trip of every architecture through every layout (test_archs.py): the published
layouts' keys, BasicSR's wrappers and DataParallel's prefix, every registered variant and foreign safetensors; damaged
and unknown files give one clear error."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from published_layouts import ESRGAN2018, ESRGAN2019, EDSROfficial
from safetensors.torch import save_file
from util import randomize_

import engine.models as M

X = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _out(model: torch.nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _save_pth(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


# ---------------------------------------------------------------------------------------------------------
# Foreign layouts: their keys, BasicSR's wrappers, DataParallel's prefix.


def test_the_published_layouts_have_their_published_keys() -> None:
    """What tests/published_layouts writes is the layouts themselves (loading them is util.assert_round_trip's, in
    test_archs.py): ESRGAN 2018's trunk conv after the RRDBs in model.1.sub, its ×4 convs at model.0/3/6/8/10;
    ESRGAN 2019's (and BSRGAN's) RRDB_trunk, trunk_conv, HRconv; EDSR-PyTorch's head, body, tail."""
    old = set(ESRGAN2018(in_nc=3, out_nc=3, nf=8, nb=2, gc=4, n_upscale=2).state_dict())
    assert {"model.1.sub.0.RDB1.conv1.0.weight", "model.1.sub.2.weight"} <= old
    top = {k.rsplit(".", 1)[0] for k in old if not k.startswith("model.1.")}
    assert top == {f"model.{i}" for i in (0, 3, 6, 8, 10)}
    new = set(ESRGAN2019(in_nc=3, out_nc=3, nf=8, nb=2, gc=4, n_upscale=1).state_dict())
    assert {"RRDB_trunk.1.RDB3.conv5.weight", "trunk_conv.weight", "upconv1.weight", "HRconv.bias"} <= new
    assert "upconv2.weight" not in new
    edsr = set(EDSROfficial(nf=8, nb=2, scale=4).state_dict())
    assert {"head.0.weight", "body.1.body.2.weight", "body.2.weight", "tail.0.0.weight", "tail.0.2.weight",
            "tail.1.weight", "add_mean.bias"} <= edsr


def test_basicsr_prefers_params_ema(tmp_path: Path) -> None:
    hp = dict(num_feat=16, num_block=2, num_grow_ch=8)
    net, ema = (randomize_(M.build("rrdbnet", hp), seed=s) for s in (1, 2))
    path = _save_pth({"params": net.state_dict(), "params_ema": ema.state_dict()}, tmp_path / "basicsr.pth")
    model, info = M.load(path)
    assert (info.format, info.wrapper) == ("basicsr", "params_ema")
    torch.testing.assert_close(_out(model), _out(ema), atol=0, rtol=0)

    model, info = M.load(_save_pth({"params": net.state_dict()}, tmp_path / "params.pth"))
    assert info.wrapper == "params"
    torch.testing.assert_close(_out(model), _out(net), atol=0, rtol=0)

    bare, info = M.load(_save_pth(ema.state_dict(), tmp_path / "bare.pth"))
    assert info.wrapper is None
    torch.testing.assert_close(_out(bare), _out(ema), atol=0, rtol=0)


def test_dataparallel_prefix_is_stripped(tmp_path: Path) -> None:
    net = randomize_(M.build("rrdbnet", dict(num_feat=8, num_block=1, num_grow_ch=4)))
    sd = {f"module.{k}": v for k, v in net.state_dict().items()}
    model, _ = M.load(_save_pth(sd, tmp_path / "ddp.pth"))
    torch.testing.assert_close(_out(model), _out(net), atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# Our safetensors.


@pytest.mark.parametrize("name", list(M.VARIANTS))
def test_save_load_round_trip_every_variant(tmp_path: Path, name: str) -> None:
    net = randomize_(M.create(name))
    path = tmp_path / f"{name}.safetensors"
    M.save(net, path, metadata={"note": "hello"})
    model, info = M.load(path)
    assert (info.format, info.name, info.arch, info.scale) == ("safetensors", name, net.arch, net.scale)
    assert info.metadata == {"note": "hello"}
    x = torch.rand(1, 3, 4, 4)
    assert torch.equal(_out(model, x), _out(net, x))


def test_foreign_safetensors_without_our_metadata(tmp_path: Path) -> None:
    """A BasicSR state dict converted to safetensors by someone else (no metadata): detected by keys."""
    net = randomize_(M.build("rrdbnet", dict(num_feat=8, num_block=2, num_grow_ch=4, scale=2)))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "x2.safetensors"))
    model, info = M.load(tmp_path / "x2.safetensors")
    assert info.format == "basicsr (safetensors)" and info.scale == 2
    assert torch.equal(_out(model), _out(net))


def test_save_is_atomic_and_leaves_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "net.safetensors"
    first = M.create("msrresnet", num_block=1)
    M.save(first, path)
    before = path.read_bytes()

    import engine.models.checkpoint as ck

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        M.save(M.create("msrresnet", num_block=1), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["net.safetensors"]
    meta = json.loads(ck.safe_open(str(path), "pt").metadata()["engine.hparams"])
    assert meta["num_block"] == 1


# ---------------------------------------------------------------------------------------------------------
# Errors name the file and what was found; a file that is no checkpoint we know also lists what is accepted.


def _load_error(path: Path, *, unrecognised: bool = False) -> str:
    with pytest.raises(M.CheckpointError) as e:
        M.load(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ")
    assert ("Accepted formats:" in message and "ESRGAN 2018" in message) == unrecognised, message
    return message


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.pth").write_bytes(b"")
    assert "empty" in _load_error(tmp_path / "empty.pth")


def test_truncated_pth(tmp_path: Path) -> None:
    path = _save_pth(M.create("msrresnet", num_block=1).state_dict(), tmp_path / "t.pth")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "a truncated or damaged zip archive, as PyTorch checkpoints are" in _load_error(path)


def test_a_flipped_bit_in_the_weights_of_a_zip_checkpoint(tmp_path: Path) -> None:
    """torch.load never checks the CRC-32 torch.save writes: the flipped weight loaded silently."""
    path = _save_pth({"w": torch.zeros(64)}, tmp_path / "net.pth")
    data = path.read_bytes()
    at = data.index(bytes(64 * 4))  # the tensor's 256 zero bytes
    path.write_bytes(data[:at] + b"\x01" + data[at + 1:])
    assert "its record 'net/data/0' does not match its CRC-32" in _load_error(path)


def test_truncated_legacy_pth(tmp_path: Path) -> None:
    path = tmp_path / "old.pth"
    torch.save(M.create("msrresnet", num_block=1).state_dict(), path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "truncated or damaged PyTorch checkpoint (legacy format" in _load_error(path)


def test_truncated_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    M.save(M.create("msrresnet", num_block=1), path)
    path.write_bytes(path.read_bytes()[:-1000])
    assert "damaged or truncated safetensors" in _load_error(path)


def test_text_file(tmp_path: Path) -> None:
    (tmp_path / "notes.pth").write_text("these are not weights\n")
    assert "a text file (it begins with 'these are not weights" in _load_error(tmp_path / "notes.pth",
                                                                               unrecognised=True)


def _safetensors_bytes(tmp_path: Path) -> bytes:
    M.save(M.create("msrresnet", num_block=1), tmp_path / "source.safetensors")
    return (tmp_path / "source.safetensors").read_bytes()


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1:]


def _zip_without_checkpoint(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")


# Each kind of bad file, named .pth, described as what it is (issue 15.13: a text file and a damaged safetensors
# were both "pickled Python objects"; a safetensors whose header length is damaged was "an unrecognised binary").
KINDS: dict[str, tuple[Callable[[Path], bytes], str, bool]] = {
    "text": (lambda d: b"config: 1\n", "a text file (it begins with 'config: 1", True),
    "json": (lambda d: b'{"scale": 4}\n', "a text file (it begins with '{\"scale\"", True),
    "utf-8 text": (lambda d: "Gewichte für später\n".encode(), "a text file (it begins with 'Gewichte für", True),
    "web page": (lambda d: b"<!DOCTYPE html>\n<html><body>404</body></html>\n", "a web page", True),
    "git-lfs pointer": (lambda d: b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 67040989\n",
                        "a Git LFS pointer", True),
    "safetensors, header length damaged": (lambda d: _flip(_safetensors_bytes(d), 3),
                                          "a damaged or truncated safetensors file", False),
    "safetensors, header start damaged": (lambda d: _flip(_safetensors_bytes(d), 8),
                                         "a damaged or truncated safetensors file", False),
    "safetensors, truncated": (lambda d: _safetensors_bytes(d)[:-100], "a damaged or truncated safetensors file",
                               False),
    "zip, truncated": (lambda d: (_save_pth({"w": torch.zeros(4)}, d / "z.pth").read_bytes())[:-30],
                       "a truncated or damaged zip archive", False),
    "zip of something else": (lambda d: (_zip_without_checkpoint(d / "o.zip"), (d / "o.zip").read_bytes())[1],
                              "a zip archive without a PyTorch checkpoint inside (it holds 'readme.txt')", True),
    "plain pickle": (lambda d: pickle.dumps({"conv_first.weight": [1.0]}), "a Python pickle that torch.save did "
                     "not write, so no PyTorch checkpoint; it is not unpickled", True),
    "png image": (lambda d: b"\x89PNG\r\n\x1a\n" + bytes(range(200)), "a PNG image, not a checkpoint", True),
    "binary": (lambda d: bytes([0x9C, 0xE3, 0, 1]) * 64, "an unrecognised binary file", True),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_of_bad_file_is_described_as_what_it_is(tmp_path: Path, kind: str) -> None:
    make, described, unrecognised = KINDS[kind]
    path = tmp_path / "model.pth"
    path.write_bytes(make(tmp_path))
    message = _load_error(path, unrecognised=unrecognised)
    assert described in message
    assert "pickled Python" not in message


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".bin"])
def test_the_contents_decide_not_the_extension(tmp_path: Path, suffix: str) -> None:
    """torch.save's zip, its legacy format and safetensors load under any name (torch.load itself reads every
    name ending in .safetensors as safetensors)."""
    net = randomize_(M.build("rrdbnet", dict(num_feat=8, num_block=1, num_grow_ch=4)))
    torch.save(net.state_dict(), tmp_path / f"zip{suffix}")
    torch.save(net.state_dict(), tmp_path / f"legacy{suffix}", _use_new_zipfile_serialization=False)
    M.save(net, tmp_path / f"ours{suffix}")
    for name in ("zip", "legacy", "ours"):
        model, _ = M.load(tmp_path / f"{name}{suffix}")
        assert torch.equal(_out(model), _out(net)), name


def test_a_legacy_checkpoint_in_pickle_protocol_4_is_named(tmp_path: Path) -> None:
    """The weights-only unpickler cannot read it: not "damaged", but how to re-save it."""
    path = tmp_path / "p4.pth"
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False, pickle_protocol=4)
    assert "legacy format written with pickle protocol 4, which torch.load(weights_only=True) cannot read" in \
        _load_error(path)


def test_unknown_network(tmp_path: Path) -> None:
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    message = _load_error(_save_pth(other.state_dict(), tmp_path / "classifier.pth"), unrecognised=True)
    assert "no known network among its 4 tensors" in message and "'0.weight'" in message


def test_recognised_layout_with_wrong_tensors(tmp_path: Path) -> None:
    sd = M.build("rrdbnet", dict(num_feat=8, num_block=1, num_grow_ch=4)).state_dict()
    sd["body.0.rdb2.conv3.weight"] = torch.zeros(4, 5, 3, 3)
    message = _load_error(_save_pth(sd, tmp_path / "bad.pth"))
    assert "do not fit a rrdbnet" in message
    assert "tensor 'body.0.rdb2.conv3.weight' has shape [4, 5, 3, 3], the network's is [4, 16, 3, 3]" in message


def test_pickled_code_is_never_executed(tmp_path: Path) -> None:
    """A whole pickled model needs arbitrary unpickling: refused, naming the class, with the fix."""
    path = _save_pth(M.create("msrresnet", num_block=1), tmp_path / "whole_model.pth")
    message = _load_error(path)
    assert "would execute code" in message and "engine.models.srresnet.MSRResNet" in message
    assert "torch.save(model.state_dict(), path)" in message


class _WritesAMarker:
    """Unpickling this runs os.system: a file that would create `marker` if any pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["zip", "legacy", "pickle"])
def test_a_malicious_pickle_never_runs(tmp_path: Path, writer: str) -> None:
    marker, path = tmp_path / "PWNED", tmp_path / "weights.pth"
    obj = {"conv_first.weight": _WritesAMarker(marker)}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(obj))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=writer == "zip")
    with pytest.raises(M.CheckpointError, match="execute code"):
        M.load(path)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_WritesAMarker(marker)))  # the check above can fail: the pickle does run when allowed
    assert marker.exists()


def test_dict_without_tensors(tmp_path: Path) -> None:
    assert "without tensors" in _load_error(_save_pth({"iter": 5, "epoch": 1}, tmp_path / "state.pth"),
                                            unrecognised=True)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        M.load(tmp_path / "nowhere.pth")


def test_saved_files_get_the_usual_permissions(tmp_path: Path) -> None:
    """mkstemp makes 0o600 files; a saved model must get the mode of any file the user writes."""
    from engine.atomic import file_mode

    M.save(M.create("msrresnet", num_block=1), tmp_path / "net.safetensors")
    assert (tmp_path / "net.safetensors").stat().st_mode & 0o777 == file_mode() != 0o600


def test_a_safetensors_header_length_that_looks_like_a_pickle_still_loads(tmp_path: Path) -> None:
    """A header length whose bytes begin 0x80 0x0N reads like a pickle's protocol header: one saved file in 256 was
    refused as "a Python pickle" before the safetensors structure was checked first."""
    net = M.create("msrresnet", num_block=1, num_feat=8)
    path = tmp_path / "net.safetensors"
    M.save(net, path, metadata={"pad": ""})
    base = int.from_bytes(path.read_bytes()[:8], "little")
    target = next(n for n in range(base, base + 4096) if n & 0xFF == 0x80 and (n >> 8) & 0xFF in (2, 3, 4, 5))
    M.save(net, path, metadata={"pad": "x" * (target - base)})
    assert path.read_bytes()[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
    loaded, _ = M.load(path)
    for key, t in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], t)
