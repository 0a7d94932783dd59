"""`python bench/ort_cpu.py`: ONNX Runtime session options against PyTorch CPU eager, on the same input, in one run.

For each network (the shipped default model, rrdb6 and rrdb23 with random weights) and one batch of tiles, it times
PyTorch eager fp32 (`torch.inference_mode`) and ONNX Runtime sessions with each graph optimization level and with
intra-op spinning on and off, then, with the chosen options, the fp16 graph and the INT8 Q/DQ graph (mse, first and
last conv in fp32), and reports each as a ratio to PyTorch (>1: ONNX Runtime is faster). The times are
the best of `--repeat` runs after one warm-up. Outputs are checked against PyTorch (max abs difference).
Writes bench/results/ort_cpu.json; `engine.backends.ort.session_options` defaults are the best row here.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine import models  # noqa: E402
from engine.atomic import atomic_write  # noqa: E402
from engine.backends.ort import session_options  # noqa: E402
from export.onnx import export_onnx  # noqa: E402
from export.quantize import quantize  # noqa: E402


def photo_tiles(batch: int, tile: int) -> np.ndarray:
    """(batch, 3, tile, tile) float32: chelsea resized to the tile (INT8 ranges are calibrated on photos, so the
    INT8 rows' difference from PyTorch is only meaningful on photo content; uniform noise lies outside them)."""
    import cv2
    import skimage.data

    tile_rgb = cv2.resize(skimage.data.chelsea(), (tile, tile), interpolation=cv2.INTER_AREA)
    return np.repeat((tile_rgb.transpose(2, 0, 1)[None] / 255).astype(np.float32), batch, axis=0)


def calibration_photos() -> list[np.ndarray]:
    """Two of the default model's training photos at ¼ size (INT8 speed does not depend on them)."""
    import skimage.data

    return [np.ascontiguousarray(getattr(skimage.data, n)()[::4, ::4, :3]) for n in ("astronaut", "retina")]


def best_of(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tile", type=int, default=128, help="tile side in input pixels (default: 128)")
    p.add_argument("--batch", type=int, default=1, help="tiles per call (default: 1)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per row, best kept (default: 3)")
    p.add_argument("--models", default="tiny_x4,rrdb6,rrdb23", help="default: tiny_x4,rrdb6,rrdb23")
    args = p.parse_args(argv)

    rows = []
    x = photo_tiles(args.batch, args.tile)
    for name in args.models.split(","):
        torch.manual_seed(0)
        net = (models.load(REPO / "weights" / f"{name}.safetensors")[0] if name == "tiny_x4"
               else models.create(name)).eval()
        data = export_onnx(net).SerializeToString()
        with torch.inference_mode():
            xt = torch.from_numpy(x)
            ref = net(xt).numpy()
            t_torch = best_of(lambda n=net, v=xt: n(v), args.repeat)
        print(f"{name}: torch eager fp32 {t_torch * 1e3:.0f} ms")
        rows.append({"model": name, "runner": "torch eager fp32", "ms": round(t_torch * 1e3, 1), "ratio": 1.0})
        for level in ("basic", "extended", "all"):
            for spinning in (True, False):
                so = session_options(0, optimization=level, spinning=spinning)
                session = ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"])
                err = float(np.abs(session.run(None, {"input": x})[0] - ref).max())
                t = best_of(lambda s=session: s.run(None, {"input": x}), args.repeat)
                label = f"onnxruntime {level} spinning={'on' if spinning else 'off'}"
                rows.append({"model": name, "runner": label, "ms": round(t * 1e3, 1),
                             "ratio": round(t_torch / t, 2), "max_abs_diff": err})
                print(f"  {label}: {t * 1e3:.0f} ms, torch/ort {t_torch / t:.2f}×, max abs diff {err:.1e}")
        for label, graph in (("onnxruntime fp16 graph", export_onnx(net, precision="fp16")),
                             ("onnxruntime int8 Q/DQ", quantize(net, calibration_photos()))):
            session = ort.InferenceSession(graph.SerializeToString(), sess_options=session_options(0),
                                           providers=["CPUExecutionProvider"])
            err = float(np.abs(session.run(None, {"input": x})[0] - ref).max())
            t = best_of(lambda s=session: s.run(None, {"input": x}), args.repeat)
            rows.append({"model": name, "runner": label, "ms": round(t * 1e3, 1), "ratio": round(t_torch / t, 2),
                         "max_abs_diff": err})
            print(f"  {label} (chosen options): {t * 1e3:.0f} ms, torch/ort {t_torch / t:.2f}×, max abs diff "
                  f"{err:.1e}")
    result = {
        "rows": rows,
        "conditions": {"device": "cpu", "cpu": platform.processor() or platform.machine(),
                       "threads": torch.get_num_threads(), "input": list(x.shape), "repeat": args.repeat,
                       "torch": torch.__version__, "onnxruntime": ort.__version__,
                       "python": platform.python_version()},
    }
    out = REPO / "bench" / "results" / "ort_cpu.json"
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
