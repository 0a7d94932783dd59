"""`python bench/int8_quality.py`: what INT8 (Q/DQ, export/quantize.py) costs in quality, per calibration method, with
the first and last convs kept in FP32 or quantized too.

Calibration: LR images made by MATLAB bicubic `imresize` ÷scale from center crops of training photos of the
default model (train/photos.py TRAIN; never the held-out ones). Evaluation: the whole held-out photos (chelsea,
coffee, rocket) exactly as weights/README.md scores them (train.evaluate: Y channel BT.601, `scale` border cropped,
8-bit outputs), run in ONNX Runtime on the CPU, where the Q/DQ graph computes what the TensorRT INT8 engine
computes (int8 inputs and weights, float accumulation and bias) up to rounding. For every method × {first/last
kept, all quantized}: the PSNR of the INT8 output against the FP32 ONNX output (8-bit RGB, whole image) and the
Y-PSNR/SSIM against ground truth beside FP32's. Prints a Markdown table and writes bench/results/int8_quality.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine import models  # noqa: E402
from engine.atomic import atomic_write  # noqa: E402
from engine.metrics import psnr  # noqa: E402
from export.onnx import export_onnx  # noqa: E402
from export.quantize import (  # noqa: E402
    DEFAULT_PERCENTILE,
    METHODS,
    collect_ranges,
    first_last_convs,
    quantize_onnx,
    weight_ranges,
)
from train.data import ValDataset  # noqa: E402
from train.degradations import imresize  # noqa: E402
from train.evaluate import score, to_uint8  # noqa: E402
from train.photos import TRAIN, VAL, export  # noqa: E402

TARGET_LOSS_DB = 0.1  # INT8 Y-PSNR vs ground truth may be at most this much below FP32's
# Calibration sets (training photos only). The first is the main one; the others check that the choice does not
# hinge on which photos were picked: gray textures unlike the colour validation photos, and just two photos.
CALIB_SETS = {
    "six photos": ("astronaut", "hubble_deep_field", "immunohistochemistry", "retina", "coins", "brick"),
    "gray textures": ("camera", "grass", "gravel", "text", "clock", "cell"),
    "two photos": ("astronaut", "retina"),
}


def calibration_lr(names: list[str], hr_crop: int, scale: int) -> list[np.ndarray]:
    """(h, w, 3) float32 LR images: imresize ÷scale of the center hr_crop×hr_crop crop of each training photo."""
    import skimage.data

    out = []
    for name in names:
        if name not in TRAIN:
            raise ValueError(f"{name} is not a training photo of the default model (train/photos.py TRAIN)")
        hr = np.asarray(getattr(skimage.data, name)())
        hr = np.repeat(hr[:, :, None], 3, axis=2) if hr.ndim == 2 else hr[:, :, :3]
        h, w = hr.shape[:2]
        side = min(hr_crop, h, w) // scale * scale
        top, left = (h - side) // 2, (w - side) // 2
        crop = hr[top:top + side, left:left + side].astype(np.float32) / 255
        out.append(imresize(crop, 1 / scale).astype(np.float32))
    return out


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, lr: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(sess.run(None, {"input": lr[None].numpy()})[0][0])


def scores(sess: ort.InferenceSession, samples: list[dict], scale: int, ref: list[torch.Tensor] | None) -> dict:
    """Per image and mean: Y-PSNR/SSIM vs ground truth and (with `ref`) 8-bit RGB PSNR vs the reference outputs."""
    rows, outs = [], []
    for k, s in enumerate(samples):
        out = run(sess, s["lr"])
        outs.append(out)
        sc = score(s["name"], out, s["hr"], scale)
        row = {"image": s["name"], "psnr_y": sc.psnr_y, "ssim_y": sc.ssim_y}
        if ref is not None:
            row["psnr_vs_fp32"] = psnr(to_uint8(out), to_uint8(ref[k]))
        rows.append(row)
    mean = {key: float(np.mean([r[key] for r in rows])) for key in rows[0] if key != "image"}
    return {"per_image": rows, "mean": mean, "outputs": outs}


def int8_rows(net: models.SRNet, fp32_model: onnx.ModelProto, lr_calib: list[np.ndarray], crop: int,
              percentile: float, samples: list[dict], scale: int, fp32: dict, ref: list[torch.Tensor]) -> list[dict]:
    """One row per method × {first/last kept, all quantized}, calibrated on `lr_calib`."""
    keep_convs = sorted(first_last_convs(fp32_model))
    w_amax = weight_ranges(net)
    rows = []
    for method in METHODS:
        ranges = collect_ranges(net, lr_calib, method=method, percentile=percentile, crop=crop)
        for keep_first_last in (True, False):
            q = quantize_onnx(fp32_model, ranges, w_amax, keep=keep_convs if keep_first_last else ())
            r = scores(session(q), samples, scale, ref)
            r.pop("outputs")
            rows.append({"method": method, "keep_first_last": keep_first_last, **r,
                         "loss_db": fp32["mean"]["psnr_y"] - r["mean"]["psnr_y"]})
            print(f"{method:10s} keep={keep_first_last!s:5s} Y-PSNR {r['mean']['psnr_y']:.3f} dB "
                  f"(FP32 {fp32['mean']['psnr_y']:.3f}), vs FP32 {r['mean']['psnr_vs_fp32']:.2f} dB", file=sys.stderr)
    return rows


def choose(sets: dict[str, list[dict]]) -> dict:
    """The setting with the smallest Y-PSNR loss averaged over the calibration sets."""
    first = next(iter(sets.values()))
    mean_loss = [float(np.mean([rows[k]["loss_db"] for rows in sets.values()])) for k in range(len(first))]
    k = int(np.argmin(mean_loss))
    return {"method": first[k]["method"], "keep_first_last": first[k]["keep_first_last"],
            "mean_loss_db": mean_loss[k], "rule": "smallest Y-PSNR loss averaged over the calibration sets"}


def measure(model_path: str, calib_sets: dict[str, tuple[str, ...]], hr_crop: int, percentile: float) -> dict:
    net, info = models.load(model_path)
    net.eval()
    scale = info.scale
    with tempfile.TemporaryDirectory() as tmp:
        export(Path(tmp))
        val = ValDataset(Path(tmp) / "val", scale=scale)
        samples = [val[i] for i in range(len(val))]
    fp32_model = export_onnx(net)
    fp32 = scores(session(fp32_model), samples, scale, None)
    ref = fp32.pop("outputs")
    sets = {}
    for name, photos in calib_sets.items():
        print(f"calibration set: {name}", file=sys.stderr)
        sets[name] = int8_rows(net, fp32_model, calibration_lr(list(photos), hr_crop, scale), hr_crop // scale,
                               percentile, samples, scale, fp32, ref)
    path = Path(model_path).resolve()
    return {
        "model": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else model_path,
        "model_info": {"arch": info.arch, "hparams": info.hparams},
        "conditions": {
            "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider, default graph optimizations, 2 threads",
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
                         "onnxruntime": ort.__version__, "numpy": np.__version__},
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
            "calibration_sets": {k: list(v) for k, v in calib_sets.items()},
            "calibration": f"center {hr_crop}×{hr_crop} crops of the HR training photos (gray ones repeated to "
                           f"RGB), imresize ÷{scale} → {hr_crop // scale}×{hr_crop // scale} LR, each taken whole",
            "percentile": percentile,
            "eval_images": [f"{n}.png" for n in VAL],
            "eval": f"whole images, mod-cropped to ×{scale}; LR by imresize ÷{scale}; Y channel BT.601, "
                    f"{scale}-pixel border cropped, 8-bit outputs (train.evaluate.score); psnr_vs_fp32 on 8-bit RGB "
                    "outputs, whole image",
            "kept_convs_when_keep_first_last": sorted(first_last_convs(fp32_model)),
        },
        "target_loss_db": TARGET_LOSS_DB,
        "fp32": fp32,
        "int8": sets,
        "choice": choose(sets),
    }


def markdown(result: dict) -> str:
    """Main calibration set: INT8 vs FP32 and vs ground truth; the other sets: Y-PSNR loss only."""
    names = list(result["int8"])
    main_rows = result["int8"][names[0]]
    f = result["fp32"]["mean"]
    head = ["method", "first/last conv", f"INT8 vs FP32 PSNR ({names[0]})", f"Y-PSNR / SSIM vs GT ({names[0]})"]
    head += [f"Y-PSNR loss ({n})" for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             f"| FP32 ONNX | — | — | {f['psnr_y']:.3f} dB / {f['ssim_y']:.4f} |" + " — |" * len(names)]
    for k, r in enumerate(main_rows):
        m = r["mean"]
        cells = [r["method"], "FP32" if r["keep_first_last"] else "INT8", f"{m['psnr_vs_fp32']:.2f} dB",
                 f"{m['psnr_y']:.3f} dB / {m['ssim_y']:.4f}"]
        cells += [f"{result['int8'][n][k]['loss_db']:.3f} dB" for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/int8_quality.py", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO / "weights" / "tiny_x4.safetensors"),
                   help="checkpoint (default: weights/tiny_x4.safetensors)")
    p.add_argument("--calib", help="comma-separated training photos to calibrate on instead of the sets in "
                   "CALIB_SETS (default: those sets)")
    p.add_argument("--hr-crop", type=int, default=384, help="side of the HR center crop per photo (default: 384)")
    p.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE,
                   help=f"for the percentile method (default: {DEFAULT_PERCENTILE})")
    p.add_argument("--json", default=str(REPO / "bench" / "results" / "int8_quality.json"),
                   help="output JSON (default: bench/results/int8_quality.json)")
    args = p.parse_args(argv)
    sets = {"--calib": tuple(args.calib.split(","))} if args.calib else CALIB_SETS
    result = measure(args.model, sets, args.hr_crop, args.percentile)
    text = json.dumps(result, indent=2) + "\n"
    atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
    print(markdown(result))
    c = result["choice"]
    print(f"\nchoice ({c['rule']}): {c['method']}, first/last conv {'FP32' if c['keep_first_last'] else 'INT8'}, "
          f"mean loss {c['mean_loss_db']:.3f} dB (target ≤ {TARGET_LOSS_DB} dB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
