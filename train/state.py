"""The training state and the checkpoints: what state/{iter:08d}.state holds and how it is written, read back
and restored (networks, optimizers, gradient scalers, RNG states), the model files beside it, and the EMA
generator's update.

A state file is a dict with the keys `STATE_KEYS`: the iteration, the state_dict of each of `PARTS` (None for a
part the run does not have: no EMA, or the PSNR stage's discriminator), the Python/NumPy/torch/CUDA RNG states and
the number of processes. Together with config.json it is everything --resume needs.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import engine.models as models
from engine.atomic import atomic_write

from .config import TrainConfig, TrainError
from .logs import log
from .rundir import state_files

# The networks, optimizers and gradient scalers a training state holds, in this order.
PARTS = ("net_g", "net_ema", "net_d", "opt_g", "opt_d", "scaler_g", "scaler_d")
STATE_KEYS = frozenset({"iter", *PARTS, "rng", "world_size"})
_OPTIONAL = ("net_ema", "net_d", "opt_d")  # None where the run has none


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through engine.atomic: a temporary beside `path` that a later run recognises, then a rename."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


# ---------------------------------------------------------------------------------------------------------
# Random states


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global RNG states (Python, NumPy, torch, and CUDA's of `device`), as tensors and plain values that
    torch.load(weights_only=True) reads back."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what `rng_state` returned."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


# ---------------------------------------------------------------------------------------------------------
# EMA


def ema_decay(decay: float, it: int) -> float:
    """The EMA decay at iteration `it` (0-based), warmed up as min(decay, (1 + it)/(10 + it)).

    Without the warm-up, 0.999 keeps 0.999^t of the random initialisation: 5% after 3000 iterations, which
    ruins the EMA net of a short run. The warm-up reaches 0.999 at 8991 iterations, a negligible change for
    1M-iteration runs."""
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
# The state file


def training_state(it: int, parts: Mapping[str, Any], device: torch.device, world_size: int) -> dict[str, Any]:
    """The state of iteration `it`; `parts` maps each name of `PARTS` to its module, optimizer or scaler (or None)."""
    return {"iter": it, **{name: (parts[name].state_dict() if parts[name] is not None else None) for name in PARTS},
            "rng": rng_state(device), "world_size": world_size}


def restore(state: dict[str, Any], path: Path, parts: Mapping[str, Any], device: torch.device,
            world_size: int) -> None:
    """Load `state` (read from `path`) into `parts` (as for `training_state`) and the global RNGs.

    Raises:
        TrainError: the state does not fit the run's networks (other settings than the run's own).
    """
    for name in _OPTIONAL:
        if (parts[name] is None) != (state[name] is None):
            raise TrainError(f"the training state {path} and the configuration disagree on {name} (ema_decay, "
                             "stage, discriminator); resume with the run's own settings")
    try:
        for name in PARTS:
            if parts[name] is not None:
                parts[name].load_state_dict(state[name])
        set_rng_state(state["rng"], device)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise TrainError(f"the training state {path} does not fit this configuration ({str(e).splitlines()[0]}); "
                         "resume with the run's own network settings (model, model_args, discriminator)") from None
    if state["world_size"] != world_size:
        log.warning("resuming a run of %d process(es) with %d: the data order differs from an uninterrupted run",
                    state["world_size"], world_size)
    log.info("resumed at iteration %d", state["iter"])


def _check_state(state: Any, it: int) -> None:
    if not isinstance(state, dict) or not STATE_KEYS <= set(state):
        raise ValueError("not a training state of train.run")
    if state["iter"] != it:
        raise ValueError(f"it holds iteration {state['iter']}, not {it}")


def load_state(out: Path) -> tuple[int, Path, dict[str, Any], list[str]]:
    """The newest training state of `out` that loads: (iteration, file, state, warnings). A state that cannot
    be read (truncated, empty, not ours) is passed over for the one before it, with a warning naming both.

    Raises:
        TrainError: no training state of `out` loads.
    """
    bad: list[tuple[Path, str]] = []
    for it, path in reversed(state_files(out)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            _check_state(state, it)
        except Exception as e:  # noqa: BLE001 - whatever fails to load, the file is not a usable state
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
            bad.append((path, type(e).__name__ + (f": {first_line}" if first_line else "")))
            continue
        warnings = [f"training state {p} cannot be read ({why}); resuming from {path} (iteration {it}) instead"
                    for p, why in bad]
        return it, path, state, warnings
    raise TrainError(f"--resume: no training state of {out} can be read: "
                     + "; ".join(f"{p} ({why})" for p, why in bad)
                     + ". Start a new run (with --pretrained models/net_g_N.pth to keep the weights of a checkpoint)")


# ---------------------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(out: Path, it: int, parts: Mapping[str, Any], cfg: TrainConfig, device: torch.device,
                    world_size: int, *, latest: bool = False) -> Path:
    """Write the generator (BasicSR .pth {"params", "params_ema"} and the EMA net, or the net without EMA, as our
    safetensors), the discriminator and, last, the training state, keeping the newest `cfg.keep_states` states.
    `latest` writes the models/*_latest files and no state. Returns the safetensors path."""
    net_g, net_ema, net_d = parts["net_g"], parts["net_ema"], parts["net_d"]
    models_dir = out / "models"
    tag = "latest" if latest else str(it)
    g_sd = net_g.state_dict()
    ema = net_ema if net_ema is not None else net_g
    basicsr = {"params": g_sd, "params_ema": ema.state_dict()} if net_ema is not None else {"params": g_sd}
    atomic_torch_save(basicsr, models_dir / f"net_g_{tag}.pth")
    safetensors_path = models_dir / f"net_g_{tag}.safetensors"
    meta = {"iter": str(it), "preset": cfg.preset, "stage": cfg.stage,
            "weights": "ema" if net_ema is not None else "net_g"}
    models.save(ema, safetensors_path, metadata=meta)
    if net_d is not None:
        atomic_torch_save({"params": net_d.state_dict()}, models_dir / f"net_d_{tag}.pth")
    if not latest:
        atomic_torch_save(training_state(it, parts, device, world_size), out / "state" / f"{it:08d}.state")
        for _, old in state_files(out)[: -cfg.keep_states]:
            old.unlink(missing_ok=True)
    return safetensors_path
