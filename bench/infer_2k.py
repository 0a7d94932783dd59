"""`python bench/infer_2k.py`: time and peak memory of engine.infer on a 2048×1080 photo, default model, CPU.

The photo is scikit-image's public-domain Hubble Deep Field resized to 2048×1080. The output is 8192×4320
uint8. It runs ONNX Runtime (the CPU default of python -m engine.upscale) first, then PyTorch eager, on the same
image with the same tiles, and reports the time ratio and the largest pixel difference between the two.
Memory is the process's peak resident set size (ru_maxrss) after each run (a peak: the second run's figure
includes the first). Writes bench/results/infer_2k.json.
"""

from __future__ import annotations

import json
import platform
import resource
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import engine  # noqa: E402
from engine import models  # noqa: E402
from engine.backends.ort import from_network as ort_backend  # noqa: E402
from engine.backends.torch_eager import TorchBackend  # noqa: E402
from engine.inference import DEFAULT_BATCH, DEFAULT_TILE_OVERLAP, auto_tile  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    import skimage.data

    image = cv2.resize(skimage.data.hubble_deep_field(), (2048, 1080), interpolation=cv2.INTER_AREA)
    net, _ = models.load(REPO / "weights" / "tiny_x4.safetensors")
    torch_backend = TorchBackend(net)
    tile = auto_tile(torch_backend, 1080, 2048, DEFAULT_BATCH)
    before = peak_rss_mib()
    runs, outs = {}, {}
    for name, backend in (("onnxruntime", ort_backend(net)), ("torch", torch_backend)):
        start = time.perf_counter()
        outs[name] = engine.infer(backend, image, tile=tile)
        runs[name] = {"seconds": round(time.perf_counter() - start, 2), "peak_rss_mib": round(peak_rss_mib(), 1)}
    out = outs["onnxruntime"]
    result = {
        "input": list(image.shape), "output": list(out.shape), "dtype": str(out.dtype), "runs": runs,
        "torch_over_onnxruntime": round(runs["torch"]["seconds"] / runs["onnxruntime"]["seconds"], 2),
        "max_abs_diff_8bit": int(np.abs(out.astype(int) - outs["torch"].astype(int)).max()),
        "peak_rss_mib_before": round(before, 1), "tile": tile,
        "tile_overlap": DEFAULT_TILE_OVERLAP, "batch": DEFAULT_BATCH, "output_mib": round(out.nbytes / 2**20, 1),
        "conditions": {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
                       "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
                       "model": "weights/tiny_x4.safetensors (fp32)"},
    }
    out_path = REPO / "bench" / "results" / "infer_2k.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
