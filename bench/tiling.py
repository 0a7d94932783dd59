"""`python bench/tiling.py`: how close tiled output is to untiled output, ours (blended) vs crop-only tiles.

For each real photo (scikit-image's held-out set of the default model, optionally a centre crop of each) and tile
size: the PSNR and the worst pixel of the tiled output against the untiled one, for several overlaps, beside
Real-ESRGAN's crop-only tiling (each tile run with
`pad` pixels of context, the context cropped away, no blending) at the same tile size. All outputs are rounded
to 8 bits first, as they would be saved. "Same tile size" is Real-ESRGAN's meaning of `-t`: the crop-only tiles
have that side plus `pad` of context, ours have that side in all. Prints a Markdown table and writes
bench/results/tiling.json (or --json); the default overlap is the smallest one that, for every image and tile
size, clears the target and beats crop-only tiles. `--model` takes a published name (RealESRGAN_x4plus,
realesr-animevideov3) as well as a file.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine import models  # noqa: E402
from engine.backends.torch_eager import TorchBackend  # noqa: E402
from engine.inference import upscale_planes  # noqa: E402
from engine.metrics import psnr  # noqa: E402

TARGET_DB = 60.0  # tiled vs untiled, on 8-bit outputs: at most a few pixels differ by one level


def crop_only_tiles(backend: TorchBackend, planes: np.ndarray, tile: int, pad: int) -> np.ndarray:
    """Real-ESRGAN's `tile_process`: a grid of tile×tile tiles, each run with `pad` pixels of context clipped to
    the image, then cropped back to its own area; no overlap between outputs, no blending."""
    _, h, w = planes.shape
    s = backend.scale
    out = np.zeros((backend.out_channels, h * s, w * s), np.float32)
    for y in range(math.ceil(h / tile)):
        for x in range(math.ceil(w / tile)):
            y0, x0 = y * tile, x * tile
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            py0, px0, py1, px1 = max(y0 - pad, 0), max(x0 - pad, 0), min(y1 + pad, h), min(x1 + pad, w)
            result = backend.run(torch.from_numpy(np.ascontiguousarray(planes[None, :, py0:py1, px0:px1])))[0]
            out[:, y0 * s:y1 * s, x0 * s:x1 * s] = result[:, (y0 - py0) * s:(y1 - py0) * s,
                                                          (x0 - px0) * s:(x1 - px0) * s].numpy()
    return out


def to8(x: np.ndarray) -> np.ndarray:
    """[0, 1] float planar (C, H, W) → the 8-bit values it would be saved with, (H, W, C) float64."""
    return np.clip(np.rint(x.astype(np.float64) * 255), 0, 255).transpose(1, 2, 0)


def psnr8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two [0, 1] float planar images (C, H, W) after rounding to 8 bits (inf when identical)."""
    return psnr(to8(a), to8(b))


def worst8(a: np.ndarray, b: np.ndarray) -> int:
    """The largest difference of two [0, 1] float planar images in 8-bit levels, after rounding."""
    return int(np.abs(to8(a) - to8(b)).max())


def photos(crop: int = 0, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """float32 (3, H, W) in [0, 1] of the held-out photos (`names`, default all), each its centre crop×crop when
    crop > 0."""
    import skimage.data

    from train.photos import VAL

    out = {}
    for name in names or list(VAL):
        img = getattr(skimage.data, name)()
        if crop:
            h, w = img.shape[:2]
            img = img[max(0, (h - crop) // 2):][:crop, max(0, (w - crop) // 2):][:, :crop]
        out[name] = np.ascontiguousarray(img.astype(np.float32).transpose(2, 0, 1) / 255)
    return out


def measure(model: str, tiles: list[int], overlaps: list[int], pad: int, crop: int = 0,
            names: list[str] | None = None) -> dict:
    net, info = models.load(model)
    backend = TorchBackend(net)
    rows = []
    for name, planes in photos(crop, names).items():
        whole = upscale_planes(backend, planes, tile=0)
        for tile in tiles:
            if tile >= max(planes.shape[1:]):
                continue  # one tile: the untiled output
            row = {"image": name, "size": list(planes.shape[1:]), "tile": tile}
            for overlap in overlaps:
                if 2 * overlap <= tile:
                    tiled = upscale_planes(backend, planes, tile=tile, tile_overlap=overlap)
                    row[f"overlap_{overlap}"], row[f"worst_{overlap}"] = psnr8(tiled, whole), worst8(tiled, whole)
            crop_only = crop_only_tiles(backend, planes, tile, pad)
            row[f"crop_only_pad_{pad}"] = psnr8(crop_only, whole)
            row[f"crop_only_worst_{pad}"] = worst8(crop_only, whole)
            rows.append(row)
            print(row, file=sys.stderr)
    def good(o: int) -> bool:  # clears the target and beats crop-only at the same tile size, everywhere
        return all(r.get(f"overlap_{o}", math.inf) >= max(TARGET_DB, r[f"crop_only_pad_{pad}"]) for r in rows)

    chosen = next((o for o in overlaps if good(o)), None)
    return {"model": model, "model_info": {"arch": info.arch, "hparams": info.hparams}, "target_db": TARGET_DB,
            "crop": crop, "pad": pad, "tiles": tiles, "overlaps": overlaps, "rows": rows, "chosen_overlap": chosen,
            "conditions": {"device": "cpu", "dtype": "fp32", "torch": torch.__version__,
                           "python": platform.python_version(), "cpu": platform.processor() or platform.machine()}}


def markdown(result: dict) -> str:
    overlaps, pad = result["overlaps"], result["pad"]
    def cell(db: float | None, worst: int | None) -> str:
        if db is None:
            return "–"
        return "∞" if db == math.inf else (f"{db:.1f}" if worst is None else f"{db:.1f} / {worst}")

    head = "| image | tile | " + " | ".join(f"overlap {o}" for o in overlaps) + f" | crop-only, pad {pad} |"
    lines = [head, "|" + "---|" * (3 + len(overlaps))]
    for r in result["rows"]:
        cells = [cell(r.get(f"overlap_{o}"), r.get(f"worst_{o}")) for o in overlaps]
        crop = cell(r[f"crop_only_pad_{pad}"], r.get(f"crop_only_worst_{pad}"))
        lines.append(f"| {r['image']} | {r['tile']} | " + " | ".join(cells) + f" | {crop} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/tiling.py", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO / "weights" / "tiny_x4.safetensors"), help="default: the shipped model")
    p.add_argument("--tiles", default="64,128,256", help="tile sides in input pixels (default: 64,128,256)")
    p.add_argument("--overlaps", default="8,16,24,32", help="overlaps in input pixels (default: 8,16,24,32)")
    p.add_argument("--pad", type=int, default=10, help="context of the crop-only baseline (default: 10, Real-ESRGAN's)")
    p.add_argument("--crop", type=int, default=0, help="centre crop of each photo, in pixels (default: 0, whole)")
    p.add_argument("--images", default="", help="comma-separated photo names (default: all held-out photos)")
    p.add_argument("--json", default=str(REPO / "bench" / "results" / "tiling.json"), help="output JSON")
    args = p.parse_args(argv)
    result = measure(args.model, [int(t) for t in args.tiles.split(",")], [int(o) for o in args.overlaps.split(",")],
                     args.pad, args.crop, [n for n in args.images.split(",") if n] or None)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    finite = {**result, "rows": [{k: (None if v == math.inf else v) for k, v in r.items()} for r in result["rows"]]}
    out.write_text(json.dumps(finite, indent=2) + "\n")  # null: identical to the untiled output
    print(markdown(result))
    print(f"\nPSNR (dB) / worst pixel (levels) of tiled vs untiled output, 8-bit; chosen default overlap "
          f"(≥ {TARGET_DB} dB and ≥ crop-only "
          "everywhere): "
          f"{result['chosen_overlap']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
