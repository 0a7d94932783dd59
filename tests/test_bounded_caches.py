"""Per-shape device memory stays bounded: a fused plan keeps the arenas of at most `max_shapes` input tile shapes
(least recently used dropped first), the Triton backend's CUDA graph of a shape is dropped with that shape's arena,
an arena that does not fit makes room by dropping the other shapes once, and probing a shape's size allocates
nothing. Under TRITON_INTERPRET=1 on the CPU (CUDA graphs are stood in for by a recording of the launches, which,
like a graph, replays the addresses it captured)."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from util import randomize_

import engine.models as M
import kernels.packing as packing
from kernels.launch import launch, record
from kernels.srvgg import FusedSRVGG

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(1, 3, 4), (1, 4, 3), (2, 3, 3), (1, 5, 2), (1, 2, 5)]  # (n, h, w): more than the bound below
BOUND = 2


def _net(seed: int = 0) -> M.SRNet:
    torch.manual_seed(seed)
    net = M.create("realesr-animevideov3", num_feat=8, num_conv=1, scale=2).eval()
    randomize_(net, seed + 10)
    return net


def _x(n: int, h: int, w: int) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(100 * n + 10 * h + w))


class Arenas:
    """Every arena `carve` makes, by weak reference: how many exist and which storages are alive."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.made: list[weakref.ref[torch.Tensor]] = []
        real = packing.carve

        def carve(specs: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
            base, views = real(specs, device)
            self.made.append(weakref.ref(base))
            return base, views

        monkeypatch.setattr(packing, "carve", carve)

    def live(self) -> list[torch.Tensor]:
        return [t for ref in self.made if (t := ref()) is not None]

    def storages(self) -> set[int]:
        return {t.untyped_storage().data_ptr() for t in self.live()}


def test_a_plan_keeps_at_most_max_shapes_arenas_and_reuses_a_kept_one(monkeypatch: pytest.MonkeyPatch) -> None:
    net = _net()
    plan = FusedSRVGG(net, dtype=torch.float32, device=DEVICE)
    assert plan.max_shapes == packing.MAX_SHAPES == 8
    plan.max_shapes = BOUND
    arenas = Arenas(monkeypatch)
    for n, h, w in SHAPES:
        x = _x(n, h, w)
        with torch.no_grad():
            ref = net.double()(x.double())
        got = plan(x.to(DEVICE)).double().cpu()
        assert (got - ref).abs().max() < 1e-5  # a reused address range computes the right thing
        assert len(arenas.live()) <= BOUND
    assert len(arenas.made) == len(SHAPES)
    assert plan.shapes == SHAPES[-BOUND:]
    plan(_x(*SHAPES[-2]).to(DEVICE))  # kept: a hit, no new arena, and now the most recently used
    assert len(arenas.made) == len(SHAPES) and plan.shapes == [SHAPES[-1], SHAPES[-2]]
    plan(_x(*SHAPES[0]).to(DEVICE))  # dropped long ago: made again, in place of the least recently used
    assert len(arenas.made) == len(SHAPES) + 1 and plan.shapes == [SHAPES[-2], SHAPES[0]]
    plan.max_shapes = 1  # lowering the bound drops the least recently used at once
    assert plan.shapes == [SHAPES[0]] and len(arenas.live()) == 1
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_shapes must be an integer ≥ 1"):
            plan.max_shapes = bad  # type: ignore[assignment]


class FakeGraph:
    """Stands in for torch.cuda.CUDAGraph on the CPU: capture records the launches (with the tensors, so the
    addresses, they were given) and replay launches them again."""

    alive: weakref.WeakSet[FakeGraph] = weakref.WeakSet()
    captures = 0

    def __init__(self) -> None:
        self.launches: list[Any] = []
        FakeGraph.alive.add(self)

    def replay(self) -> None:
        for one in self.launches:
            launch(one.kernel, one.grid, one.args, one.constexprs, num_warps=one.num_warps, num_stages=one.num_stages)


def _replayed_storages() -> set[int]:
    return {a.untyped_storage().data_ptr() for graph in FakeGraph.alive for one in graph.launches for a in one.args
            if isinstance(a, torch.Tensor)}


@contextmanager
def _capture(graph: FakeGraph, **_: Any) -> Iterator[None]:
    with record() as launches:
        yield
    graph.launches = launches
    FakeGraph.captures += 1


def test_a_backend_graph_lives_and_dies_with_its_arena(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.backends.fused import TritonBackend

    net = _net(1)
    backend = TritonBackend(net, device=DEVICE, dtype="fp32", max_shapes=BOUND)
    assert backend.plan.max_shapes == BOUND
    weights = backend.plan.params.live.untyped_storage().data_ptr()
    if DEVICE == "cpu":  # graphs as the GPU path takes them, with the stand-in
        backend.cuda_graph = True
        monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
        monkeypatch.setattr(torch.cuda, "graph", _capture)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    FakeGraph.alive, FakeGraph.captures = weakref.WeakSet(), 0
    arenas = Arenas(monkeypatch)
    for n, h, w in SHAPES + SHAPES[-1:]:
        x = _x(n, h, w)
        with torch.no_grad():
            ref = net.double()(x.double())
        assert (backend.run(x.to(DEVICE)).double().cpu() - ref).abs().max() < 1e-5
        assert len(arenas.live()) <= BOUND
        if DEVICE == "cpu":
            assert len(FakeGraph.alive) <= BOUND
            # every address a kept graph replays lies in a kept arena (or in the weights)
            assert _replayed_storages() <= arenas.storages() | {weights}
    if DEVICE == "cpu":
        assert FakeGraph.captures == len(SHAPES)  # the repeated last shape replayed its graph
        kept = {id(backend.plan.state(*key).graph) for key in backend.plan.shapes}
        assert kept == {id(g) for g in FakeGraph.alive} and len(kept) == BOUND


def test_an_arena_that_does_not_fit_drops_the_other_shapes_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A device of `budget` bytes: the arenas alive plus the new one must fit, else torch's out-of-memory error."""
    plan = FusedSRVGG(_net(), dtype=torch.float32, device=DEVICE)
    small, large, huge = (1, 2, 2), (1, 6, 6), (2, 9, 9)
    budget = plan.arena_bytes(*large) + plan.arena_bytes(*small)
    assert 2 * plan.arena_bytes(*small) + plan.arena_bytes(*large) > budget > plan.arena_bytes(*large)
    assert plan.arena_bytes(*huge) > budget
    made: list[weakref.ref[torch.Tensor]] = []
    real = packing.carve
    tries: list[int] = []

    def carve(specs: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        need = packing.arena_layout(specs)[1]
        held = sum(t.numel() for ref in made if (t := ref()) is not None)
        tries.append(need)
        if held + need > budget:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        base, views = real(specs, device)
        made.append(weakref.ref(base))
        return base, views

    monkeypatch.setattr(packing, "carve", carve)
    plan.buffers(*small)
    plan.buffers(1, 2, 3)
    assert len(tries) == 2
    plan.buffers(*large)  # does not fit beside the two: both dropped, then it does
    assert plan.shapes == [large] and len(tries) == 4
    need = plan.arena_bytes(*huge)
    with pytest.raises(torch.OutOfMemoryError, match=rf"\(2, 3, 9, 9\) needs {need} bytes") as e:
        plan.buffers(*huge)
    assert "smaller tile or batch" in str(e.value)
    assert plan.shapes == [] and len(tries) == 6  # one retry, with nothing else kept


def test_probing_a_size_allocates_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.backends.fused import TritonBackend

    backend = TritonBackend(_net(), device=DEVICE, dtype="fp32", max_shapes=1)
    arenas = Arenas(monkeypatch)
    backend.run(_x(1, 3, 4).to(DEVICE))
    assert backend.bytes_per_pixel() > 0 and backend.plan.arena_bytes(1, 5, 7) > 0
    backend.run(_x(1, 3, 4).to(DEVICE))
    assert len(arenas.made) == 1 and backend.plan.shapes == [(1, 3, 4)]  # the probe took no kept shape's place
    assert backend.plan.arena_bytes(1, 3, 4) == arenas.live()[0].numel()


def test_a_native_plan_records_more_shapes_than_the_bound() -> None:
    """build_plan records one shape at a time (its own arena only): a bound below the shape count changes nothing."""
    import kernels.plan as P
    from kernels.fused import fused_network

    shapes = [(n, 3, h, w) for n, h, w in SHAPES]
    net = _net()
    plans = []
    for bound in (1, len(SHAPES)):
        fused = fused_network(net, "fp32")
        fused.max_shapes = bound
        plans.append(P.build_plan(fused, shapes, compile=False))
        assert len(fused.shapes) == min(bound, len(SHAPES))
    assert plans[0].shapes == plans[1].shapes and plans[0].launches == plans[1].launches
    assert plans[0].weights == plans[1].weights
