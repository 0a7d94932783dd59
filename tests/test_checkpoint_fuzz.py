"""Broken files never escape `engine.models.load` as anything but one CheckpointError naming the file
(FileNotFoundError for a path that does not exist): truncations, bit flips, huge declared sizes, wrong tensors,
crafted tensors that claim more memory than the file holds, special files that would block, symbolic-link loops,
unreadable files."""

from __future__ import annotations

import errno
import json
import os
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from util import deadline

import engine.models as M

SMALL = dict(num_feat=4, num_block=1, num_grow_ch=2)


def _sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return M.build("rrdbnet", SMALL).state_dict()


def _base(d: Path, kind: str) -> Path:
    """A good checkpoint of a small RRDBNet in one of the four ways it is written."""
    path = d / f"base-{kind}.{'pth' if kind in ('zip', 'legacy') else 'safetensors'}"
    if kind == "zip":
        torch.save(_sd(), path)
    elif kind == "legacy":
        torch.save(_sd(), path, _use_new_zipfile_serialization=False)
    elif kind == "ours":
        M.save(M.build("rrdbnet", SMALL), path)
    else:
        save_file({k: v.contiguous() for k, v in _sd().items()}, str(path))
    return path


BASES = ["zip", "legacy", "ours", "foreign"]




def _refused(path: Path) -> str:
    with deadline(10), pytest.raises(M.CheckpointError) as e:
        M.load(path)
    assert str(e.value).startswith(f"{path}: "), str(e.value)
    return str(e.value)


@pytest.mark.parametrize("base", BASES)
def test_every_truncation_is_refused(tmp_path: Path, base: str) -> None:
    data = _base(tmp_path, base).read_bytes()
    for cut in (1, 4, 8, 9, 64, 100, len(data) // 3, len(data) // 2, len(data) - 200, len(data) - 8, len(data) - 1):
        path = tmp_path / f"cut-{cut}.{base}"
        path.write_bytes(data[:cut])
        _refused(path)


@pytest.mark.parametrize("base", BASES)
def test_bit_flips_in_headers_load_or_are_refused(tmp_path: Path, base: str) -> None:
    """A flip in an inert byte may leave a loadable file; anything else must be a CheckpointError."""
    data = _base(tmp_path, base).read_bytes()
    loaded = refused = 0
    places = [*range(16), 20, 40, 100, 200, *(len(data) - k for k in (1, 5, 10, 22, 40, 60))]
    for at in places:
        for bit in (0, 6, 7):
            path = tmp_path / f"flip-{at}-{bit}.{base}"
            path.write_bytes(data[:at] + bytes([data[at] ^ (1 << bit)]) + data[at + 1:])
            try:
                with deadline(10):
                    M.load(path)
                loaded += 1
            except M.CheckpointError as e:
                assert str(e).startswith(f"{path}: ")
                refused += 1
    assert refused > 0 and loaded + refused == 3 * len(places)


@pytest.mark.parametrize("length", [2**64 - 1, 2**63, 2**32, 100_000_001, "size - 7", 0])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_safetensors_header_lengths_beyond_the_file(tmp_path: Path, length: int | str, suffix: str) -> None:
    data = _base(tmp_path, "ours").read_bytes()
    n = len(data) - 7 if length == "size - 7" else length
    path = tmp_path / f"net{suffix}"
    path.write_bytes(struct.pack("<Q", n) + data[8:])
    assert "a damaged or truncated safetensors file" in _refused(path)


def _replace(key: str, value: Any) -> Callable[[], Any]:
    return lambda: {**_sd(), key: value}


def _without(key: str) -> Callable[[], Any]:
    return lambda: {k: v for k, v in _sd().items() if k != key}


def _stages(indices: tuple[int, ...], prefix: str = "stages.{}.") -> Callable[[], Any]:
    return lambda: {prefix.format(i) + k: v.clone() for i in indices for k, v in _sd().items()}


# What torch.save writes (a state dict gone wrong), and the words the error must hold.
OBJECTS: dict[str, tuple[Callable[[], Any], str]] = {
    "a key with a wrong shape": (_replace("body.0.rdb1.conv2.weight", torch.zeros(3, 3, 3, 3)),
                                 "tensor 'body.0.rdb1.conv2.weight' has shape [3, 3, 3, 3], the network's is"),
    "an extra key": (_replace("extra.weight", torch.zeros(3)), "tensor 'extra.weight' has no place in it"),
    "a missing key": (_without("conv_hr.weight"), "tensor 'conv_hr.weight' is missing"),
    "no conv_first": (_without("conv_first.weight"), "no known network among its 41 tensors"),
    "numbers, not tensors": (lambda: {k: 1.0 for k in _sd()}, "a dict without tensors"),
    "a wrapper around a list": (lambda: {"params_ema": [1, 2]}, "a dict without tensors (keys: 'params_ema')"),
    "a list of tensors": (lambda: list(_sd().values()), "it holds a list, not a dict of tensors"),
    "one tensor": (lambda: torch.zeros(3), "it holds a Tensor, not a dict of tensors"),
    "None": (lambda: None, "it holds a NoneType"),
    "an empty dict": (lambda: {}, "an empty dict"),
    "integer keys": (lambda: dict(enumerate(_sd().values())), "no known network among its 42 tensors"),
    "a 1-D conv_first": (_replace("conv_first.weight", torch.zeros(4)), "tensor 'conv_first.weight' has shape [4]; "
                         "a conv weight is 4-D"),
    "a 0-D conv_first": (_replace("conv_first.weight", torch.tensor(1.0)), "has shape []; a conv weight is 4-D"),
    "an empty conv_first": (_replace("conv_first.weight", torch.zeros(0, 3, 3, 3)), "has shape [0, 3, 3, 3]"),
    "a growth of zero": (_replace("body.0.rdb1.conv1.weight", torch.zeros(0, 4, 3, 3)), "has shape [0, 4, 3, 3]"),
    # conv_first 100000 wide made the loader allocate a 360 GB conv_body.
    "a 100000-wide conv_first": (_replace("conv_first.weight", torch.zeros(100_000, 3, 3, 3)),
                                 "num_feat=100000 must be a whole number from 1 to 65536"),
    # 9·10⁹ values over one stored float: isfinite or the model would allocate 36 GB.
    "a view repeating one value": (_replace("conv_first.weight", torch.zeros(1).expand(100_000, 10_000, 3, 3)),
                                   "its tensors declare 9,000,003,"),
    "one storage behind 2000 keys": (lambda: {**_sd(), **dict.fromkeys((f"x{i}" for i in range(2000)),
                                                                       torch.zeros(2**20))},
                                     "its tensors declare 2,097,155,"),
    "a sparse weight": (_replace("body.0.rdb1.conv2.weight", torch.zeros(2, 6, 3, 3).to_sparse()),
                        "is a sparse_coo tensor"),
    "a tensor without values": (_replace("conv_first.weight", torch.empty(4, 3, 3, 3, device="meta")),
                                "tensor 'conv_first.weight' holds no values (it was saved from the meta device)"),
    "cascades 600 deep": (_stages((0,), "stages.0." * 600), "cascades nested more than 4 deep"),
    "a one-stage cascade": (_stages((0,)), "a Cascade needs at least two stages"),
    "a cascade with a gap": (_stages((0, 2)), "cascade stage 1 (stages.1.…) is not a known network"),
    "a cascade with a stray key": (lambda: {**_stages((0, 1))(), "x.weight": torch.zeros(1)},
                                   "tensors outside its stages, e.g. 'x.weight'"),
}


@pytest.mark.parametrize("case", list(OBJECTS))
def test_broken_state_dicts_are_refused(tmp_path: Path, case: str) -> None:
    make, words = OBJECTS[case]
    path = tmp_path / "net.pth"
    torch.save(make(), path)
    assert words in _refused(path)


def test_a_zip_bomb_is_refused_before_unpacking(tmp_path: Path) -> None:
    """A compressed record unpacks to the size it declares (torch.load reads it into memory whole; this one, 64 MiB,
    could as well declare 64 GiB), and torch.save never compresses."""
    good, path = _base(tmp_path, "zip"), tmp_path / "bomb.pth"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            data = src.read(info.filename)
            z.writestr(info.filename, b"\0" * (64 << 20) if info.filename.endswith("/data/0") else data)
    assert "records are compressed" in _refused(path)


# ---------------------------------------------------------------------------------------------------------
# Paths that are no regular file.


def test_a_directory(tmp_path: Path) -> None:
    (tmp_path / "weights.pth").mkdir()
    assert "a directory, not a checkpoint file" in _refused(tmp_path / "weights.pth")


def test_a_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.pth")
    assert "a named pipe (FIFO), not a checkpoint file" in _refused(tmp_path / "pipe.pth")


def test_a_device(tmp_path: Path) -> None:
    assert "a character device, not a checkpoint file" in _refused(Path("/dev/zero"))


def test_a_symbolic_link_loop(tmp_path: Path) -> None:
    (tmp_path / "loop.pth").symlink_to(tmp_path / "loop.pth")
    assert "cannot be opened (Too many levels of symbolic links)" in _refused(tmp_path / "loop.pth")


def test_an_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root every file is readable, so the refusal of the kernel is simulated for this one path."""
    path = _base(tmp_path, "zip")
    real_open = os.open

    def no_permission(p: Any, *args: Any, **kwargs: Any) -> int:
        if Path(p) == path:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))
        return real_open(p, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_permission)
    assert "cannot be opened (Permission denied)" in _refused(path)


def test_a_nul_byte_in_the_path(tmp_path: Path) -> None:
    assert "cannot be opened (embedded null byte)" in _refused(tmp_path / "a\0b.pth")


def test_missing_paths_are_file_not_found(tmp_path: Path) -> None:
    (tmp_path / "dangling.pth").symlink_to(tmp_path / "nowhere.pth")
    for path in (tmp_path / "nowhere.pth", tmp_path / "dangling.pth"):
        with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
            M.load(path)


def test_metadata_that_is_not_ours_is_ignored(tmp_path: Path) -> None:
    """Foreign safetensors metadata (strings of any kind) never decides anything: the shapes do."""
    path = tmp_path / "net.safetensors"
    save_file({k: v.contiguous() for k, v in _sd().items()}, str(path),
              metadata={"format": "pt", "engine.arch": "edsr", "engine.hparams": json.dumps({"num_block": 9})})
    _, info = M.load(path)
    assert (info.arch, info.hparams["num_block"], info.format) == ("rrdbnet", 1, "basicsr (safetensors)")
