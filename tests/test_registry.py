"""Adding a backend or an architecture is one module and one registration each (tests/toys.py registers a toy of
both): they show up in `python -m engine.build --help`, build an engine that `engine.load` runs, upscale through
`python -m engine.upscale` and get a row in `bench/run.py`'s table, with no other edit. A fresh process imports the
toys, so the registry of this one stays as shipped."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import engine.models as M
from engine.backends import BackendInfo, backends, get, register, unregister

REPO = Path(__file__).resolve().parents[1]


def _run(code: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter that has imported tests/toys.py."""
    prelude = (f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); sys.path.insert(0, {str(REPO)!r}); "
               "import toys\n")
    proc = subprocess.run([sys.executable, "-c", prelude + code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_toys_show_up_in_engine_build_help() -> None:
    out = _run("from engine.build import main; sys.exit(main(['--help']))").stdout
    assert "{auto,onnxruntime,tensorrt,triton,native,toy}" in out and "toy: Toy (PyTorch fp32, CPU)" in out
    assert "toynet" in out  # among the architectures --weights takes


def test_toys_build_load_and_upscale(tmp_path: Path) -> None:
    torch.manual_seed(0)
    image = (np.random.default_rng(0).random((12, 10, 3)) * 255).astype(np.uint8)
    np.save(tmp_path / "image.npy", image)
    code = f"""
import cv2, numpy as np, torch
import engine
from engine import models
from engine.build import main as build
from engine.upscale import main as upscale
torch.manual_seed(0)
net = toys.ToyNet(num_feat=4, scale=2).eval()
models.save(net, {str(tmp_path / 'toy.safetensors')!r})
assert build(['--backend', 'toy', '--weights', {str(tmp_path / 'toy.safetensors')!r},
              '-o', {str(tmp_path / 'e')!r}]) == 0
eng = engine.load({str(tmp_path / 'e')!r})
assert type(eng.backend).__name__ == 'ToyBackend' and eng.manifest['model']['arch'] == 'toynet'
image = np.load({str(tmp_path / 'image.npy')!r})
out = engine.infer(eng, image)
with torch.no_grad():
    ref = net(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)[0].clamp(0, 1)
ref = (ref.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
assert out.shape == (24, 20, 3) and np.abs(out.astype(int) - ref).max() <= 1, np.abs(out.astype(int) - ref).max()
cv2.imwrite({str(tmp_path / 'in.png')!r}, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
assert upscale(['-i', {str(tmp_path / 'in.png')!r}, '-o', {str(tmp_path / 'out')!r}, '-n',
                {str(tmp_path / 'toy.safetensors')!r}, '--backend', 'toy']) == 0
got = cv2.cvtColor(cv2.imread({str(tmp_path / 'out' / 'in_out.png')!r}), cv2.COLOR_BGR2RGB)
assert np.abs(got.astype(int) - ref).max() <= 1
print('ok')
"""
    assert _run(code).stdout.strip().endswith("ok")


def test_toy_backend_gets_its_row_in_bench(tmp_path: Path) -> None:
    code = f"""
import runpy
sys.argv = ['bench/run.py', '--quick', '--workloads', 'quick-batch4', '--backends', 'torch-fp32,toy-fp32',
            '--repeat', '1', '--warmup', '0', '--no-chart', '--out', {str(tmp_path)!r}]
runpy.run_path({str(REPO / 'bench' / 'run.py')!r}, run_name='__main__')
"""
    assert "Toy fp32" in _run(code).stdout
    (result,) = tmp_path.glob("*/*.json")
    rows = {r["backend"]: r for r in json.loads(result.read_text())["workloads"][0]["rows"]}
    assert set(rows) == {"torch-fp32", "toy-fp32"}
    assert rows["toy-fp32"]["psnr_db"] is None or rows["toy-fp32"]["psnr_db"] > 50  # the network the reference runs


def test_a_backend_registers_once() -> None:
    info = get("torch")
    with pytest.raises(ValueError, match="backend 'torch' is already registered"):
        register(info)
    with pytest.raises(ValueError, match="unknown backend 'nope'; registered: torch, onnxruntime"):
        get("nope")


def test_registry_changes_what_a_manifest_may_name(tmp_path: Path) -> None:
    """engine.load accepts exactly the registered engine backends (a backend unregistered is refused)."""
    from engine.manifest import manifest_problems

    m = {"format_version": 1, "model": {"arch": "rrdbnet", "hparams": {}, "name": None}, "scale": 4,
         "in_channels": 3, "out_channels": 3, "multiple": 1, "precision": "fp32", "backend": "fake", "tile": 64,
         "batch": 1, "files": {"fake.bin": {"sha256": "0" * 64, "bytes": 1}}}
    assert any("backend 'fake' is not one of onnxruntime, tensorrt, triton, native" in p for p in manifest_problems(m))
    register(BackendInfo(name="fake", label="Fake", precisions=("fp32",), devices=("cpu",), unavailable=lambda: None,
                         files=(frozenset({"fake.bin"}), frozenset()), load=lambda req: None))
    try:
        assert manifest_problems(m) == []
        assert [b.name for b in backends()][-1] == "fake"
    finally:
        unregister("fake")
    assert manifest_problems(m) != []


def test_every_architecture_is_in_the_table_with_its_fused_program() -> None:
    from kernels.fused import PROGRAMS, fused_archs, unsupported

    assert fused_archs() == ["rrdbnet", "srresnet", "srvgg"] and set(PROGRAMS) == {"rrdbnet", "srresnet", "srvgg"}
    assert unsupported(M.create("edsr", num_block=1, num_feat=8), "fp16") is not None
    assert unsupported(M.create("srgan", num_block=1, num_feat=8), "int8") is not None  # no INT8 program for it
    assert unsupported(M.create("rrdb6"), "int8") is None


class _TiedToy(M.SRNet):
    """One conv applied twice: a traced ONNX graph keeps a single weight for both uses."""

    arch = "tiedtoy"

    def __init__(self, *, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 1) -> None:
        super().__init__()
        self._set_hparams(num_in_ch=num_in_ch, num_out_ch=num_out_ch, scale=scale)
        self.conv = torch.nn.Conv2d(num_in_ch, num_out_ch, 3, 1, 1)
        self.again = self.conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.again(torch.relu(self.conv(x)))


@pytest.fixture
def tied_toy() -> Iterator[type[M.SRNet]]:
    M.register_arch(M.Arch("tiedtoy", _TiedToy, detect=None))
    try:
        yield _TiedToy
    finally:
        del M.ARCHS["tiedtoy"]


def test_alpha_on_an_architecture_whose_graph_loses_weight_names_is_refused_clearly(
        tied_toy: type[M.SRNet], tmp_path: Path) -> None:
    """ONNX engines blend the endpoints by initializer name: a traced graph that lost a name cannot refit, and
    says so, instead of blending the wrong tensors."""
    from engine.backends import BuildRequest
    from engine.backends.ort import from_network
    from export.onnx import ExportError

    torch.manual_seed(0)
    net, gan = tied_toy().eval(), tied_toy().eval()
    from_network(net)  # without alpha it runs
    with pytest.raises(ExportError, match="alpha refit is unavailable for this _TiedToy graph"):
        from_network(net, gan_net=gan)
    request = BuildRequest(net=net, gan=gan, entries={"model": {}, "alpha": {"value": 0.5}}, precision="fp32",
                           tile=16, batch=1, out=tmp_path / "e")
    with pytest.raises(ExportError, match="alpha refit is unavailable"):  # engine.build's step for onnxruntime
        get("onnxruntime").build(request)  # type: ignore[misc]



def test_upscale_auto_on_the_cpu_takes_the_available_backend_of_lowest_rank_that_runs_the_network(
        tmp_path: Path) -> None:
    """engine.upscale --backend auto at fp32 on the CPU asks `cpu_defaults`: a backend whose library is missing, or
    that refuses the network, is passed over for the next rank; without any, PyTorch."""
    from engine import upscale
    from engine.backends import registry

    made: list[str] = []

    def maker(name: str):  # noqa: ANN202
        def from_network(net: M.SRNet, **kw: object) -> str:
            made.append(name)
            return name
        return from_network

    rows = [BackendInfo(name="t-missing", label="missing", precisions=("fp32",), devices=("cpu",),
                        unavailable=lambda: "its library is not installed", from_network=maker("t-missing"),
                        cpu_rank=lambda net: -3),
            BackendInfo(name="t-refuses", label="refuses", precisions=("fp32",), devices=("cpu",),
                        unavailable=lambda: None, network=lambda net, p: "not this network",
                        from_network=maker("t-refuses"), cpu_rank=lambda net: -2),
            BackendInfo(name="t-runs", label="runs", precisions=("fp32",), devices=("cpu",), unavailable=lambda: None,
                        from_network=maker("t-runs"), cpu_rank=lambda net: -1)]
    net = M.create("realesr-animevideov3", num_feat=4, num_conv=1, scale=2)
    M.save(net, tmp_path / "net.safetensors")
    args = upscale.parser().parse_args(["-n", str(tmp_path / "net.safetensors"), "-i", "x", "-o", "y",
                                        "--device", "cpu"])
    shipped = registry.cpu_defaults(net)[0]
    assert shipped is not None and shipped.cpu_rank is not None and (shipped.cpu_rank(net) or 0) >= 0
    for info in rows:
        register(info)
    try:
        assert registry.cpu_defaults(net)[0].name == "t-runs"
        assert upscale.make_backend(args) == "t-runs" and made == ["t-runs"]
        assert registry.cpu_defaults(net, "bf16") == []  # no ranked backend runs bf16
    finally:
        for info in rows:
            unregister(info.name)
    assert registry.cpu_defaults(net)[0] is shipped
