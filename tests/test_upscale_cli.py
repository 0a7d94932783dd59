"""python -m engine.upscale with bad inputs, bad arguments and faults: every good image is written, every bad one is
named once, nothing a user had is lost, exit codes as documented (0 done, 1 some files failed, 2 could not start,
130 interrupted), no traceback, no temporary file left."""

from __future__ import annotations

import errno
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

import engine.upscale as cli
from engine import imageio
from engine.backends.torch_eager import TorchBackend
from engine.imageio import read_image, write_image

REPO = Path(__file__).resolve().parents[1]


def _photo(seed: int, h: int = 12, w: int = 10) -> np.ndarray:
    y, x = 20 * seed % 300, 30 * seed % 300
    return np.ascontiguousarray(skimage.data.astronaut()[y:y + h, x:x + w])


def _failures(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("failed:")]


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def _tiff(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".tif", image)
    assert ok
    return buf.tobytes()


def _broken_and_good(folder: Path) -> tuple[list[str], dict[str, str]]:
    """Good images (every format and pixel type the tool reads) and bad ones (name → what the message says)."""
    folder.mkdir()
    good = {
        "rgb.png": _photo(1), "photo.jpg": _photo(2), "lossless.webp": _photo(3), "gray.bmp": _photo(4)[..., 0],
        "deep.png": _photo(5).astype(np.uint16) * 257, "rgba.png": np.dstack([_photo(6), np.full((12, 10), 99,
                                                                                             np.uint8)]),
    }
    for name, image in good.items():
        write_image(folder / name, image, quality=101 if name.endswith(".webp") else 95)
    rng = np.random.default_rng(0)
    (folder / "float32.tif").write_bytes(_tiff(rng.random((9, 11, 3)).astype(np.float32)))
    (folder / "float64.tif").write_bytes(_tiff(rng.random((9, 11, 3))))  # a raw cv2.error stopped the run
    (folder / "bright.tif").write_bytes(_tiff((rng.random((9, 11, 3)) * 3).astype(np.float32)))  # clipped, written
    nan = rng.random((9, 11, 3)).astype(np.float32)
    nan[4, 4, 0] = np.nan
    (folder / "nan.tif").write_bytes(_tiff(nan))
    png = (folder / "rgb.png").read_bytes()
    bad = {
        "empty.png": (b"", "the file is empty"),
        "notes.jpg": (b"shopping list: milk, eggs\n" * 5, "not an image format this tool reads"),
        "truncated.png": (png[: len(png) // 2], "cannot be decoded"),
        "no-ihdr.png": (png[:8] + bytes(40), "header does not give its size"),
        "gif-bomb.png": (b"GIF89a" + struct.pack("<HH", 65535, 65535) + bytes(64), "its content is GIF"),
        "pnm.bmp": (b"P6\n60000 60000\n255\n" + bytes(64), "its content is PNM"),
        "huge.png": (_png_header(100_000, 100_000) + bytes(64), "more than --max-pixels"),
        "nan.tif": (None, "NaN or infinite"),
    }
    for name, (content, _) in bad.items():
        if content is not None:
            (folder / name).write_bytes(content)
    (folder / "folder.png").mkdir()  # a folder: not an input
    os.mkfifo(folder / "fifo.png")  # opening it would block forever
    (folder / "device.png").symlink_to("/dev/zero")  # reading it would never end
    (folder / "dangling.png").symlink_to(folder / "gone.png")
    (folder / "passwd.png").symlink_to("/etc/passwd")
    bad |= {"fifo.png": (None, "not a regular file"), "device.png": (None, "not a regular file"),
            "dangling.png": (None, "no such file"), "passwd.png": (None, "not an image format this tool reads")}
    names = [*good, "float32.tif", "float64.tif", "bright.tif"]
    return names, {name: message for name, (_, message) in bad.items()}


def test_a_folder_of_broken_and_good_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = _broken_and_good(tmp_path / "in")
    out = tmp_path / "out"
    stale = out / f".rgb_out.png.{_dead_pid()}-0123456789ab.tmp"  # a SIGKILLed run's temporary
    out.mkdir()
    stale.write_bytes(b"half an image")
    code = cli.main(["-i", str(tmp_path / "in"), "-o", str(out)])
    captured = capsys.readouterr()
    assert code == cli.EXIT_FAILED
    assert "Traceback" not in captured.err + captured.out
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{Path(n).stem}_out{imageio.output_extension(n, 'auto')}" for n in good)
    for name in good:
        source = read_image(tmp_path / "in" / name)
        result = read_image(out / f"{Path(name).stem}_out{imageio.output_extension(name, 'auto')}")
        assert result.shape[:2] == (source.shape[0] * 4, source.shape[1] * 4) and result.dtype == source.dtype
    failures = _failures(captured.err)
    assert len(failures) == len(bad), failures
    for name, message in bad.items():
        lines = [line for line in failures if f"/{name}:" in line]
        assert len(lines) == 1 and lines[0].count(name) == 1 and message in lines[0], (name, lines)
    assert f"{len(good)} written" in captured.out and f"{len(bad)} failed" in captured.out
    assert _temporaries(tmp_path) == []


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def _one_image(tmp_path: Path, name: str = "a.png") -> Path:
    src = tmp_path / "in"
    src.mkdir(exist_ok=True)
    write_image(src / name, _photo(len(name)))
    return src


@pytest.mark.parametrize("flags, message", [
    (["--threads", "100000"], "--threads 100000: this machine has"),
    (["--threads", "-1"], "--threads -1"),
    (["--max-pixels", "0"], "--max-pixels 0: give the largest input image"),
    (["--max-pixels", "-1"], "--max-pixels -1"),
    (["--batch", "0"], "--batch: batch must be a whole number of tiles per call, at least 1"),
    (["--batch", "-1"], "--batch: batch must be"),
    (["-t", "1"], "-t/--tile: tile 1 is less than twice the tile overlap 32"),
    (["-t", "-5"], "-t/--tile: tile must be"),
    (["--tile-overlap", "-1"], "--tile-overlap: tile_overlap must be"),
    (["-s", "inf"], "-s/--outscale inf"),
    (["-s", "nan"], "-s/--outscale nan"),
    (["-s", "0"], "-s/--outscale 0.0"),
    (["-s", "1000"], "-s/--outscale 1000.0"),
    (["--alpha", "2", "--gan-weights", "weights/tiny_x4.safetensors"], "--alpha 2.0: give a weight in [0, 1]"),
    (["--alpha", "0.5"], "--alpha and --gan-weights go together"),
    (["--suffix", "../up"], "--suffix '../up'"),
    (["--suffix", "a/b"], "--suffix 'a/b'"),
    (["--suffix", ".hidden"], "--suffix '.hidden'"),
    (["--ext", "gif"], "--ext: unknown output extension 'gif'"),
    (["--device", "cuda"], "--device cuda: no CUDA device"),
    (["--device", "tpu"], "--device tpu: give auto, cpu, cuda or cuda:N"),
    (["--fp16", "--device", "cpu"], "--fp16 needs a CUDA device"),
    (["--backend", "triton", "--device", "cpu"], "--backend triton: the Triton kernels need a CUDA GPU"),
    (["--backend", "onnxruntime", "--bf16"], "--backend onnxruntime runs --fp32, --fp16, not --bf16"),
    (["-n", "no-such-model"], "-n no-such-model: neither a checkpoint file"),
    (["-n", "/dev/null"], "-n /dev/null: not a regular file"),
    (["--overwrite", "--skip-existing"], "exclude each other"),
])
def test_arguments_that_cannot_work_stop_the_run_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch, flags: list[str],
                                                                 message: str) -> None:
    if flags[:2] == ["--device", "cuda"] and cli.torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    src = _one_image(tmp_path)
    code = cli.main(["-i", str(src), "-o", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and message in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_an_output_folder_that_cannot_be_written_stops_the_run_before_the_model_loads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    src = _one_image(tmp_path)
    (tmp_path / "file.txt").write_text("not a folder")

    def no_model(args: object) -> None:
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(cli, "make_backend", no_model)
    assert cli.main(["-i", str(src), "-o", str(tmp_path / "file.txt" / "out")]) == cli.EXIT_USAGE
    assert "cannot write there" in capsys.readouterr().err
    assert cli.main(["-i", str(src), "-o", str(tmp_path / "file.txt")]) == cli.EXIT_USAGE
    assert "a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "file.txt").read_text() == "not a folder"

    real_open = os.open

    def read_only(path: object, flags: int, *a: object) -> int:
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *a)

    monkeypatch.setattr(os, "open", read_only)
    assert cli.main(["-i", str(src), "-o", str(tmp_path / "ro")]) == cli.EXIT_USAGE
    assert "Read-only file system" in capsys.readouterr().err


def test_name_collisions_are_refused_before_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _one_image(tmp_path, "x.jpg")
    write_image(src / "x.png", _photo(9))
    assert cli.main(["-i", str(src), "-o", str(tmp_path / "out"), "--ext", "png"]) == cli.EXIT_USAGE
    assert "x.jpg and x.png would both be written to" in capsys.readouterr().err
    write_image(src / "y.jpeg", _photo(3))
    write_image(src / "y.jpg", _photo(4))
    assert cli.main(["-i", str(src), "-o", str(tmp_path / "out")]) == cli.EXIT_USAGE
    assert "y.jpeg and y.jpg would both be written to" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_inputs_are_never_written_over(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _one_image(tmp_path)
    before = (src / "a.png").read_bytes()
    code = cli.main(["-i", str(src), "-o", str(src), "--suffix", "", "--overwrite"])
    assert code == cli.EXIT_USAGE and "would replace the input" in capsys.readouterr().err
    assert (src / "a.png").read_bytes() == before and [p.name for p in src.iterdir()] == ["a.png"]
    code = cli.main(["-i", str(src / "a.png"), "-o", str(src), "--suffix", "", "--ext", "png", "--overwrite"])
    assert code == cli.EXIT_USAGE and (src / "a.png").read_bytes() == before


def test_a_rerun_into_the_input_folder_does_not_upscale_the_outputs(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    src = _one_image(tmp_path)
    assert cli.main(["-i", str(src), "-o", str(src)]) == cli.EXIT_OK
    assert sorted(p.name for p in src.iterdir()) == ["a.png", "a_out.png"]
    capsys.readouterr()
    assert cli.main(["-i", str(src), "-o", str(src), "--skip-existing"]) == cli.EXIT_OK
    captured = capsys.readouterr()
    assert "1 image(s)" in captured.out and "are not upscaled again" in captured.out and "1 skipped" in captured.out
    assert sorted(p.name for p in src.iterdir()) == ["a.png", "a_out.png"]


def test_an_output_created_meanwhile_by_another_run_is_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs into one folder both claimed every file written: the later writer now finds the name taken."""
    src = _one_image(tmp_path)
    write_image(src / "b.png", _photo(7))
    out = tmp_path / "out"
    real = imageio._write_bytes

    def other_run_first(tmp: str, data: object) -> None:
        target = out / "a_out.png"
        if Path(tmp).name.startswith(".a_out.png.") and not target.exists():
            target.write_bytes(b"the other run's image")
        real(tmp, data)

    monkeypatch.setattr(imageio, "_write_bytes", other_run_first)
    assert cli.main(["-i", str(src), "-o", str(out)]) == cli.EXIT_FAILED
    failures = _failures(capsys.readouterr().err)
    assert len(failures) == 1 and "a.png" in failures[0] and "created meanwhile" in failures[0]
    assert (out / "a_out.png").read_bytes() == b"the other run's image"
    assert read_image(out / "b_out.png").shape == (48, 40, 3)
    assert _temporaries(tmp_path) == []


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EFBIG, errno.EACCES, errno.EROFS])
def test_a_failed_write_is_one_failed_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    src = _one_image(tmp_path)
    write_image(src / "b.png", _photo(7))
    real = imageio._write_bytes

    def fail_on_a(tmp: str, data: object) -> None:
        if Path(tmp).name.startswith(".a_out.png."):
            Path(tmp).write_bytes(b"half")
            raise OSError(err, os.strerror(err), tmp)
        real(tmp, data)

    monkeypatch.setattr(imageio, "_write_bytes", fail_on_a)
    assert cli.main(["-i", str(src), "-o", str(tmp_path / "out")]) == cli.EXIT_FAILED
    failures = _failures(capsys.readouterr().err)
    assert len(failures) == 1 and "a.png" in failures[0] and os.strerror(err) in failures[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b_out.png"]


def test_a_file_size_limit_fails_one_file_and_the_run_goes_on(tmp_path: Path) -> None:
    """Over RLIMIT_FSIZE a write fails with EFBIG (CPython ignores SIGXFSZ), which stopped the whole run with a
    traceback; now it is one failed file."""
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "big.png", np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    write_image(src / "small.png", np.zeros((4, 4, 3), np.uint8))
    code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({40_000}, {40_000})); "
            f"from engine.upscale import main; sys.exit(main(['-i', {str(src)!r}, '-o', {str(tmp_path / 'out')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == cli.EXIT_FAILED, proc.stderr
    failures = _failures(proc.stderr)
    assert len(failures) == 1 and "big.png" in failures[0] and "File too large" in failures[0]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["small_out.png"]


def test_ctrl_c_cleans_up_prints_the_summary_and_exits_130(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    src = _one_image(tmp_path)
    write_image(src / "b.png", _photo(7))
    real = imageio._write_bytes

    def interrupted_while_writing_b(tmp: str, data: object) -> None:
        if Path(tmp).name.startswith(".b_out.png."):
            Path(tmp).write_bytes(b"half")
            raise KeyboardInterrupt
        real(tmp, data)

    monkeypatch.setattr(imageio, "_write_bytes", interrupted_while_writing_b)
    assert cli.main(["-i", str(src), "-o", str(tmp_path / "out")]) == cli.EXIT_INTERRUPTED
    assert "1 written" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a_out.png"]
    assert _temporaries(tmp_path) == []


def test_sigint_to_the_process(tmp_path: Path) -> None:
    """A real SIGINT in the middle of a folder run: exit 130, the summary, nothing half-written."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        write_image(src / f"{i}.png", skimage.data.astronaut()[40 * i:40 * i + 160, :160])
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "engine.upscale", "-i", str(src), "-o", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a shell's background job ignores SIGINT, and children inherit that: restore it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while not (out.exists() and any(out.glob("*_out.png"))):  # the first image is done: the run is going
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be interrupted"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == cli.EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr and "(interrupted)" in stdout
    assert _temporaries(tmp_path) == []
    done = sorted(out.iterdir())
    assert 1 <= len(done) < 6
    for p in done:
        assert read_image(p).shape == (640, 640, 3)


def test_per_file_problems_found_late_are_named_and_the_run_goes_on(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src = _one_image(tmp_path)
    write_image(src / "tiny.png", np.zeros((1, 1, 3), np.uint8))
    assert cli.main(["-i", str(src), "-o", str(tmp_path / "out"), "-s", "0.1"]) == cli.EXIT_FAILED
    failures = _failures(capsys.readouterr().err)
    assert len(failures) == 1 and "tiny.png" in failures[0] and "makes a 0×0 image" in failures[0]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a_out.png"]

    monkeypatch.setattr(cli, "available_memory", lambda: 2**9)
    assert cli.main(["-i", str(src), "-o", str(tmp_path / "out2")]) == cli.EXIT_FAILED
    failures = _failures(capsys.readouterr().err)
    assert len(failures) == 2 and all("of memory" in f and "0.5 KiB is available" in f for f in failures)
    assert not (tmp_path / "out2").exists() or list((tmp_path / "out2").iterdir()) == []


def test_memory_needed_counts_the_output_in_its_own_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2048×1080 RGB photo at ×4: the uint8 output is 106 MiB; no float32 canvas of the whole output (425 MiB)."""
    backend = TorchBackend(cli.models.load(REPO / "weights" / "tiny_x4.safetensors")[0])
    image = np.zeros((1080, 2048, 3), np.uint8)
    need = cli.memory_needed(backend, image, 4320, 8192, 256, 4)
    assert need["output"] == 4320 * 8192 * 3
    assert need["blend band"] == 3 * 256 * 4 * 8192 * 4
    assert sum(v for k, v in need.items() if k != "tiles and activations") < 4320 * 8192 * 3 * 4


def test_opencvs_own_warnings_are_not_printed_before_ours(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """OpenCV logged "[ WARN:0@0.1] global grfmt_png.cpp:793 ... PNG input buffer is incomplete" to stderr before
    our message for the same file."""
    src = tmp_path / "in"
    src.mkdir()
    for name, ext in (("cut.png", ".png"), ("cut.tif", ".tif"), ("cut.bmp", ".bmp")):
        ok, buf = cv2.imencode(ext, _photo(1, 40, 40))
        (src / name).write_bytes(buf.tobytes()[: len(buf) // 2])
    assert cli.main(["-i", str(src), "-o", str(tmp_path / "out")]) == cli.EXIT_FAILED
    err = capfd.readouterr().err
    assert len(_failures(err)) == 3
    assert "WARN" not in err and "[ERROR" not in err and "grfmt" not in err, err
