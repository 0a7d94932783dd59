"""Reference generators: parameter counts, key layouts, and the math of each forward against an independent float64
implementation (tests/published_layouts.py). The output shape at every scale is checked by each architecture's
round trip (test_archs.py)."""

from __future__ import annotations

import pytest
import torch
from published_layouts import edsr_math, msrresnet_math, rrdbnet_math, srresnet_math
from util import n_params, randomize_

import engine.models as M

torch.manual_seed(0)


def test_rrdb23_parameter_count_is_esrgans() -> None:
    assert n_params(M.create("rrdb23")) == 16_697_987


@pytest.mark.parametrize("name, scale", [("rrdb23", 4), ("rrdb6", 4), ("srgan", 4), ("msrresnet", 4),
                                         ("edsr", 4), ("rrdb23x16", 16)])
def test_registered_models_build_and_upscale(name: str, scale: int) -> None:
    model = M.create(name).eval()
    assert model.scale == scale
    with torch.no_grad():
        y = model(torch.rand(2, 3, 8, 12))
    assert y.shape == (2, 3, 8 * scale, 12 * scale)
    assert torch.isfinite(y).all()


def test_rrdbnet_x1_x2_use_pixel_unshuffle_like_basicsr() -> None:
    x2 = M.build("rrdbnet", dict(scale=2, num_feat=8, num_block=1, num_grow_ch=4))
    x1 = M.build("rrdbnet", dict(scale=1, num_feat=8, num_block=1, num_grow_ch=4))
    assert x2.conv_first.in_channels == 12 and x1.conv_first.in_channels == 48
    assert hasattr(x2, "conv_up2") and not hasattr(x2, "conv_up3")
    plain = M.build("rrdbnet", dict(scale=2, num_feat=8, num_block=1, num_grow_ch=4, pixel_unshuffle=False))
    assert plain.conv_first.in_channels == 3 and not hasattr(plain, "conv_up2")
    with pytest.raises(ValueError, match="multiples of 4"):
        x1(torch.rand(1, 3, 6, 8))


def test_bad_hyper_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="scale must be 1, 2, 4 or 8"):
        M.create("rrdb23", scale=3)
    with pytest.raises(ValueError, match="unknown model 'rrdb99'"):
        M.create("rrdb99")
    with pytest.raises(ValueError, match="scale must be 2, 3 or 4"):
        M.create("msrresnet", scale=8)


def _keys(model: torch.nn.Module) -> set[str]:
    return {k.rsplit(".", 1)[0] for k in model.state_dict()}


def test_key_names_are_basicsrs() -> None:
    """BasicSR's published module names (basicsr/archs/rrdbnet_arch.py, srresnet_arch.py, edsr_arch.py)."""
    rrdb = M.build("rrdbnet", dict(num_block=2, num_feat=8, num_grow_ch=4))
    expected = {"conv_first", "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"}
    expected |= {f"body.{i}.rdb{k}.conv{j}" for i in range(2) for k in (1, 2, 3) for j in range(1, 6)}
    assert _keys(rrdb) == expected

    msr = M.build("msrresnet", dict(num_block=2, num_feat=8))
    assert _keys(msr) == {"conv_first", "upconv1", "upconv2", "conv_hr", "conv_last"} | {
        f"body.{i}.conv{j}" for i in range(2) for j in (1, 2)}

    edsr = M.build("edsr", dict(num_block=2, num_feat=8))
    assert _keys(edsr) == {"conv_first", "conv_after_body", "upsample.0", "upsample.2", "conv_last"} | {
        f"body.{i}.conv{j}" for i in range(2) for j in (1, 2)}
    assert "mean" not in edsr.state_dict()  # BasicSR keeps the mean out of the state dict


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_rrdbnet_matches_the_math(scale: int) -> None:
    model = randomize_(M.build("rrdbnet", dict(scale=scale, num_feat=8, num_block=2, num_grow_ch=4)))
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        y = model(x)
    ref = rrdbnet_math(model.state_dict(), x, unshuffle=model.unshuffle)
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_msrresnet_matches_the_math(scale: int) -> None:
    model = randomize_(M.build("msrresnet", dict(scale=scale, num_feat=8, num_block=2)))
    x = torch.rand(1, 3, 7, 9)
    with torch.no_grad():
        y = model(x)
    torch.testing.assert_close(y.double(), msrresnet_math(model.state_dict(), x, scale), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_edsr_matches_the_math(scale: int) -> None:
    model = randomize_(M.build("edsr", dict(scale=scale, num_feat=8, num_block=2, res_scale=0.1)))
    x = torch.rand(1, 3, 5, 6)
    with torch.no_grad():
        y = model(x)
    torch.testing.assert_close(y.double(), edsr_math(model.state_dict(), x, 0.1), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("scale, per_channel", [(4, False), (3, True), (8, False)])
def test_srresnet_matches_the_math(scale: int, per_channel: bool) -> None:
    model = randomize_(M.build("srresnet", dict(scale=scale, num_feat=8, num_block=2,
                                                prelu_per_channel=per_channel)))
    assert model.conv_first.kernel_size == (9, 9) and model.conv_last.kernel_size == (9, 9)
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        y = model(x)
    torch.testing.assert_close(y.double(), srresnet_math(model.state_dict(), x), atol=1e-5, rtol=1e-5)


def _cascade_math(sd: dict[str, torch.Tensor], x: torch.Tensor, unshuffles: list[int]) -> torch.Tensor:
    """An RRDBNet cascade in float64 from its state dict alone: stage i's tensors (`stages.{i}.…`) through
    rrdbnet_math, in order; nothing of Cascade or of the stage modules runs."""
    for i, unshuffle in enumerate(unshuffles):
        prefix = f"stages.{i}."
        x = rrdbnet_math({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, x, unshuffle=unshuffle)
    return x


def _assert_cascade_matches_the_math(cascade: M.Cascade, x: torch.Tensor) -> None:
    with torch.no_grad():
        y = cascade(x)
    ref = _cascade_math(cascade.state_dict(), x, [stage.unshuffle for stage in cascade.stages])
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)


def _two_different_stages() -> M.Cascade:
    """A ×2 (pixel-unshuffle) stage, then a ×4 one of another width: run in the other order, or with a stage
    skipped, the output differs in values or in size."""
    first = dict(arch="rrdbnet", hparams=dict(scale=2, num_feat=8, num_block=1, num_grow_ch=4))
    second = dict(arch="rrdbnet", hparams=dict(scale=4, num_feat=6, num_block=2, num_grow_ch=3))
    return randomize_(M.build("cascade", {"stages": [first, second]}))


def test_cascade_matches_its_stages_math_run_one_after_another() -> None:
    cascade = _two_different_stages()
    assert cascade.scale == 8 and cascade.input_multiple == 2
    _assert_cascade_matches_the_math(cascade, torch.rand(1, 3, 4, 6, generator=torch.Generator().manual_seed(3)))


def _reversed(self: M.Cascade, x: torch.Tensor) -> torch.Tensor:
    for stage in reversed(self.stages):
        x = stage(x)
    return x


@pytest.mark.parametrize("broken", [
    _reversed,
    lambda self, x: self.stages[0](x),  # the last stage skipped
    lambda self, x: self.stages[1](x),  # the first stage skipped
    lambda self, x: self.stages[1](self.stages[0](self.stages[0](x))[..., ::2, ::2]),  # first stage twice
], ids=["reversed", "skips-last", "skips-first", "first-twice"])
def test_the_cascade_check_catches_a_broken_cascade(monkeypatch: pytest.MonkeyPatch, broken: object) -> None:
    """The math check above is no tautology: a Cascade that runs its stages wrongly fails it."""
    monkeypatch.setattr(M.Cascade, "forward", broken)
    with pytest.raises(AssertionError):
        _assert_cascade_matches_the_math(_two_different_stages(), torch.rand(1, 3, 4, 6))


def test_x16_cascade_is_two_x4_rrdbnets_in_a_row() -> None:
    small = dict(num_feat=8, num_block=1, num_grow_ch=4)
    cascade = randomize_(M.build("cascade", {"stages": [{"arch": "rrdbnet", "hparams": small}] * 2}))
    assert cascade.scale == 16
    x = torch.rand(1, 3, 4, 4)
    with torch.no_grad():
        y = cascade(x)
    assert y.shape == (1, 3, 64, 64)
    _assert_cascade_matches_the_math(cascade, x)
    full = M.create("rrdb23x16")
    assert n_params(full) == 2 * 16_697_987
