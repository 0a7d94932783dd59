"""The shipped default model (weights/): its scores in README are reproduced, and it beats bicubic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import engine.models as models
from train.config import preset
from train.evaluate import report
from train.photos import export

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "weights" / "tiny_x4.safetensors"
REPORT = REPO / "weights" / "tiny_x4.json"


def test_shipped_model_is_the_tiny_preset_network() -> None:
    net, info = models.load(WEIGHTS)
    cfg = preset("tiny")
    expected = models.create(cfg.model, **cfg.model_args, scale=cfg.scale)
    assert (info.arch, info.hparams, info.scale) == (expected.arch, expected.hparams, 4)
    assert info.metadata["preset"] == "tiny" and info.metadata["weights"] == "ema"
    assert WEIGHTS.stat().st_size < 3 * 2**20
    command = (REPO / "weights" / "README.md").read_text()
    assert "python -m train.run --preset tiny --data data/photos/train --val data/photos/val" in command


@pytest.mark.slow
def test_shipped_model_reproduces_its_readme_scores_and_beats_bicubic(tmp_path: Path) -> None:
    export(tmp_path / "photos")
    measured = report(str(WEIGHTS), str(tmp_path / "photos" / "val"))
    saved = json.loads(REPORT.read_text())
    assert measured["images"] == saved["images"] == ["chelsea.png", "coffee.png", "rocket.png"]
    for who in ("model", "bicubic"):
        assert measured[who]["psnr_y"] == pytest.approx(saved[who]["psnr_y"], abs=1e-3)
        assert measured[who]["ssim_y"] == pytest.approx(saved[who]["ssim_y"], abs=1e-4)
    assert measured["model"]["psnr_y"] - measured["bicubic"]["psnr_y"] >= 0.5
    readme = (REPO / "README.md").read_text()
    for who in ("model", "bicubic"):
        assert f"{saved[who]['psnr_y']:.2f} dB / {saved[who]['ssim_y']:.4f}" in readme
