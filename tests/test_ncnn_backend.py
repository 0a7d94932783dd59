"""The ncnn backend (engine/backends/ncnn_cpu.py): our network written as .param/.bin and run by the ncnn runtime
on the CPU computes what PyTorch computes, blends alpha, and is refused where it cannot run."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest
import torch

import engine
import engine.models as M
from engine.backends import get

pytest.importorskip("ncnn", reason="the ncnn package (pyncnn) is not installed")


@pytest.mark.parametrize("arch,hparams", [("srvgg", dict(num_feat=8, num_conv=2, scale=2)),
                                          ("srvgg", dict(num_feat=6, num_conv=1, scale=3, act_type="leakyrelu")),
                                          ("rrdbnet", dict(num_feat=8, num_block=1, num_grow_ch=4, scale=4)),
                                          ("rrdbnet", dict(num_feat=8, num_block=1, num_grow_ch=4, scale=2))])
def test_ncnn_backend_computes_what_pytorch_computes(arch: str, hparams: dict, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net, gan = M.build(arch, hparams).eval(), M.build(arch, hparams).eval()
    backend = get("ncnn").from_network(net, gan_net=gan, threads=1)
    x = torch.rand(2, 3, 8, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, blend = net(x), M.interpolated(net, gan, 0.3)(x)
    assert (backend.run(x) - ref).abs().max() < 1e-5
    backend.set_alpha(0.3)
    assert backend.alpha == 0.3 and (backend.run(x) - blend).abs().max() < 1e-5
    image = (np.random.default_rng(0).random((10, 14, 3)) * 255).astype(np.uint8)
    backend.set_alpha(0.0)
    got = engine.infer(backend, image, tile=0)
    want = engine.infer(net, image, tile=0)
    assert got.shape == want.shape and np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_ncnn_backend_reads_a_batch_laid_out_in_any_order() -> None:
    """A batch made from HWC images by permute is not contiguous: each image is copied for ncnn, and the copy must
    live until ncnn has read it (ncnn.Mat does not hold it; a freed copy gave outputs of 1e22)."""
    torch.manual_seed(0)
    net = M.build("rrdbnet", dict(num_feat=8, num_block=1, num_grow_ch=4, scale=4)).eval()
    backend = get("ncnn").from_network(net, threads=1)
    hwc = torch.rand(4, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    batch = hwc.permute(0, 3, 1, 2)
    assert not batch.is_contiguous()
    with torch.no_grad():
        ref = net(batch.contiguous())
    for _ in range(3):
        assert (backend.run(batch) - ref).abs().max() < 1e-5


def test_ncnn_backend_refuses_what_it_cannot_run() -> None:
    info = get("ncnn")
    edsr = M.build("edsr", dict(num_block=1, num_feat=8))
    assert info.network(edsr, "fp32") == "ncnn models here are rrdbnet, srvgg, not edsr"
    with pytest.raises(ValueError, match="runs on the CPU here, not cuda"):
        info.from_network(M.build("srvgg", dict(num_feat=4, num_conv=1)), device="cuda")
    with pytest.raises(ValueError, match="alpha needs the GAN weights"):
        info.from_network(M.build("srvgg", dict(num_feat=4, num_conv=1))).set_alpha(0.5)


def test_upscale_runs_a_checkpoint_with_ncnn(tmp_path: Path) -> None:
    import cv2

    from engine.upscale import main as upscale

    torch.manual_seed(0)
    net = M.build("srvgg", dict(num_feat=8, num_conv=2, scale=2)).eval()
    M.save(net, tmp_path / "net.safetensors")
    image = (np.random.default_rng(0).random((12, 10, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "in.png"), image)
    assert upscale(["-i", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "-n",
                    str(tmp_path / "net.safetensors"), "--backend", "ncnn"]) == 0
    got = cv2.imread(str(tmp_path / "out" / "in_out.png"))
    want = cv2.cvtColor(engine.infer(net, cv2.cvtColor(image, cv2.COLOR_BGR2RGB)), cv2.COLOR_RGB2BGR)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


@pytest.mark.parametrize("arch,hparams,expected", [("srvgg", dict(num_feat=4, num_conv=1, scale=2), "NcnnBackend"),
                                                   ("rrdbnet", dict(num_feat=4, num_block=1, num_grow_ch=4, scale=4),
                                                    "NcnnBackend"),
                                                   ("srresnet", dict(num_feat=4, num_block=1, scale=2), "OrtBackend")])
def test_upscale_runs_what_ncnn_writes_on_ncnn_and_the_others_on_onnxruntime(arch: str, hparams: dict,
                                                                            expected: str, tmp_path: Path) -> None:
    """engine.upscale's CPU default is the faster runtime per architecture (docs/onnxruntime.md#the-cpu-default);
    the output through it is the network's."""
    from engine import upscale

    torch.manual_seed(0)
    net = M.build(arch, hparams).eval()
    M.save(net, tmp_path / "net.safetensors")
    args = upscale.parser().parse_args(["-n", str(tmp_path / "net.safetensors"), "-i", "x", "-o", "y",
                                        "--device", "cpu"])
    backend = upscale.make_backend(args)
    assert type(backend).__name__ == expected
    image = (np.random.default_rng(0).random((9, 11, 3)) * 255).astype(np.uint8)
    got, want = engine.infer(backend, image, tile=0), engine.infer(net, image, tile=0)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_the_memory_a_pixel_takes_in_ncnn_is_measured_not_borrowed_from_pytorch() -> None:
    """The automatic tile budgets with bytes_per_pixel: ncnn's is the measured growth of the peak resident memory
    over a probe, more than PyTorch's estimate for the same network."""
    from engine.backends import ncnn_cpu
    from engine.backends.torch_eager import TorchBackend

    def touch_64_mib() -> None:  # fresh anonymous pages: resident growth whatever the heap already holds
        with mmap.mmap(-1, 64 * 2**20) as m:
            m.write(b"\1" * (64 * 2**20))

    grown = ncnn_cpu.peak_rss_growth(touch_64_mib)
    if grown is None:
        pytest.skip("the peak resident memory cannot be read or reset here (/proc/self/clear_refs)")
    assert 60 * 2**20 <= grown <= 200 * 2**20
    torch.manual_seed(0)
    net = M.build("srvgg", dict(num_feat=32, num_conv=4, scale=4)).eval()
    backend = get("ncnn").from_network(net, threads=1)
    bpp = backend.bytes_per_pixel()
    assert bpp >= TorchBackend(net).bytes_per_pixel() and bpp == backend.bytes_per_pixel()
