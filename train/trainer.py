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
"""

from __future__ import annotations

import copy
import csv
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import engine.models as models
from engine.atomic import atomic_write
from engine.imageio import write_image
from engine.models.registry import same_network

from .config import ConfigError, TrainConfig, TrainError, learning_rate
from .data import TrainDataset, ValDataset, build_train_loader
from .discriminators import UNetDiscriminatorSN, build_discriminator
from .evaluate import mean, sample_grid, score, upscale
from .losses import (
    PerceptualLoss,
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
from .rundir import check_out, load_state, remove_stale, state_files

log = logging.getLogger("train")

__all__ = ["ConfigError", "Trainer", "TrainError", "state_files"]

_PIXEL_LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss, "huber": F.smooth_l1_loss}  # huber: δ = 1


# ---------------------------------------------------------------------------------------------------------
# Files


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through engine.atomic: a temporary beside `path` that a later run recognises, then a rename."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


class CsvLog:
    """Append-only CSV; on resume, rows logged after the resumed iteration (by a killed run) are dropped."""

    def __init__(self, path: Path, fields: list[str], resume_from: int | None) -> None:
        self.path, self.fields = path, fields
        rows: list[dict[str, str]] = []
        if resume_from is not None and path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["iter"]) <= resume_from]

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                w.writeheader()
                w.writerows(rows)

        atomic_write(path, write)

    def add(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record))


class _Held(logging.Handler):
    """Keeps the records logged before the run folder may be written, for train.log."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def setup_logging(main: bool) -> None:
    """Log to the console at once (rank 0 everything, other ranks warnings only, e.g. unreadable images) and hold
    the records for train.log until `log_to_file`."""
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    console = _TqdmHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    console.setLevel(logging.INFO if main else logging.WARNING)
    log.addHandler(console)
    log.addHandler(_Held())
    log.propagate = False


def log_to_file(out: Path | None) -> None:
    """From now on also log to `out`/train.log (None: other ranks, no file), with the records held so far."""
    held = [h for h in log.handlers if isinstance(h, _Held)]
    for h in held:
        log.removeHandler(h)
    if out is None:
        return
    file = logging.FileHandler(out / "train.log", encoding="utf-8")
    file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for h in held:
        for record in h.records:
            file.handle(record)
    log.addHandler(file)


# ---------------------------------------------------------------------------------------------------------
# Devices, processes, random states


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(cfg: TrainConfig) -> tuple[Dist, torch.device]:
    """Rank and device from torchrun's environment; DDP's process group with gloo on CPU, nccl on GPU."""
    d = Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))
    kind = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise TrainError("device cuda was asked for but torch sees no CUDA device; use --device cpu")
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    elif kind == "cpu":
        device = torch.device("cpu")
    else:
        raise TrainError(f"device must be auto, cpu or cuda, got {cfg.device!r}")
    if d.world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if kind == "cuda" else "gloo")
    return d, device


def rng_state(device: torch.device) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def all_reduce_grads(module: nn.Module, world_size: int) -> None:
    """Average gradients over processes (the discriminator's: it runs twice per step, which DDP forbids)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if world_size == 1 or not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world_size
    for g, reduced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads), strict=True):
        g.copy_(reduced)


# ---------------------------------------------------------------------------------------------------------
# Networks


def build_generator(cfg: TrainConfig) -> models.SRNet:
    try:
        net = models.create(cfg.model, **{**cfg.model_args, "scale": cfg.scale})
    except (TypeError, ValueError) as e:
        raise TrainError(f"model {cfg.model!r} with model_args {cfg.model_args}: {e}") from None
    if net.scale != cfg.scale:  # a cascade's scale is its stages' product, not an argument
        raise TrainError(f"model {cfg.model} upscales ×{net.scale}, but the run is set to scale {cfg.scale}: set "
                         f"scale={net.scale} or choose a ×{cfg.scale} model")
    return net


def load_pretrained(net: models.SRNet, path: str) -> None:
    """Start from a checkpoint in any format engine.models.load accepts (EMA weights preferred)."""
    try:
        loaded, info = models.load(path)
    except (OSError, ValueError) as e:
        raise TrainError(f"--pretrained {path}: {e}") from None
    if not same_network(loaded, net):
        raise TrainError(f"--pretrained {path} is a {info.arch} {info.hparams}, but this run trains a {net.arch} "
                         f"{net.hparams}; pass a checkpoint of the same network or change the model settings")
    net.load_state_dict(loaded.state_dict())
    log.info("initialised the generator from %s (%s%s)", path, info.format,
             f", {info.wrapper}" if info.wrapper else "")


def ema_decay(decay: float, it: int) -> float:
    """The EMA decay at iteration `it` (0-based), warmed up as min(decay, (1 + it)/(10 + it)).

    Without the warm-up, 0.999 keeps 0.999^t of the random initialisation: 5% after 3000 iterations, which
    ruins the EMA net of a short run (measured on the tiny preset at 3000 iterations: raw net 30.00 dB, plain
    EMA 25.47 dB Y-PSNR). The warm-up reaches 0.999 at 8991 iterations, a negligible change for 1M-iteration
    runs."""
    return min(decay, (1 + it) / (10 + it))


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """θ_ema ← decay·θ_ema + (1 − decay)·θ; buffers are copied."""
    ema_params: list[torch.Tensor] = list(ema.parameters())
    net_params = [p.detach() for p in net.parameters()]
    torch._foreach_lerp_(ema_params, net_params, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), net.buffers(), strict=True):
        b_ema.copy_(b)


# ---------------------------------------------------------------------------------------------------------


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
        mode, self.start_iter, state_path = self._on_main(lambda: self._check_out(resume))
        dataset = self._train_dataset()
        self._check_shapes()

        seed_everything(cfg.seed)  # the same on every rank: identical initial weights
        self.net_g = build_generator(cfg).to(self.device)
        if cfg.pretrained and state_path is None:
            load_pretrained(self.net_g, cfg.pretrained)
        self.net_ema = copy.deepcopy(self.net_g).eval().requires_grad_(False) if cfg.ema_decay > 0 else None
        self.net_d = self._discriminator().to(self.device) if cfg.stage == "gan" else None
        self.perceptual = None
        if cfg.perceptual_weight > 0:
            try:
                self.perceptual = PerceptualLoss(
                    cfg.perceptual_layers, criterion=cfg.perceptual_criterion,
                    weights=cfg.vgg19_weights or None, random_init=cfg.perceptual_random_init).to(self.device)
            except (OSError, ValueError) as e:
                raise TrainError(f"the perceptual loss (perceptual_layers {cfg.perceptual_layers}, --vgg19-weights "
                                 f"{cfg.vgg19_weights or 'none'}): {e}") from None
            if cfg.perceptual_random_init and self.dist.main:
                log.warning("perceptual loss on a RANDOMLY INITIALISED VGG19 (--perceptual-random-init): for "
                            "tests only, the results are not a perceptual-loss training")
        self.lpips = None
        if cfg.lpips_weight > 0 or cfg.lpips_backbone_weights:
            from .lpips import LPIPS

            try:
                self.lpips = LPIPS(cfg.lpips_net, backbone_weights=cfg.lpips_backbone_weights or None,
                                   lin_weights=cfg.lpips_lin_weights or None,
                                   random_init=cfg.lpips_random_init).to(self.device)
            except (FileNotFoundError, ValueError) as e:
                raise TrainError(f"the LPIPS loss/metric (lpips_weight={cfg.lpips_weight}): {e}\nPass them with "
                                 "--set lpips_backbone_weights=PATH --set lpips_lin_weights=PATH") from None
            if cfg.lpips_random_init and self.dist.main:
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
            self._restore(state, Path(state_path))
        if cfg.channels_last:
            for net in (self.net_g, self.net_ema, self.net_d):
                if net is not None:
                    net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

        self.g_train: nn.Module = self.net_g
        if self.dist.world_size > 1:
            self.g_train = DistributedDataParallel(
                self.net_g, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            self.g_train = torch.compile(self.g_train)  # type: ignore[assignment]
        self.loader = build_train_loader(
            dataset, batch_size=cfg.batch_size, seed=cfg.seed, num_workers=cfg.num_workers, rank=self.dist.rank,
            world_size=self.dist.world_size, start_batch=self.start_iter, pin_memory=self.device.type == "cuda")

        self.val: ValDataset | None = None
        self._on_main(lambda: self._write_out(mode))  # the first write into the run folder
        if self.dist.world_size > 1:
            dist.barrier()
        log_to_file(self.out if self.dist.main else None)
        resumed = self.start_iter if resume else None
        self.train_csv = self.val_csv = None
        if self.dist.main:
            self.train_csv = CsvLog(self.out / "train.csv",
                                    ["iter", "lr_g", "l_pix", "l_percep", "l_lpips", "l_gan", "l_fm", "l_d",
                                     "l_d_cons", "iters_per_s"], resumed)
            self.val_csv = CsvLog(self.out / "val.csv", ["iter", "psnr_y", "ssim_y", "lpips", "images"], resumed)
        self.tensorboard = self._tensorboard() if self.dist.main else None
        log.info("%s %s stage: %s ×%d, %d training images, batch %d × %d process(es), %s, amp %s, iterations "
                 "%d → %d", cfg.preset or "custom", cfg.stage, cfg.model, cfg.scale, len(dataset), cfg.batch_size,
                 self.dist.world_size, self.device, cfg.amp, self.start_iter, cfg.iters)

    # -----------------------------------------------------------------------------------------------------
    # Checks before anything is written, then the run folder

    def _on_main(self, fn: Callable[[], Any]) -> Any:
        """`fn()` on rank 0; its result, or its TrainError, on every rank (so that no rank waits for a failed
        one). The result must be small: it is pickled."""
        result, error = None, None
        if self.dist.main:
            try:
                result = fn()
            except TrainError as e:
                error = str(e)
        if self.dist.world_size > 1:
            box = [(result, error)]
            dist.broadcast_object_list(box, src=0)
            result, error = box[0]
        if error is not None:
            raise TrainError(error)
        return result

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

    def _discriminator(self) -> nn.Module:
        cfg = self.cfg
        try:
            return build_discriminator(cfg.discriminator, **cfg.discriminator_args)
        except (TypeError, ValueError) as e:
            raise TrainError(f"discriminator {cfg.discriminator} with discriminator_args "
                             f"{cfg.discriminator_args}: {e}") from None

    def _check_shapes(self) -> None:
        """The networks take gt_size crops: checked on the meta device (no memory, no random draws)."""
        cfg = self.cfg
        lr_size = cfg.gt_size // cfg.scale
        with torch.device("meta"), torch.no_grad():
            net_g = build_generator(cfg)
            if lr_size % net_g.input_multiple:
                raise ConfigError("gt_size", f"must be a multiple of {cfg.scale * net_g.input_multiple} for model "
                                             f"{cfg.model} (its LR input, gt_size/scale, a multiple of "
                                             f"{net_g.input_multiple}), got {cfg.gt_size}")
            if cfg.stage != "gan":
                return
            net_d = self._discriminator().eval()
            x = torch.zeros(1, 3, cfg.gt_size, cfg.gt_size)
            try:
                if isinstance(net_d, UNetDiscriminatorSN) and net_d.linear_enc is not None:
                    net_d.forward_all(x)
                else:
                    net_d(x)
            except (RuntimeError, ValueError) as e:
                raise ConfigError("gt_size", f"{cfg.gt_size} does not fit discriminator {cfg.discriminator}: "
                                             f"{str(e).splitlines()[0]}") from None

    def _write_out(self, mode: str) -> None:
        """Rank 0: the validation images, then the run folder: our stale temporaries removed, config.json."""
        cfg = self.cfg
        if cfg.val:
            try:
                self.val = ValDataset(cfg.val, scale=cfg.scale, lr_dir=cfg.val_lr or None)
            except (OSError, ValueError) as e:
                where = f"--val {cfg.val}" + (f" with --val-lr {cfg.val_lr}" if cfg.val_lr else "")
                raise TrainError(f"{where}: {e}") from None
        created = not self.out.exists()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            removed = remove_stale(self.out) if mode != "new" else []
            # a new run takes config.json exclusively: of two runs started at once in one folder, one is refused
            atomic_write(self.out / "config.json", lambda tmp: Path(tmp).write_text(cfg.to_json(), encoding="utf-8"),
                         overwrite=mode != "new")
        except FileExistsError:
            raise TrainError(f"another run started in {self.out} at the same moment; choose another --out") from None
        except OSError as e:
            if created:
                with suppress(OSError):
                    self.out.rmdir()
            raise TrainError(f"cannot write the run folder {self.out}: {e.strerror or e}; choose a folder you can "
                             "write to for --out") from None
        for p in removed:
            log.info("removed %s, left by a run killed while writing it", p)
        if mode == "restart":
            log.info("starting %s again: the run there stopped before its first checkpoint", self.out)

    def _check_config(self) -> None:
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

    def _tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("TensorBoard is not installed (pip install tensorboard): logging to CSV only")
            return None
        return SummaryWriter(str(self.out / "tb"), purge_step=self.start_iter or None)

    def _autocast(self) -> AbstractContextManager[Any]:
        if self.cfg.amp == "none":
            return nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _state(self, it: int) -> dict[str, Any]:
        return {
            "iter": it,
            "net_g": self.net_g.state_dict(),
            "net_ema": self.net_ema.state_dict() if self.net_ema is not None else None,
            "net_d": self.net_d.state_dict() if self.net_d is not None else None,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict() if self.opt_d is not None else None,
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "rng": rng_state(self.device),
            "world_size": self.dist.world_size,
        }

    def _restore(self, state: dict[str, Any], path: Path) -> None:
        for name, target in (("net_ema", self.net_ema), ("net_d", self.net_d), ("opt_d", self.opt_d)):
            if (target is None) != (state[name] is None):
                raise TrainError(f"the training state {path} and the configuration disagree on {name} (ema_decay, "
                                 "stage, discriminator); resume with the run's own settings")
        try:
            self.net_g.load_state_dict(state["net_g"])
            for name, target in (("net_ema", self.net_ema), ("net_d", self.net_d), ("opt_d", self.opt_d)):
                if target is not None:
                    target.load_state_dict(state[name])
            self.opt_g.load_state_dict(state["opt_g"])
            self.scaler_g.load_state_dict(state["scaler_g"])
            self.scaler_d.load_state_dict(state["scaler_d"])
            set_rng_state(state["rng"], self.device)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise TrainError(f"the training state {path} does not fit this configuration ({str(e).splitlines()[0]}); "
                             "resume with the run's own network settings (model, model_args, discriminator)") from None
        if state["world_size"] != self.dist.world_size:
            log.warning("resuming a run of %d process(es) with %d: the data order differs from an uninterrupted run",
                        state["world_size"], self.dist.world_size)
        log.info("resumed at iteration %d", state["iter"])

    @contextmanager
    def _writing(self, what: str, it: int) -> Iterator[None]:
        """A failed write (a full disk, a folder gone) stops the run with a message; the last state is intact
        (every file is written under a temporary name, which is removed on failure, and renamed)."""
        try:
            yield
        except OSError as e:
            states = state_files(self.out)
            then = (f"continue with --resume, which starts from {states[-1][1]}" if states else
                    "start the run again (it has no checkpoint yet)")
            raise TrainError(f"writing {what} of iteration {it} in {self.out} failed: {e.strerror or e}. The run "
                             f"stopped; free space (or fix the folder), then {then}") from None

    def save(self, it: int, *, latest: bool = False) -> Path:
        """Write the generator (BasicSR .pth and our safetensors), the discriminator and, last, the state."""
        with self._writing("the checkpoint", it):
            return self._save(it, latest=latest)

    def _save(self, it: int, *, latest: bool) -> Path:
        models_dir = self.out / "models"
        tag = "latest" if latest else str(it)
        g_sd = self.net_g.state_dict()
        ema = self.net_ema if self.net_ema is not None else self.net_g
        basicsr = {"params": g_sd, "params_ema": ema.state_dict()} if self.net_ema is not None else {"params": g_sd}
        atomic_torch_save(basicsr, models_dir / f"net_g_{tag}.pth")
        safetensors_path = models_dir / f"net_g_{tag}.safetensors"
        meta = {"iter": str(it), "preset": self.cfg.preset, "stage": self.cfg.stage,
                "weights": "ema" if self.net_ema is not None else "net_g"}
        models.save(ema, safetensors_path, metadata=meta)
        if self.net_d is not None:
            atomic_torch_save({"params": self.net_d.state_dict()}, models_dir / f"net_d_{tag}.pth")
        if not latest:
            atomic_torch_save(self._state(it), self.out / "state" / f"{it:08d}.state")
            for _, old in state_files(self.out)[: -self.cfg.keep_states]:
                old.unlink(missing_ok=True)
        return safetensors_path

    def validate(self, it: int) -> tuple[float, float] | None:
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
            from .lpips import lpips_distance

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
                        with self._writing("train.csv", it):
                            self.train_csv.add({"iter": it, "lr_g": lr_g, **means, "iters_per_s": rate})
                        if self.tensorboard is not None:
                            for k, v in means.items():
                                self.tensorboard.add_scalar(f"train/{k}", v, it)
                    window, t0 = {}, time.perf_counter()
                if self.dist.main and (it % cfg.val_every == 0 or it == cfg.iters):
                    with self._writing("the validation results", it):
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
            if self.dist.world_size > 1 and dist.is_initialized():
                if finished:  # after a failure the other ranks are not at the barrier: do not wait for them
                    dist.barrier()
                dist.destroy_process_group()
        return final
