"""Builds the pybind11 extension engine._C from csrc/ (packages and metadata come from pyproject.toml).

Host C++ (csrc/*.cpp) is always compiled. CUDA sources (csrc/*.cu) are compiled with nvcc and linked with the
static CUDA runtime, so the module imports on machines without a GPU or libcudart.so. Environment:

    ENGINE_CUDA=auto|0|1   auto (default): CUDA iff nvcc is found ($CUDA_HOME/bin, $CUDA_PATH/bin, PATH);
                           1: CUDA required (the build fails without nvcc); 0: never.
    ENGINE_CUDA_ARCHS      SM architectures, e.g. "90" or "80;90" (default "90"): SASS for each, PTX for the
                           highest.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from glob import glob
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup
from setuptools.command.build_ext import build_ext

CSRC = "csrc"
HEADERS = sorted(glob(f"{CSRC}/*.h"))


@dataclass(frozen=True)
class CudaToolkit:
    nvcc: str
    home: Path

    @property
    def lib_dir(self) -> Path:
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
            if (self.home / sub / "libcudart_static.a").is_file():
                return self.home / sub
        raise SystemExit(f"error: libcudart_static.a not found under {self.home} (lib64/, lib/, targets/*/lib/)")


def cuda_home_of(nvcc: str) -> Path:
    """The toolkit root of nvcc: two levels up from the real file, or where nvcc says it lives (wrappers)."""
    home = Path(nvcc).resolve().parent.parent
    if (home / "include" / "cuda_runtime.h").is_file():
        return home
    dryrun = subprocess.run([nvcc, "--dryrun", "-v", "-c", "probe.cu"], capture_output=True, text=True)
    top = re.search(r"^#\$ TOP=(.+)$", dryrun.stdout + dryrun.stderr, re.MULTILINE)
    if top is None:
        raise SystemExit(f"error: cannot tell the CUDA toolkit root of {nvcc}; set CUDA_HOME")
    return Path(top.group(1).strip()).resolve()


def find_cuda() -> CudaToolkit | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return CudaToolkit(str(Path(home) / "bin" / "nvcc"), Path(home))
    nvcc = shutil.which("nvcc")
    return CudaToolkit(nvcc, cuda_home_of(nvcc)) if nvcc else None


def cuda_toolkit() -> CudaToolkit | None:
    """The toolkit to compile csrc/*.cu with, or None, as ENGINE_CUDA asks."""
    mode = os.environ.get("ENGINE_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"error: ENGINE_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return None
    toolkit = find_cuda()
    if toolkit is None and mode == "1":
        raise SystemExit(
            "error: ENGINE_CUDA=1 but nvcc was not found in $CUDA_HOME/bin, $CUDA_PATH/bin or on PATH. "
            "Install the CUDA toolkit and put its bin/ on PATH (or set CUDA_HOME), "
            "or build without CUDA: ENGINE_CUDA=0 pip install -e ."
        )
    return toolkit


def cuda_archs() -> list[int]:
    spec = os.environ.get("ENGINE_CUDA_ARCHS", "90")
    items = [s for s in re.split(r"[;,\s]+", spec) if s]
    if not items or not all(re.fullmatch(r"\d+(\.\d)?", s) for s in items):
        raise SystemExit(f"error: ENGINE_CUDA_ARCHS must list SM architectures like 90 or 80;90, got {spec!r}")
    return sorted({int(s.replace(".", "")) for s in items})


def gencode_flags(archs: list[int]) -> list[str]:
    """SASS for every arch, plus PTX for the highest (JIT-compiled on newer GPUs)."""
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs[:-1]]
    top = archs[-1]
    return [*flags, f"-gencode=arch=compute_{top},code=[sm_{top},compute_{top}]"]


def is_stale(target: Path, sources: list[str]) -> bool:
    return not target.exists() or any(os.path.getmtime(s) > target.stat().st_mtime for s in sources)


class BuildExt(build_ext):
    """build_ext that first compiles csrc/*.cu with nvcc (when CUDA is on) and links the objects in."""

    def build_extensions(self) -> None:
        toolkit = cuda_toolkit()
        archs = cuda_archs() if toolkit else []
        if toolkit:
            print(f"engine._C: CUDA compiled in for sm_{', sm_'.join(map(str, archs))} ({toolkit.nvcc})")
        else:
            why = "ENGINE_CUDA=0" if os.environ.get("ENGINE_CUDA", "").strip() == "0" else "nvcc not found"
            print(f"engine._C: built WITHOUT CUDA ({why}); the *_cuda functions will raise")
        self._force_if_config_changed(f"{toolkit} {archs}")
        for ext in self.extensions:
            if toolkit:
                self._add_cuda(ext, toolkit, archs)
        super().build_extensions()

    def _force_if_config_changed(self, config: str) -> None:
        # Objects built with the other ENGINE_CUDA setting look up to date by mtime: rebuild everything.
        stamp = Path(self.build_temp) / "engine_C.config"
        if not stamp.exists() or stamp.read_text() != config:
            self.force = True
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(config)

    def _add_cuda(self, ext: Pybind11Extension, toolkit: CudaToolkit, archs: list[int]) -> None:
        for source in sorted(glob(f"{CSRC}/*.cu")):
            obj = Path(self.build_temp) / f"{Path(source).name}.o"
            if self.force or is_stale(obj, [source, *HEADERS]):
                cmd = [
                    toolkit.nvcc, "-c", source, "-o", str(obj), f"-I{CSRC}", "-std=c++17", "-O3",
                    "-Xcompiler", "-fPIC,-fvisibility=hidden", *gencode_flags(archs),
                ]  # fmt: skip
                print(" ".join(cmd))
                subprocess.run(cmd, check=True)
            ext.extra_objects.append(str(obj))
        ext.define_macros.append(("ENGINE_WITH_CUDA", "1"))
        ext.library_dirs.append(str(toolkit.lib_dir))
        ext.libraries += ["cudart_static", "dl", "rt", "pthread"]
        # Keep the static runtime private, so that a libcudart.so loaded earlier (torch) cannot interpose.
        ext.extra_link_args.append("-Wl,--exclude-libs,libcudart_static.a")


setup(
    ext_modules=[
        Pybind11Extension(
            "engine._C",
            sources=sorted(glob(f"{CSRC}/*.cpp")),
            depends=[*HEADERS, *glob(f"{CSRC}/*.cu")],
            cxx_std=17,
            extra_compile_args=["-O3", "-pthread"],
            extra_link_args=["-pthread"],
        )
    ],
    cmdclass={"build_ext": BuildExt},
)
