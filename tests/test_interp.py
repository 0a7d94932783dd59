"""Network interpolation θ = (1 − α)·θ_a + α·θ_b and `python -m engine.interp`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from published_layouts import ESRGAN2018
from util import randomize_

import engine.models as M
from engine.interp import main as interp_main

SMALL = dict(num_feat=8, num_block=2, num_grow_ch=4)


def _pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    return randomize_(M.build("rrdbnet", SMALL), seed=1), randomize_(M.build("rrdbnet", SMALL), seed=2)


def test_endpoints_are_reproduced_exactly() -> None:
    a, b = _pair()
    for alpha, ref in ((0.0, a), (1.0, b)):
        blended = M.interpolate(a, b, alpha)
        for key, t in ref.state_dict().items():
            assert torch.equal(blended[key], t), (alpha, key)


def test_half_is_the_mean_parameter_by_parameter() -> None:
    a, b = _pair()
    sa, sb = a.state_dict(), b.state_dict()
    blended = M.interpolate(sa, sb, 0.5)
    assert list(blended) == list(sa)
    for key in sa:
        expected = ((sa[key].double() + sb[key].double()) / 2).float()
        assert blended[key].dtype == torch.float32
        assert torch.equal(blended[key], expected), key


def test_any_alpha_is_the_linear_blend() -> None:
    a, b = _pair()
    sa, sb = a.state_dict(), b.state_dict()
    blended = M.interpolate(a, b, 0.8)
    key = "body.1.rdb3.conv5.weight"
    torch.testing.assert_close(blended[key].double(), 0.2 * sa[key].double() + 0.8 * sb[key].double(),
                               atol=1e-7, rtol=0)


def test_integer_buffers_come_from_the_nearer_endpoint() -> None:
    a = M.build("srresnet", dict(num_feat=8, num_block=1))
    b = M.build("srresnet", dict(num_feat=8, num_block=1))
    b.bn_body.num_batches_tracked.fill_(7)
    assert int(M.interpolate(a, b, 0.3)["bn_body.num_batches_tracked"]) == 0
    assert int(M.interpolate(a, b, 0.7)["bn_body.num_batches_tracked"]) == 7


def test_mismatches_name_the_first_difference() -> None:
    a, _ = _pair()
    other = M.build("rrdbnet", dict(SMALL, num_grow_ch=8))
    with pytest.raises(M.InterpolationError, match=r"'body.0.rdb1.conv1.weight' has shape \(4, 8, 3, 3\) in "
                                                   r"the first network and \(8, 8, 3, 3\) in the second"):
        M.interpolate(a, other, 0.5)
    deeper = M.build("rrdbnet", dict(SMALL, num_block=3))
    with pytest.raises(M.InterpolationError, match="'body.2.rdb1.conv1.weight' is in the second network but not"):
        M.interpolate(a, deeper, 0.5)
    with pytest.raises(M.InterpolationError, match="'body.2.rdb1.conv1.weight' is in the first network but not"):
        M.interpolate(deeper, a, 0.5)
    with pytest.raises(M.InterpolationError, match=r"alpha must be in \[0, 1\], got 1.5"):
        M.interpolate(a, a, 1.5)


def test_cli_blends_two_formats_and_records_alpha(tmp_path: Path) -> None:
    """A in ESRGAN 2018 keys, B in BasicSR params_ema: both load, and the blend is the network at alpha."""
    ref_a = randomize_(ESRGAN2018(in_nc=3, out_nc=3, nf=8, nb=2, gc=4, n_upscale=2), seed=3)
    torch.save(ref_a.state_dict(), tmp_path / "psnr.pth")
    net_a, _ = M.load(tmp_path / "psnr.pth")
    net_b = randomize_(M.build("rrdbnet", SMALL), seed=4)
    torch.save({"params_ema": net_b.state_dict()}, tmp_path / "gan.pth")

    out = tmp_path / "blend.safetensors"
    assert interp_main([str(tmp_path / "psnr.pth"), str(tmp_path / "gan.pth"), "--alpha", "0.8", "-o", str(out)]) == 0
    blended, info = M.load(out)
    assert info.metadata["alpha"] == "0.8" and info.format == "safetensors"
    expected = M.interpolate(net_a, net_b, 0.8)
    for key, t in blended.state_dict().items():
        assert torch.equal(t, expected[key]), key


def test_cli_refuses_different_networks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    M.save(M.build("rrdbnet", SMALL), tmp_path / "a.safetensors")
    M.save(M.build("rrdbnet", dict(SMALL, scale=2)), tmp_path / "b.safetensors")
    code = interp_main([str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--alpha", "0.5",
                        "-o", str(tmp_path / "out.safetensors")])
    assert code == 2 and "only two versions of one network blend" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("which", ["a", "b", "b-by-another-path"])
def test_cli_never_writes_over_an_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str) -> None:
    a, b = _pair()
    M.save(a, tmp_path / "a.safetensors")
    M.save(b, tmp_path / "b.safetensors")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    out = {"a": tmp_path / "a.safetensors", "b": tmp_path / "b.safetensors",
           "b-by-another-path": tmp_path / "." / "b.safetensors"}[which]
    code = interp_main([str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--alpha", "0.5",
                        "-o", str(out)])
    assert code == 2 and "inputs are never written over" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("alpha", ["nan", "1.5", "-0.1", "inf"])
def test_cli_refuses_alpha_outside_0_1(tmp_path: Path, capsys: pytest.CaptureFixture[str], alpha: str) -> None:
    a, b = _pair()
    M.save(a, tmp_path / "a.safetensors")
    M.save(b, tmp_path / "b.safetensors")
    with pytest.raises(SystemExit) as e:
        interp_main([str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--alpha", alpha,
                     "-o", str(tmp_path / "out.safetensors")])
    assert e.value.code == 2 and "give a weight in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()


def test_cli_runs_as_a_module(tmp_path: Path) -> None:
    M.save(M.build("msrresnet", dict(num_feat=8, num_block=1)), tmp_path / "a.safetensors")
    result = subprocess.run([sys.executable, "-m", "engine.interp", str(tmp_path / "a.safetensors"),
                             str(tmp_path / "a.safetensors"), "--alpha", "0.25", "-o", str(tmp_path / "o.bin")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "name it *.safetensors" in result.stderr


def test_interpolated_is_a_new_network_holding_the_blend() -> None:
    torch.manual_seed(0)
    a = M.create("rrdb6", num_block=1, num_feat=8, num_grow_ch=4)
    torch.manual_seed(1)
    b = M.create("rrdb6", num_block=1, num_feat=8, num_grow_ch=4)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    blended = M.interpolated(a, b, 0.3)
    assert type(blended) is type(a) and blended is not a
    for key, value in M.interpolate(a, b, 0.3).items():
        assert torch.equal(blended.state_dict()[key], value)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in before.items())  # `a` is untouched
