"""The training loop: PSNR and GAN stages, EMA, mixed precision, atomic checkpoints, exact resume, DDP.

A run directory holds:

    config.json                  the full configuration (a run resumes from it alone)
    train.log, train.csv, val.csv  text log, losses every log_every, validation PSNR/SSIM (Y, crop = scale)
    models/net_g_{iter}.pth      generator, BasicSR-compatible: {"params": …, "params_ema": …}
    models/net_g_{iter}.safetensors  the EMA generator (or the generator without EMA) in our format
    models/net_d_{iter}.pth      discriminator (GAN stage)
    models/net_g_latest.*        the final generator
    state/{iter:08d}.state       everything --resume needs: nets, EMA, optimizers, scalers, RNG states, iteration
    samples/iter_{iter:08d}.png  LR | output | HR of the first validation images

Every file is written to a temporary name and renamed, and the training state is written last: a run killed at
any moment (even SIGKILL) resumes from its last complete state with nothing else lost; a newest state that cannot
be read (a damaged disk) is passed over for the one before it. A run starts only in a new or empty folder or in
a run of ours (train/rundir.py), and every setting and the data are checked before anything is written. The
learning rate is a pure function of the iteration and every training sample a pure function of (seed, rank,
position), so a resumed run continues exactly as an uninterrupted one would.

Beside this module: train/state.py (the training state, checkpoints, RNG states, EMA), train/distributed.py
(ranks, devices, the process group), train/logs.py (console, train.log, CSV, TensorBoard), train/nets.py (the
networks built from the configuration), train/rundir.py (the run folder).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from engine.imageio import write_image

from .config import TrainConfig, TrainError, learning_rate
from .data import TrainDataset, ValDataset
from .discriminators import UNetDiscriminatorSN
from .distributed import all_reduce_grads, barrier, data_parallel, on_main, setup_distributed, shutdown
from .evaluate import mean, sample_grid, score, upscale
from .logs import CsvLog, log, log_to_file, open_tensorboard, setup_logging
from .losses import (
    cutmix,
    cutmix_consistency_loss,
    cutmix_mask,
    feature_matching_loss,
    ragan_d_loss,
    ragan_g_loss,
    unet_d_loss,
    unet_d_mix_loss,
    unet_g_loss,
    vanilla_d_loss,
    vanilla_g_loss,
)
from .lpips import lpips_distance
from .nets import build_generator, check_shapes, discriminator, load_pretrained, lpips_model, perceptual_loss
from .rundir import check_out, prepare, writing
from .sampler import build_train_loader
from .state import ema_decay, ema_update, load_state, restore, save_checkpoint, seed_everything

__all__ = ["Trainer"]

_PIXEL_LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss, "huber": F.smooth_l1_loss}  # huber: δ = 1
_TRAIN_CSV = ["iter", "lr_g", "l_pix", "l_percep", "l_lpips", "l_gan", "l_fm", "l_d", "l_d_cons", "iters_per_s"]
_VAL_CSV = ["iter", "psnr_y", "ssim_y", "lpips", "images"]


class Trainer:
    """One training run (a stage). `Trainer(cfg, out).run()`; with `resume=True` it continues the run in `out`."""

    def __init__(self, cfg: TrainConfig, out: str | Path, *, resume: bool = False) -> None:
        self.cfg, self.out = cfg, Path(out)
        self._check_config()
        self.dist, self.device = setup_distributed(cfg)
        setup_logging(self.dist.main)
        self._warned: set[str] = set()
        self._state_loaded: dict[str, Any] | None = None
        # Everything is checked before anything is written: the run folder, the data, the networks' settings.
        mode, self.start_iter, state_path = on_main(self.dist, lambda: self._check_out(resume))
        dataset = self._train_dataset()
        check_shapes(cfg)

        seed_everything(cfg.seed)  # the same on every rank: identical initial weights
        self.net_g = build_generator(cfg).to(self.device)
        if cfg.pretrained and state_path is None:
            load_pretrained(self.net_g, cfg.pretrained)
        self.net_ema = copy.deepcopy(self.net_g).eval().requires_grad_(False) if cfg.ema_decay > 0 else None
        self.net_d = discriminator(cfg).to(self.device) if cfg.stage == "gan" else None
        self.perceptual = perceptual_loss(cfg, self.device)
        if self.perceptual is not None and cfg.perceptual_random_init and self.dist.main:
            log.warning("perceptual loss on a RANDOMLY INITIALISED VGG19 (--perceptual-random-init): for "
                        "tests only, the results are not a perceptual-loss training")
        self.lpips = lpips_model(cfg, self.device)
        if self.lpips is not None and cfg.lpips_random_init and self.dist.main:
            log.warning("LPIPS with RANDOMLY INITIALISED networks (lpips_random_init): for tests only")
        self.opt_g = torch.optim.Adam(self.net_g.parameters(), lr=cfg.lr_g, betas=cfg.betas)
        self.opt_d = (torch.optim.Adam(self.net_d.parameters(), lr=cfg.lr_d, betas=cfg.betas)
                      if self.net_d is not None else None)
        fp16 = cfg.amp == "fp16"
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(self.device.type, enabled=fp16)
        if state_path is not None:
            state = self._state_loaded or torch.load(state_path, map_location="cpu", weights_only=True)
            self._state_loaded = None
            restore(state, Path(state_path), self._parts(), self.device, self.dist.world_size)
        if cfg.channels_last:
            for net in (self.net_g, self.net_ema, self.net_d):
                if net is not None:
                    net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

        self.g_train: nn.Module = data_parallel(self.net_g, self.dist, self.device)
        if cfg.compile:
            self.g_train = torch.compile(self.g_train)  # type: ignore[assignment]
        self.loader = build_train_loader(
            dataset, batch_size=cfg.batch_size, seed=cfg.seed, num_workers=cfg.num_workers, rank=self.dist.rank,
            world_size=self.dist.world_size, start_batch=self.start_iter, pin_memory=self.device.type == "cuda")

        self.val: ValDataset | None = None
        on_main(self.dist, lambda: self._write_out(mode))  # the first write into the run folder
        barrier(self.dist)
        log_to_file(self.out if self.dist.main else None)
        resumed = self.start_iter if resume else None
        self.train_csv = self.val_csv = None
        if self.dist.main:
            self.train_csv = CsvLog(self.out / "train.csv", _TRAIN_CSV, resumed)
            self.val_csv = CsvLog(self.out / "val.csv", _VAL_CSV, resumed)
        self.tensorboard = open_tensorboard(self.out, self.start_iter) if self.dist.main else None
        log.info("%s %s stage: %s ×%d, %d training images, batch %d × %d process(es), %s, amp %s, iterations "
                 "%d → %d", cfg.preset or "custom", cfg.stage, cfg.model, cfg.scale, len(dataset), cfg.batch_size,
                 self.dist.world_size, self.device, cfg.amp, self.start_iter, cfg.iters)

    # -----------------------------------------------------------------------------------------------------
    # Checks before anything is written, then the run folder

    def _check_out(self, resume: bool) -> tuple[str, int, str | None]:
        """Rank 0: (mode, first iteration, state file to resume from) for the run folder; the state is kept."""
        mode = check_out(self.out, resume=resume).mode
        if mode != "resume":
            return mode, 0, None
        it, path, self._state_loaded, warnings = load_state(self.out)
        for w in warnings:
            log.warning(w)
        return mode, it, str(path)

    def _train_dataset(self) -> TrainDataset:
        """The training images, checked by finding the first usable one (each rank: they read the same files)."""
        cfg = self.cfg
        where = f"--data {cfg.data}" + (f" with --data-lr {cfg.data_lr}" if cfg.data_lr else "")
        try:
            dataset = TrainDataset(cfg.data, scale=cfg.scale, gt_size=cfg.gt_size, lr_dir=cfg.data_lr or None,
                                   use_flip=cfg.use_flip, use_rot=cfg.use_rot)
            self._warn_skipped(dataset[(0, 0)]["skipped"])
        except (OSError, ValueError) as e:
            raise TrainError(f"{where}: {e}") from None
        return dataset

    def _warn_skipped(self, skipped: str) -> None:
        """Log each reason for a skipped training image once, whichever process found it."""
        for why in skipped.splitlines():
            if why not in self._warned:
                self._warned.add(why)
                log.warning("%s; skipping it", why)

    def _write_out(self, mode: str) -> None:
        """Rank 0: the validation images, then the run folder: our stale temporaries removed, config.json."""
        cfg = self.cfg
        if cfg.val:
            try:
                self.val = ValDataset(cfg.val, scale=cfg.scale, lr_dir=cfg.val_lr or None)
            except (OSError, ValueError) as e:
                where = f"--val {cfg.val}" + (f" with --val-lr {cfg.val_lr}" if cfg.val_lr else "")
                raise TrainError(f"{where}: {e}") from None
        for p in prepare(self.out, mode, cfg.to_json()):
            log.info("removed %s, left by a run killed while writing it", p)
        if mode == "restart":
            log.info("starting %s again: the run there stopped before its first checkpoint", self.out)

    def _check_config(self) -> None:
        """The configuration as a whole (fields, data and --out, the networks' and losses' combinations, the
        device for fp16) before anything else; a TrainError says what to change."""
        cfg = self.cfg
        cfg.check()
        if not cfg.data:
            raise TrainError("no training data: pass --data HR_DIR")
        out = self.out.resolve()
        for flag, folder in (("--data", cfg.data), ("--data-lr", cfg.data_lr), ("--val", cfg.val),
                             ("--val-lr", cfg.val_lr)):
            if folder and out.is_relative_to(Path(folder).resolve()):
                raise TrainError(f"--out {self.out} is inside {flag} {folder}: the run's images (samples/) would be "
                                 f"read as {flag} images; choose an --out outside it")
        if cfg.stage == "gan" and not cfg.discriminator:
            raise TrainError("the gan stage needs a discriminator (--set discriminator=vgg128|unet|unet-gan|srgan)")
        if cfg.amp == "fp16" and not (cfg.device != "cpu" and torch.cuda.is_available()):
            raise TrainError("--amp fp16 needs a GPU (it trains with a gradient scaler); use --amp bf16 on the CPU")
        unet_gan = cfg.gan_type == "unet-hinge" or cfg.feature_matching_weight > 0 or cfg.cutmix_prob > 0
        if cfg.stage == "gan" and unet_gan and cfg.discriminator != "unet-gan":
            raise TrainError("unet-hinge, feature matching and CutMix need the U-Net GAN discriminator's two heads and "
                             f"features: --set discriminator=unet-gan (got {cfg.discriminator!r})")
        if cfg.discriminator == "unet-gan" and cfg.gan_type != "unet-hinge":
            raise TrainError("discriminator unet-gan trains with gan_type=unet-hinge (its encoder and decoder terms)")
        if cfg.lpips_random_init and (cfg.lpips_backbone_weights or cfg.lpips_lin_weights):
            raise TrainError("lpips_random_init excludes lpips_backbone_weights and lpips_lin_weights; pass one")
        if cfg.vgg19_weights and cfg.perceptual_random_init:
            raise TrainError("--vgg19-weights and --perceptual-random-init exclude each other; pass one")
        if cfg.perceptual_weight > 0 and not cfg.vgg19_weights and not cfg.perceptual_random_init:
            raise TrainError(
                "the perceptual loss needs VGG19 ImageNet weights in torchvision's layout: the file "
                "vgg19-dcbb9e9d.pth (torch.save(torchvision.models.vgg19(weights='IMAGENET1K_V1').state_dict(), "
                "PATH)). Pass --vgg19-weights PATH (--perceptual-random-init exists for tests only)")

    # -----------------------------------------------------------------------------------------------------
    # Checkpoints and validation (rank 0)

    def _parts(self) -> dict[str, Any]:
        """The networks, optimizers and gradient scalers a training state holds (train.state.PARTS)."""
        return {"net_g": self.net_g, "net_ema": self.net_ema, "net_d": self.net_d, "opt_g": self.opt_g,
                "opt_d": self.opt_d, "scaler_g": self.scaler_g, "scaler_d": self.scaler_d}

    def save(self, it: int, *, latest: bool = False) -> Path:
        """Write the generator (BasicSR .pth and our safetensors), the discriminator and, last, the state
        (train.state.save_checkpoint); returns the generator's safetensors path."""
        with writing(self.out, "the checkpoint", it):
            return save_checkpoint(self.out, it, self._parts(), self.cfg, self.device, self.dist.world_size,
                                   latest=latest)

    def validate(self, it: int) -> tuple[float, float] | None:
        """Score the EMA generator (the generator without EMA) on the validation images: val.csv, TensorBoard,
        samples/iter_{it:08d}.png and the log; returns (Y-PSNR dB, Y-SSIM), or None without validation images."""
        if self.val is None or len(self.val) == 0:
            return None
        net = self.net_ema if self.net_ema is not None else self.net_g
        samples = []
        for i in range(len(self.val)):
            try:
                samples.append(self.val[i])
            except (OSError, ValueError) as e:  # changed since the run started: one file does not stop a run
                log.warning("iteration %d: validation image %s skipped: %s", it, self.val.names[i], e)
        if not samples:
            log.warning("iteration %d: no validation image can be read any more; no validation", it)
            return None
        was_training = net.training
        net.eval()  # each image is upscaled once, in eval mode, for the scores, LPIPS and the sample grid
        try:
            outs = [upscale(net, s["lr"], self.device) for s in samples]
        finally:
            net.train(was_training)
        scores = [score(s["name"], out, s["hr"], self.cfg.scale) for s, out in zip(samples, outs, strict=True)]
        psnr_y, ssim_y = mean(scores)
        row: dict[str, Any] = {"iter": it, "psnr_y": psnr_y, "ssim_y": ssim_y, "images": len(scores)}
        if self.lpips is not None:  # LPIPS of the EMA net's outputs, when its weights are given
            row["lpips"] = float(np.mean([lpips_distance(self.lpips, out.clamp(0, 1), s["hr"],
                                                         crop_border=self.cfg.scale)
                                          for s, out in zip(samples, outs, strict=True)]))
        assert self.val_csv is not None
        self.val_csv.add(row)
        if self.tensorboard is not None:
            for key in ("psnr_y", "ssim_y", "lpips"):
                if key in row:
                    self.tensorboard.add_scalar(f"val/{key}", row[key], it)
        rows = [(s["lr"], out, s["hr"]) for s, out in list(zip(samples, outs, strict=True))[: self.cfg.sample_count]]
        if rows:
            write_image(self.out / "samples" / f"iter_{it:08d}.png", sample_grid(rows))
        log.info("iter %d: validation Y-PSNR %.3f dB, Y-SSIM %.4f on %d images", it, psnr_y, ssim_y, len(scores))
        return psnr_y, ssim_y

    # -----------------------------------------------------------------------------------------------------
    # The training step and the loop

    def _autocast(self) -> AbstractContextManager[Any]:
        if self.cfg.amp == "none":
            return nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def step(self, lr: torch.Tensor, hr: torch.Tensor, it: int = 0) -> dict[str, float]:
        """Iteration `it` (0-based): one generator update, one discriminator update in the GAN stage (from
        `gan_start` on), the EMA update; returns the loss values."""
        cfg = self.cfg
        losses: dict[str, float] = {}
        d_net = self.net_d if it >= cfg.gan_start else None  # before gan_start: PSNR pre-training, pixel loss only
        unet = cfg.gan_type == "unet-hinge"
        if self.net_d is not None:
            self.net_d.requires_grad_(False)
        with self._autocast():
            out = self.g_train(lr)
            total = out.new_zeros((), dtype=torch.float32)
            if cfg.pixel_weight > 0:
                l_pix = cfg.pixel_weight * _PIXEL_LOSSES[cfg.pixel_loss](out.float(), hr.float())
                total = total + l_pix
                losses["l_pix"] = l_pix.item()
            if self.perceptual is not None and (cfg.stage == "psnr" or d_net is not None):
                l_percep = cfg.perceptual_weight * self.perceptual(out, hr)
                total = total + l_percep
                losses["l_percep"] = l_percep.item()
            if self.lpips is not None and cfg.lpips_weight > 0 and (cfg.stage == "psnr" or d_net is not None):
                l_lpips = cfg.lpips_weight * self.lpips(out, hr)
                total = total + l_lpips
                losses["l_lpips"] = l_lpips.item()
            if d_net is not None and unet:
                assert isinstance(d_net, UNetDiscriminatorSN)
                fake = d_net.forward_all(out)
                l_gan = cfg.gan_weight * unet_g_loss(fake)
                total = total + l_gan
                losses["l_gan"] = l_gan.item()
                if cfg.feature_matching_weight > 0:
                    with torch.no_grad():
                        real_features = d_net.forward_all(hr).features
                    l_fm = cfg.feature_matching_weight * feature_matching_loss(
                        fake.features, real_features, cfg.feature_matching_layers or None)
                    total = total + l_fm
                    losses["l_fm"] = l_fm.item()
            elif d_net is not None:
                fake_logits = d_net(out).float()
                if cfg.gan_type == "ragan":
                    real_logits = d_net(hr).detach().float()
                    l_gan = cfg.gan_weight * ragan_g_loss(real_logits, fake_logits)
                else:
                    l_gan = cfg.gan_weight * vanilla_g_loss(fake_logits)
                total = total + l_gan
                losses["l_gan"] = l_gan.item()
        self._update(self.net_g, self.opt_g, self.scaler_g, total)

        if d_net is not None:
            assert self.opt_d is not None
            d_net.requires_grad_(True)
            with self._autocast():
                if unet:
                    assert isinstance(d_net, UNetDiscriminatorSN)
                    l_d, l_cons = self._unet_d_loss(d_net, hr, out.detach(), it)
                    if l_cons is not None:
                        losses["l_d_cons"] = l_cons.item()
                else:
                    real_logits = d_net(hr).float()
                    fake_logits = d_net(out.detach()).float()
                    loss_d = ragan_d_loss if cfg.gan_type == "ragan" else vanilla_d_loss
                    l_d = loss_d(real_logits, fake_logits)
            self._update(d_net, self.opt_d, self.scaler_d, l_d, reduce_grads=True)
            losses["l_d"] = l_d.item()

        if self.net_ema is not None:
            ema_update(self.net_ema, self.net_g, ema_decay(cfg.ema_decay, it))
        return losses

    def _unet_d_loss(self, d_net: UNetDiscriminatorSN, hr: torch.Tensor, fake_images: torch.Tensor,
                     it: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The U-Net discriminator's hinge loss on real and fake images and, on a `cutmix_prob` share of the steps,
        on a CutMix of the two with the consistency term (U-Net GAN). The draw is a pure function of (seed, rank,
        iteration), so a resumed run makes the same draws."""
        cfg = self.cfg
        real, fake = d_net.forward_all(hr), d_net.forward_all(fake_images)
        l_d = unet_d_loss(real, fake)
        g = torch.Generator().manual_seed(((cfg.seed * 1_000_003 + self.dist.rank) * 1_000_003 + it) % 2**63)
        if cfg.cutmix_prob <= 0 or float(torch.rand(1, generator=g)) >= cfg.cutmix_prob:
            return l_d, None
        n, _, h, w = hr.shape
        mask = cutmix_mask(n, h, w, generator=g, device=hr.device).to(hr.dtype)
        mixed = d_net.forward_all(cutmix(hr, fake_images, mask))
        l_cons = cfg.consistency_weight * cutmix_consistency_loss(mixed.decoder, real.decoder, fake.decoder, mask)
        return l_d + unet_d_mix_loss(mixed, mask) + l_cons, l_cons

    def _update(self, net: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loss: torch.Tensor,
                *, reduce_grads: bool = False) -> None:
        """Backward, (for the discriminator) the gradient average over processes, clipping, the optimizer step."""
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if reduce_grads:
            all_reduce_grads(net, self.dist.world_size)
        if self.cfg.grad_clip > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), self.cfg.grad_clip)
        scaler.step(opt)
        scaler.update()

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        memory = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        for batch in self.loader:
            for skipped in batch["skipped"]:
                self._warn_skipped(skipped)
            yield (batch["lr"].to(self.device, non_blocking=True, memory_format=memory),
                   batch["hr"].to(self.device, non_blocking=True, memory_format=memory))

    def run(self) -> Path:
        """Train to cfg.iters; returns the final generator's safetensors path (rank 0's files)."""
        cfg = self.cfg
        it = self.start_iter
        final = self.out / "models" / "net_g_latest.safetensors"
        self.net_g.train()
        if self.net_d is not None:
            self.net_d.train()
        bar = tqdm(total=cfg.iters, initial=it, disable=not self.dist.main, dynamic_ncols=True, unit="it")
        window: dict[str, list[float]] = {}
        t0 = time.perf_counter()
        batches = self._batches()
        finished = False
        try:
            while it < cfg.iters:
                lr_g = learning_rate(cfg, cfg.lr_g, it)
                for group in self.opt_g.param_groups:
                    group["lr"] = lr_g
                if self.opt_d is not None:
                    for group in self.opt_d.param_groups:
                        group["lr"] = learning_rate(cfg, cfg.lr_d, it)
                lr_batch, hr_batch = next(batches)
                losses = self.step(lr_batch, hr_batch, it)
                if not all(np.isfinite(v) for v in losses.values()):
                    raise TrainError(f"iteration {it + 1}: a loss is not finite {losses}; lower the learning rate "
                                     "or disable --amp fp16")
                it += 1
                bar.update(1)
                for k, v in losses.items():
                    window.setdefault(k, []).append(v)
                if it % cfg.log_every == 0 or it == cfg.iters:
                    rate = len(next(iter(window.values()), [])) / max(time.perf_counter() - t0, 1e-9)
                    means = {k: float(np.mean(v)) for k, v in window.items()}
                    bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()} | {"it/s": f"{rate:.2f}"})
                    if self.dist.main:
                        assert self.train_csv is not None
                        with writing(self.out, "train.csv", it):
                            self.train_csv.add({"iter": it, "lr_g": lr_g, **means, "iters_per_s": rate})
                        if self.tensorboard is not None:
                            for k, v in means.items():
                                self.tensorboard.add_scalar(f"train/{k}", v, it)
                    window, t0 = {}, time.perf_counter()
                if self.dist.main and (it % cfg.val_every == 0 or it == cfg.iters):
                    with writing(self.out, "the validation results", it):
                        self.validate(it)
                if self.dist.main and (it % cfg.save_every == 0 or it == cfg.iters):
                    self.save(it)
            if self.dist.main:
                if self.start_iter >= cfg.iters:
                    log.info("the run is already complete at iteration %d (--iters %d)", it, cfg.iters)
                final = self.save(it, latest=True)
                log.info("done: %s", final)
            finished = True
        finally:
            bar.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
            shutdown(self.dist, wait=finished)
        return final
