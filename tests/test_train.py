"""Training: every preset runs, the tiny preset learns, resume is exact (also after SIGKILL), torchrun/DDP
trains, corrupt images are skipped by name, the alpha sweep, and the configuration of the published recipes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch

import engine.models as models
from train.config import (
    PRESETS,
    RUN_FORMAT,
    ConfigError,
    TrainConfig,
    TrainError,
    learning_rate,
    parse_override,
    preset,
)
from train.run import main as run_main
from train.rundir import state_files
from train.state import ema_decay, ema_update
from train.sweep import main as sweep_main
from train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]




def _write_photos(folder: Path, size: int = 48, count: int = 4) -> Path:
    """Small crops of real photos (scikit-image's public-domain/CC0 images), as PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    for i in range(count):
        photo = photos[i % len(photos)]
        y, x = 60 + 17 * i, 90 + 23 * i
        crop = np.ascontiguousarray(photo[y:y + size, x:x + size, ::-1])
        cv2.imwrite(str(folder / f"img{i}.png"), crop)
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    _write_photos(root / "train", size=48, count=6)
    _write_photos(root / "val", size=40, count=2)
    return root


def _tiny(photos: Path, **overrides: object) -> TrainConfig:
    base = dict(data=str(photos / "train"), gt_size=32, batch_size=4, num_workers=0, iters=4, log_every=2,
                val_every=1000, save_every=1000, model_args={"num_block": 1, "num_feat": 16, "num_grow_ch": 8})
    return preset("tiny", **{**base, **overrides})


def _csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------------------
# Each preset's stage runs a few iterations with finite losses.


@pytest.mark.parametrize("name", [p for p in PRESETS if p != "x16-perceptual"])  # x16: its own test below
def test_every_preset_runs_a_few_iterations(tmp_path: Path, photos: Path, name: str) -> None:
    gt = PRESETS[name]["gt_size"]
    data = _write_photos(tmp_path / "data", size=max(gt, 48), count=2)
    cfg = preset(name, data=str(data), iters=2, batch_size=2, num_workers=0, log_every=1, val_every=100,
                 save_every=100, perceptual_random_init=PRESETS[name].get("perceptual_weight", 0) > 0)
    out = Trainer(cfg, tmp_path / "run").run()
    rows = _csv(tmp_path / "run" / "train.csv")
    assert [int(r["iter"]) for r in rows] == [1, 2]
    keys = ["l_pix"] if cfg.stage == "psnr" else ["l_percep", "l_gan", "l_d"] + (["l_pix"] if cfg.pixel_weight else [])
    for r in rows:
        for k in keys:
            assert np.isfinite(float(r[k])), (name, k, r)
    net, info = models.load(out)
    assert info.name == (cfg.model if not cfg.model_args else None) and info.scale == 4


def test_tiny_preset_lowers_the_l1_loss_on_real_photos(tmp_path: Path, photos: Path) -> None:
    cfg = _tiny(photos, iters=240, log_every=40, batch_size=4, gt_size=32)
    Trainer(cfg, tmp_path / "run").run()
    losses = [float(r["l_pix"]) for r in _csv(tmp_path / "run" / "train.csv")]
    assert len(losses) == 6
    assert losses[-1] < 0.6 * losses[0], losses


def test_amp_bf16_and_channels_last_train(tmp_path: Path, photos: Path) -> None:
    cfg = _tiny(photos, amp="bf16", channels_last=True, iters=3, log_every=1)
    Trainer(cfg, tmp_path / "run").run()
    assert all(np.isfinite(float(r["l_pix"])) for r in _csv(tmp_path / "run" / "train.csv"))


@pytest.mark.slow
def test_torch_compile_trains(tmp_path: Path, photos: Path) -> None:
    """Inductor on the CPU needs a C++ compiler; this compiles the generator's forward and backward."""
    Trainer(_tiny(photos, compile=True, iters=2, log_every=1), tmp_path / "run").run()
    assert all(np.isfinite(float(r["l_pix"])) for r in _csv(tmp_path / "run" / "train.csv"))


# ---------------------------------------------------------------------------------------------------------
# Checkpoints and resume.


def _weights(run: Path, tag: str) -> dict[str, torch.Tensor]:
    return torch.load(run / "models" / f"net_g_{tag}.pth", weights_only=True)


@pytest.mark.parametrize("stage", ["psnr", "gan", "unet-gan"])
def test_resume_equals_an_uninterrupted_run(tmp_path: Path, photos: Path, stage: str) -> None:
    extra = dict(save_every=3, log_every=1)
    if stage == "gan":
        extra |= dict(stage="gan", discriminator="unet", discriminator_args={"num_feat": 8}, perceptual_weight=1.0,
                      perceptual_random_init=True, gan_weight=5e-3, pixel_weight=1e-2, lr_g=1e-4)
    if stage == "unet-gan":  # the ×16 losses: LPIPS, U-Net hinge, feature matching, CutMix draws, clipping
        extra |= dict(stage="gan", discriminator="unet-gan", discriminator_args={"num_feat": 8}, gan_type="unet-hinge",
                      lpips_weight=1e-3, lpips_random_init=True, gan_weight=1e-3, feature_matching_weight=1.0,
                      cutmix_prob=0.5, grad_clip=0.1, gan_start=1, pixel_loss="huber", lr_g=1e-4)
    torch.set_num_threads(1)  # the fixture puts the count back
    Trainer(_tiny(photos, iters=6, **extra), tmp_path / "straight").run()
    Trainer(_tiny(photos, iters=3, **extra), tmp_path / "split").run()
    Trainer(_tiny(photos, iters=6, **extra), tmp_path / "split", resume=True).run()
    a, b = _weights(tmp_path / "straight", "6"), _weights(tmp_path / "split", "6")
    for wrapper in ("params", "params_ema"):
        for key, t in a[wrapper].items():
            assert torch.equal(t, b[wrapper][key]), (wrapper, key)
    if stage != "psnr":
        da = torch.load(tmp_path / "straight" / "models" / "net_d_6.pth", weights_only=True)["params"]
        db = torch.load(tmp_path / "split" / "models" / "net_d_6.pth", weights_only=True)["params"]
        assert all(torch.equal(t, db[k]) for k, t in da.items())
    # the resumed run's CSV continues without duplicates
    assert [int(r["iter"]) for r in _csv(tmp_path / "split" / "train.csv")] == [1, 2, 3, 4, 5, 6]


def test_checkpoint_files_load_in_the_engine_and_basicsr_layout(tmp_path: Path, photos: Path) -> None:
    Trainer(_tiny(photos, iters=2, save_every=2), tmp_path / "run").run()
    models_dir = tmp_path / "run" / "models"
    basicsr = torch.load(models_dir / "net_g_2.pth", weights_only=True)
    assert set(basicsr) == {"params", "params_ema"}
    net, info = models.load(models_dir / "net_g_2.pth")
    assert info.wrapper == "params_ema" and info.format == "basicsr"
    ours, info = models.load(models_dir / "net_g_2.safetensors")
    assert info.format == "safetensors" and info.metadata["weights"] == "ema" and info.metadata["iter"] == "2"
    for key, t in ours.state_dict().items():
        assert torch.equal(t, basicsr["params_ema"][key])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["iters"] == 2
    assert [p.name for p in (tmp_path / "run").rglob(".*.tmp")] == []


def test_states_are_pruned_and_runs_are_not_overwritten(tmp_path: Path, photos: Path) -> None:
    Trainer(_tiny(photos, iters=6, save_every=1, keep_states=2), tmp_path / "run").run()
    assert [i for i, _ in state_files(tmp_path / "run")] == [5, 6]
    with pytest.raises(TrainError, match="already holds a run"):
        Trainer(_tiny(photos, iters=6), tmp_path / "run")
    with pytest.raises(TrainError, match="does not exist"):
        Trainer(_tiny(photos, iters=6), tmp_path / "empty", resume=True)


def _cli(*args: str, env: dict[str, str] | None = None) -> list[str]:
    return [sys.executable, "-m", "train.run", *args]


def test_sigkill_mid_training_resumes_with_nothing_lost(tmp_path: Path, photos: Path) -> None:
    common = ["--preset", "tiny", "--data", str(photos / "train"), "--gt-size", "32", "--batch-size", "4",
              "--workers", "0", "--save-every", "5", "--log-every", "1", "--val-every", "1000",
              "--set", 'model_args={"num_block": 1, "num_feat": 16, "num_grow_ch": 8}']
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    subprocess.run(_cli(*common, "--iters", "20", "--out", str(tmp_path / "straight")), env=env, check=True,
                   capture_output=True, cwd=REPO)

    victim = subprocess.Popen(_cli(*common, "--iters", "100000", "--out", str(tmp_path / "killed")), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    deadline = time.time() + 120
    while not any(i >= 10 for i, _ in state_files(tmp_path / "killed")):
        assert time.time() < deadline and victim.poll() is None, "the run never wrote its second state"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    resumed_from = state_files(tmp_path / "killed")[-1][0]
    assert resumed_from >= 10

    result = subprocess.run(_cli("--resume", "--iters", "20", "--out", str(tmp_path / "killed")), env=env,
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resumed at iteration {resumed_from}" in (tmp_path / "killed" / "train.log").read_text()
    a, b = _weights(tmp_path / "straight", "20"), _weights(tmp_path / "killed", "20")
    for key, t in a["params_ema"].items():
        assert torch.equal(t, b["params_ema"][key]), key
    iters = [int(r["iter"]) for r in _csv(tmp_path / "killed" / "train.csv")]
    assert iters == list(range(1, 21))


# ---------------------------------------------------------------------------------------------------------
# Distributed, data problems, validation outputs.


def test_torchrun_two_processes_on_cpu(tmp_path: Path, photos: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "train.run",
           "--preset", "tiny-gan", "--data", str(photos / "train"), "--gt-size", "32", "--batch-size", "2",
           "--workers", "0", "--iters", "3", "--save-every", "3", "--log-every", "1", "--perceptual-random-init",
           "--set", 'model_args={"num_block": 1, "num_feat": 16, "num_grow_ch": 8}',
           "--out", str(tmp_path / "ddp")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers
        raise
    assert proc.returncode == 0, stderr[-3000:]
    run = tmp_path / "ddp"
    assert [i for i, _ in state_files(run)] == [3]
    assert sorted(p.name for p in (run / "models").iterdir()) == [
        "net_d_3.pth", "net_d_latest.pth", "net_g_3.pth", "net_g_3.safetensors", "net_g_latest.pth",
        "net_g_latest.safetensors"]
    assert "2 process(es)" in (run / "train.log").read_text()
    state = torch.load(state_files(run)[0][1], weights_only=True)
    assert state["world_size"] == 2


def test_corrupt_and_tiny_images_are_skipped_by_name(tmp_path: Path, photos: Path) -> None:
    data = _write_photos(tmp_path / "data", size=48, count=2)
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    cv2.imwrite(str(data / "small.png"), np.zeros((12, 12, 3), np.uint8))
    Trainer(_tiny(photos, data=str(data), iters=6, num_workers=2, batch_size=4), tmp_path / "run").run()
    text = (tmp_path / "run" / "train.log").read_text()
    assert "broken.png" in text and "cannot be decoded" in text
    assert "small.png" in text


def test_validation_writes_metrics_and_a_sample_grid(tmp_path: Path, photos: Path) -> None:
    cfg = _tiny(photos, val=str(photos / "val"), iters=4, val_every=2, sample_count=2)
    Trainer(cfg, tmp_path / "run").run()
    rows = _csv(tmp_path / "run" / "val.csv")
    assert [int(r["iter"]) for r in rows] == [2, 4] and all(r["images"] == "2" for r in rows)
    assert all(5 < float(r["psnr_y"]) < 60 and 0 < float(r["ssim_y"]) <= 1 for r in rows)
    grid = cv2.imread(str(tmp_path / "run" / "samples" / "iter_00000004.png"))
    assert grid.shape == (2 * (40 + 4), 3 * 40, 3)


def test_gan_stage_needs_vgg_weights_and_a_matching_pretrained_net(tmp_path: Path, photos: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = run_main(["--preset", "tiny-gan", "--data", str(photos / "train"), "--out", str(tmp_path / "g")])
    assert code == 2
    err = capsys.readouterr().err
    assert "--vgg19-weights" in err and "vgg19-dcbb9e9d.pth" in err
    other = models.create("msrresnet", num_block=1)
    models.save(other, tmp_path / "other.safetensors")
    with pytest.raises(TrainError, match="--pretrained .* is a msrresnet"):
        Trainer(_tiny(photos, pretrained=str(tmp_path / "other.safetensors")), tmp_path / "p")


def test_gan_stage_starts_from_the_psnr_checkpoint(tmp_path: Path, photos: Path) -> None:
    Trainer(_tiny(photos, iters=2), tmp_path / "psnr").run()
    psnr_net, _ = models.load(tmp_path / "psnr" / "models" / "net_g_latest.safetensors")
    cfg = _tiny(photos, iters=1, stage="gan", discriminator="unet", discriminator_args={"num_feat": 8},
                perceptual_weight=1.0, perceptual_random_init=True, gan_weight=5e-3,
                pretrained=str(tmp_path / "psnr" / "models" / "net_g_latest.pth"))
    trainer = Trainer(cfg, tmp_path / "gan")
    for key, t in psnr_net.state_dict().items():
        assert torch.equal(trainer.net_g.state_dict()[key], t)


# ---------------------------------------------------------------------------------------------------------
# After training: the alpha sweep.


def test_alpha_sweep_writes_checkpoints_and_a_table(tmp_path: Path, photos: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    small = {"num_block": 1, "num_feat": 8, "num_grow_ch": 4}
    a, b = models.create("rrdb6", **small), models.create("rrdb6", **small)
    torch.nn.init.normal_(b.conv_last.weight, std=0.1)
    models.save(a, tmp_path / "psnr.safetensors")
    models.save(b, tmp_path / "gan.safetensors")
    code = sweep_main([str(tmp_path / "psnr.safetensors"), str(tmp_path / "gan.safetensors"), "--alphas", "0,0.5,1",
                       "--val", str(photos / "val"), "-o", str(tmp_path / "sweep")])
    assert code == 0
    rows = _csv(tmp_path / "sweep" / "sweep.csv")
    assert [float(r["alpha"]) for r in rows] == [0.0, 0.5, 1.0]
    assert all(float(r["psnr_y"]) > 0 for r in rows)
    half, info = models.load(tmp_path / "sweep" / "alpha_0.50.safetensors")
    assert info.metadata["alpha"] == "0.5"
    expected = models.interpolate(a, b, 0.5)
    assert all(torch.equal(t, expected[k]) for k, t in half.state_dict().items())
    zero, _ = models.load(tmp_path / "sweep" / "alpha_0.00.safetensors")
    assert all(torch.equal(t, a.state_dict()[k]) for k, t in zero.state_dict().items())
    assert "| 0.50 |" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------
# The published recipes.


def test_presets_follow_the_published_recipes() -> None:
    psnr, gan = preset("esrgan-psnr"), preset("esrgan-gan")
    assert (psnr.model, psnr.pixel_loss, psnr.lr_g, psnr.betas, psnr.ema_decay) == ("rrdb23", "l1", 2e-4,
                                                                                   (0.9, 0.99), 0.999)
    assert (psnr.scheduler, psnr.periods, psnr.iters) == ("cosine_restart", [250_000] * 4, 1_000_000)
    assert (gan.perceptual_weight, gan.gan_weight, gan.pixel_weight) == (1.0, 5e-3, 1e-2)
    assert (gan.perceptual_layers, gan.gan_type, gan.discriminator) == ({"conv5_4": 1.0}, "ragan", "vgg128")
    assert (gan.lr_g, gan.lr_d, gan.milestones, gan.gamma) == (1e-4, 1e-4, [50_000, 100_000, 200_000, 300_000], 0.5)
    assert [learning_rate(gan, 1e-4, i) for i in (49_999, 50_000, 300_000)] == [1e-4, 5e-5, 6.25e-6]
    srgan = preset("srgan")
    assert (srgan.model, srgan.pixel_loss) == ("srgan", "mse")
    assert preset("srgan-gan").perceptual_layers == {"relu5_4": 1.0}


def test_unet_gan_settings_are_checked(tmp_path: Path, photos: Path) -> None:
    for overrides, match in ((dict(discriminator="unet"), "discriminator=unet-gan"),
                             (dict(gan_type="ragan"), "unet-hinge"),
                             (dict(cutmix_prob=1.5), "cutmix_prob"),
                             (dict(model="rrdb23x16", scale=4), "scale=16"),
                             (dict(lpips_random_init=False), "alexnet-owt-7be5be79.pth")):
        with pytest.raises(TrainError, match=match):
            cfg = preset("x16-perceptual", data=str(photos / "train"), gt_size=48,
                         **{"lpips_random_init": True, **overrides})
            Trainer(cfg, tmp_path / "run").run()


def test_x16_perceptual_preset_follows_the_paper_and_trains_on_the_cpu(tmp_path: Path, photos: Path) -> None:
    """The ×16 preset's recipe, then a few iterations of it with small random-init networks: pixel loss only
    before gan_start, then LPIPS + U-Net GAN + feature matching + pixel loss, the discriminator with CutMix and
    consistency; every loss finite, a resumable ×16 checkpoint, and validation LPIPS."""
    x16 = preset("x16-perceptual")
    assert (x16.model, x16.scale, x16.gt_size, x16.batch_size) == ("rrdb23x16", 16, 384, 4)
    assert (x16.iters, x16.gan_start, x16.lr_g, x16.lr_d, x16.grad_clip) == (150_000, 75_000, 1e-5, 1e-5, 0.1)
    assert (x16.pixel_loss, x16.lpips_weight, x16.lpips_net, x16.gan_weight, x16.feature_matching_weight) == (
        "huber", 1e-3, "alex", 1e-3, 1.0)
    assert (x16.discriminator, x16.gan_type, x16.cutmix_prob, x16.perceptual_weight) == (
        "unet-gan", "unet-hinge", 0.5, 0.0)
    assert x16.ema_decay > 0

    stage = {"arch": "rrdbnet", "hparams": {"num_block": 1, "num_feat": 8, "num_grow_ch": 4, "scale": 4}}
    data = _write_photos(tmp_path / "data", size=72, count=2)
    val = _write_photos(tmp_path / "val", size=64, count=1)
    cfg = preset("x16-perceptual", data=str(data), val=str(val), gt_size=64, batch_size=2, num_workers=0,
                 iters=5, gan_start=2, log_every=1, val_every=5, save_every=5, lpips_random_init=True,
                 model_args={"stages": [stage, stage]}, discriminator_args={"num_feat": 8}, cutmix_prob=1.0)
    out = Trainer(cfg, tmp_path / "run").run()
    rows = _csv(tmp_path / "run" / "train.csv")
    assert [int(r["iter"]) for r in rows] == [1, 2, 3, 4, 5]
    for r in rows[:2]:  # PSNR pre-training: the pixel loss alone
        assert np.isfinite(float(r["l_pix"])) and r["l_lpips"] == r["l_gan"] == r["l_d"] == ""
    for r in rows[2:]:
        for k in ("l_pix", "l_lpips", "l_gan", "l_fm", "l_d", "l_d_cons"):
            assert np.isfinite(float(r[k])), (k, r)
    val_rows = _csv(tmp_path / "run" / "val.csv")
    assert len(val_rows) == 1 and 0 <= float(val_rows[0]["lpips"])
    net, info = models.load(out)
    assert info.scale == 16 and info.arch == "cascade"


def test_cosine_restart_matches_basicsr() -> None:
    cfg = preset("esrgan-psnr")
    assert learning_rate(cfg, 2e-4, 0) == pytest.approx(2e-4)
    assert learning_rate(cfg, 2e-4, 125_000) == pytest.approx(1e-7 + (2e-4 - 1e-7) * 0.5)
    assert learning_rate(cfg, 2e-4, 250_000) == pytest.approx(2e-4)  # restart
    cfg.restart_weights = [1.0, 0.5, 0.5, 0.5]
    assert learning_rate(cfg, 2e-4, 250_000) == pytest.approx(1e-7 + 0.5 * (2e-4 - 1e-7))
    assert learning_rate(cfg, 2e-4, 10**6) == pytest.approx(1e-7)


def test_config_overrides_and_errors() -> None:
    assert parse_override("milestones=[1,2]") == ("milestones", [1, 2])
    assert parse_override("discriminator=unet") == ("discriminator", "unet")
    with pytest.raises(TrainError, match="KEY=VALUE"):
        parse_override("oops")
    with pytest.raises(ConfigError, match="preset must be one of esrgan-psnr, .*; got 'esrgan'"):
        preset("esrgan")
    with pytest.raises(ConfigError, match="learning_rate is not a configuration field"):
        TrainConfig.from_dict({"learning_rate": 1})
    saved = json.loads(preset("esrgan-gan").to_json())
    assert saved.pop("format") == RUN_FORMAT  # config.json marks a run folder as ours
    assert TrainConfig.from_dict(saved) == preset("esrgan-gan")


def test_ema_update_and_warm_up() -> None:
    assert ema_decay(0.999, 0) == pytest.approx(0.1)
    assert ema_decay(0.999, 90) == pytest.approx(0.91)
    assert ema_decay(0.999, 8989) < 0.999 and ema_decay(0.999, 8990) == 0.999
    net, ema = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        ema.weight.copy_(torch.tensor([3.0, 2.0, 1.0]))
        net.running_mean.fill_(7.0)
    ema_update(ema, net, 0.9)
    torch.testing.assert_close(ema.weight.detach(), torch.tensor([2.8, 2.0, 1.2]))
    torch.testing.assert_close(ema.running_mean, torch.full((3,), 7.0))  # buffers are copied
