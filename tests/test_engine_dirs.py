"""Engine directories as untrusted input (issue 15): a manifest names only an engine's own plain files, sizes are
checked before hashing, malformed fields and files give one EngineError, engine files get the usual modes, and
engine.load / OrtBackend refuse thread counts and devices that cannot work."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from util import deadline, small_rrdb

import engine
import engine.models as M
from engine.backends.ort import OrtBackend
from engine.backends.registry import EngineError
from engine.build import main as build_main
from engine.machine import usable_cpus
from engine.manifest import read_manifest, sha256
from export.onnx import export_onnx


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ONNX Runtime engine with both endpoints (fp32, tile 16)."""
    d = tmp_path_factory.mktemp("dirs")
    M.save(small_rrdb(0), d / "a.safetensors")
    M.save(small_rrdb(1), d / "b.safetensors")
    assert build_main(["--weights", str(d / "a.safetensors"), "--gan-weights", str(d / "b.safetensors"), "--tile",
                       "16", "--no-verify", "-o", str(d / "e")]) == 0
    return d / "e"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit(d: Path, change: Callable[[dict[str, Any]], Any]) -> Path:
    manifest = json.loads((d / "manifest.json").read_text())
    change(manifest)
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d




# ---------------------------------------------------------------------------------------------------------
# only plain names inside the folder (issue 15.8)


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.onnx", "/proc/self/pagemap", "sub/model.onnx",
                                  "manifest.json", "evil.py"])
def test_a_manifest_naming_anything_but_an_engines_own_files_is_refused(built: Path, tmp_path: Path,
                                                                         name: str) -> None:
    d = _copy(built, tmp_path / "e")
    (tmp_path / "outside.onnx").write_bytes((d / "model.onnx").read_bytes())  # a real file outside the folder
    entry = {"sha256": sha256(d / "model.onnx"), "bytes": (d / "model.onnx").stat().st_size}
    _edit(d, lambda m: m["files"].update({name: entry}))
    with deadline(20), pytest.raises(EngineError, match="not one of the files of onnxruntime engines") as info:
        engine.load(d)
    assert str(d) in str(info.value) and "rebuild" in str(info.value).lower()


def test_the_error_does_not_reveal_whether_an_outside_path_exists(built: Path, tmp_path: Path) -> None:
    messages = []
    for name in ("../exists.bin", "../absent.bin"):
        d = _copy(built, tmp_path / name[3:-4])
        (tmp_path / "exists.bin").write_bytes(b"x" * 10)
        _edit(d, lambda m, name=name: m["files"].update({name: {"sha256": "0" * 64, "bytes": 10}}))
        with pytest.raises(EngineError) as info:
            engine.load(d)
        messages.append(str(info.value).replace(str(d), "D").replace(name, "N"))
    assert messages[0] == messages[1]


def test_a_symbolic_link_is_refused_even_when_its_target_matches(built: Path, tmp_path: Path) -> None:
    d = _copy(built, tmp_path / "e")
    (tmp_path / "real.onnx").write_bytes((d / "model.onnx").read_bytes())
    (d / "model.onnx").unlink()
    (d / "model.onnx").symlink_to(tmp_path / "real.onnx")  # same bytes, same checksum
    with pytest.raises(EngineError, match="model.onnx is a symbolic link"):
        engine.load(d)


def test_a_pipe_in_place_of_a_file_or_manifest_is_refused_without_hanging(built: Path, tmp_path: Path) -> None:
    d = _copy(built, tmp_path / "e")
    (d / "weights_gan.safetensors").unlink()
    os.mkfifo(d / "weights_gan.safetensors")
    with deadline(20), pytest.raises(EngineError, match="weights_gan.safetensors is not a regular file"):
        engine.load(d)
    (d / "manifest.json").unlink()
    os.mkfifo(d / "manifest.json")
    with deadline(20), pytest.raises(EngineError, match="manifest.json is not a regular file"):
        engine.load(d)


def test_the_size_is_checked_before_the_file_is_hashed(built: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    d = _copy(built, tmp_path / "e")
    with open(d / "model.onnx", "ab") as f:
        f.write(b"\0" * 4096)
    hashed = []
    monkeypatch.setattr("engine.manifest._sha256_fd", lambda fd: hashed.append(fd) or "0" * 64)
    with pytest.raises(EngineError, match=r"model.onnx has [\d,]+ bytes, manifest.json says [\d,]+"):
        engine.load(d)
    assert not hashed


# ---------------------------------------------------------------------------------------------------------
# malformed manifests and files: one EngineError naming the folder and the fix (issue 15.12)


def _drop(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda m: m.pop(key)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda m: m.__setitem__(key, value)


@pytest.mark.parametrize("change,words", [
    (_set("scale", "x"), "scale must be an integer"),
    (_set("tile", -1), "tile must be an integer"),
    (_set("tile", 6), "multiple of `multiple`"),  # fine for ×4 (multiple 1): replaced below by multiple 4
    (_set("batch", 0), "batch must be an integer"),
    (_set("in_channels", 3.5), "in_channels must be an integer"),
    (_set("multiple", True), "multiple must be an integer"),
    (_set("precision", "fp64"), "precision 'fp64'"),
    (_set("files", ["model.onnx"]), "files must be an object"),
    (_set("model", "rrdb"), "model must be an object"),
    (_drop("model"), "lacks model"),
    (_set("alpha", {"value": "x"}), "alpha must be an object whose value is a number"),
    (_set("alpha", 0.3), "alpha must be an object"),
    (lambda m: m["files"]["model.onnx"].update(sha256=5), "must hold sha256"),
    (lambda m: m["files"]["model.onnx"].pop("bytes"), "must hold sha256"),
    (lambda m: m["files"].pop("model.onnx"), "files lacks model.onnx"),
    (lambda m: m["files"].pop("weights_gan.safetensors"), "without the other"),
    (_set("bytes_per_pixel", "lots"), "bytes_per_pixel"),
    (lambda m: m.clear(), "lacks format_version"),
    (_set("backend", ["onnxruntime"]), "backend ['onnxruntime'] is not one of"),
    (_set("format_version", "1"), "format_version must be the integer 1"),
    (_set("alpha", {"value": float("nan")}), "alpha must be an object whose value is a number"),
    (_set("scale", float("inf")), "scale must be an integer"),
])
def test_a_malformed_manifest_gives_one_engine_error(built: Path, tmp_path: Path, change: Callable[..., Any],
                                                      words: str) -> None:
    d = _copy(built, tmp_path / "e")
    if words == "multiple of `multiple`":
        _edit(d, _set("multiple", 4))
    _edit(d, change)
    with pytest.raises(EngineError) as info:
        engine.load(d)
    text = str(info.value)
    assert words in text and str(d) in text and "rebuild" in text.lower()


def test_a_manifest_that_is_not_an_object_or_too_large_is_refused(built: Path, tmp_path: Path) -> None:
    d = _copy(built, tmp_path / "e")
    (d / "manifest.json").write_text("[1, 2]")
    with pytest.raises(EngineError, match="not a sound engine manifest: it is not a JSON object"):
        engine.load(d)
    (d / "manifest.json").write_text(" " * (2 << 20))
    with pytest.raises(EngineError, match="more than any engine manifest"):
        engine.load(d)


@pytest.mark.parametrize("victim", ["model.onnx", "weights_gan.safetensors"])
def test_a_crafted_file_whose_checksum_matches_gives_an_engine_error(built: Path, tmp_path: Path,
                                                                     victim: str) -> None:
    d = _copy(built, tmp_path / "e")
    (d / victim).write_bytes(b"not a model at all" * 10)
    _edit(d, lambda m: m["files"][victim].update(sha256=sha256(d / victim), bytes=(d / victim).stat().st_size))
    with pytest.raises(EngineError, match=f"{victim}.* cannot be loaded .*rebuild") as info:
        engine.load(d)
    assert str(d) in str(info.value)


@pytest.mark.parametrize("location", ["/etc/hostname", "../outside.bin", "inside.bin"])
def test_a_graph_whose_tensors_live_in_other_files_is_refused(built: Path, tmp_path: Path, location: str) -> None:
    """ONNX Runtime itself refuses paths outside the folder, but its messages tell what exists there; our graphs
    keep every tensor inline, so any external data is refused before ONNX Runtime reads the graph."""
    import onnx

    d = _copy(built, tmp_path / "e")
    (tmp_path / "outside.bin").write_bytes(bytes(1024))
    (d / "inside.bin").write_bytes(bytes(1024))
    model = onnx.load(str(d / "model.onnx"))
    tensor = next(t for t in model.graph.initializer if t.name == "conv_first.bias")
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * tensor.dims[0]))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    (d / "model.onnx").write_bytes(model.SerializeToString())
    _edit(d, lambda m: m["files"]["model.onnx"].update(sha256=sha256(d / "model.onnx"),
                                                       bytes=(d / "model.onnx").stat().st_size))
    with pytest.raises(EngineError, match=r"model.onnx keeps 1 tensors \(conv_first.bias\) in other files") as info:
        engine.load(d)
    assert location not in str(info.value)


def test_files_of_another_network_than_the_manifest_says_are_refused(built: Path, tmp_path: Path) -> None:
    d = _copy(built, tmp_path / "e")
    _edit(d, lambda m: m.update(in_channels=1))
    with pytest.raises(EngineError, match=r"in_channels 3 \(the manifest says 1\)"):
        engine.load(d)


# ---------------------------------------------------------------------------------------------------------
# modes (issue 15.13)


def test_every_engine_file_gets_the_usual_mode(tmp_path: Path) -> None:
    M.save(small_rrdb(0), tmp_path / "a.safetensors")
    M.save(small_rrdb(1), tmp_path / "b.safetensors")
    old = os.umask(0o022)
    try:
        for backend in ("onnxruntime", "triton"):
            out = tmp_path / backend
            assert build_main(["--weights", str(tmp_path / "a.safetensors"), "--gan-weights",
                               str(tmp_path / "b.safetensors"), "--backend", backend, "--fp32", "--tile", "16",
                               "--no-verify", "-o", str(out)]) == 0
            assert stat.S_IMODE(out.stat().st_mode) == 0o755
            modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in out.iterdir()}
            assert len(modes) >= 3 and set(modes.values()) == {"0o644"}, modes
    finally:
        os.umask(old)


# ---------------------------------------------------------------------------------------------------------
# threads and devices (issue 15.7, 15.12)


def test_threads_are_bounded_by_the_cpus_and_nonsense_is_refused(built: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    model = export_onnx(small_rrdb(0)).SerializeToString()
    for bad in (-1, 2.5, "4", True):
        with pytest.raises(ValueError, match="threads must be"):
            OrtBackend(model, scale=4, in_channels=3, out_channels=3, threads=bad)
        with pytest.raises(ValueError, match="threads must be"):
            engine.load(built, threads=bad)
    with caplog.at_level(logging.WARNING, logger="engine"):
        eng = engine.load(built, threads=100_000)
    assert eng.backend.threads == usable_cpus()
    assert eng.backend.session.get_session_options().intra_op_num_threads == usable_cpus()
    warnings = [r for r in caplog.records if "threads=100000" in r.getMessage()]
    assert len(warnings) == 1 and f"using {usable_cpus()}" in warnings[0].getMessage()


def test_load_refuses_a_device_its_engine_cannot_use(built: Path) -> None:
    assert engine.load(built).device.type == "cpu"  # the default: the backend's own device
    with pytest.raises(ValueError, match="device='cuda'.*ONNX Runtime engine, which runs on the CPU"):
        engine.load(built, device="cuda")
    with pytest.raises(ValueError, match="device 'gpu please' is not a device"):
        engine.load(built, device="gpu please")
    assert engine.load(built, device="cpu").device.type == "cpu"


def test_a_triton_engine_without_a_gpu_says_so_before_loading(built: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    M.save(small_rrdb(0), tmp_path / "a.safetensors")
    assert build_main(["--weights", str(tmp_path / "a.safetensors"), "--backend", "triton", "--tile", "16",
                       "--no-verify", "-o", str(tmp_path / "t")]) == 0
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(EngineError, match="triton engine: its kernels run on a CUDA GPU, and this machine has none"):
        engine.load(tmp_path / "t")
    assert read_manifest(tmp_path / "t")["backend"] == "triton"
