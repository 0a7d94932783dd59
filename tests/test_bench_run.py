"""`python bench/run.py --quick` as CI runs it, its JSON against bench/schema.json, its figures against their
definitions, and README's performance section against the committed results (bench/report.py)."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from engine.machine import cpu_has_bf16

jsonschema = pytest.importorskip("jsonschema")

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "bench" / "schema.json").read_text())

sys.path.insert(0, str(REPO / "bench"))
import report  # noqa: E402  (bench/report.py)

run = report.load_run()
from bench import measure  # noqa: E402  (bench/measure.py)


def validate(doc: dict[str, Any]) -> None:
    jsonschema.validate(doc, SCHEMA, cls=jsonschema.Draft202012Validator)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One `python bench/run.py --quick` in a subprocess, as a user's shell runs it (no TRITON_INTERPRET)."""
    out = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(out.glob("*/*-quick.json"))
    assert len(files) == 1, f"expected one results file under {out}, found {files}"
    return {"stdout": proc.stdout, "stderr": proc.stderr, "path": files[0], "doc": json.loads(files[0].read_text()),
            "seconds": seconds}


def test_quick_run_prints_the_table_with_pytorch_and_onnx_runtime_and_their_ratio(quick: dict[str, Any]) -> None:
    out = quick["stdout"]
    print(out)
    print(f"bench/run.py --quick took {quick['seconds']:.0f} s")
    for workload in run.QUICK:
        section = out.split(f"## {workload.name}:")[1].split("\n## ")[0]
        assert "\n| PyTorch eager fp32 | fp32 |" in section
        assert "\n| ONNX Runtime fp32 | fp32 |" in section
        assert "ONNX Runtime fp32 " in section.split("each backend's:")[1]  # the ratio line
    doc = quick["doc"]
    for w in doc["workloads"]:
        rows = {r["backend"]: r for r in w["rows"]}
        ratio = rows["torch-fp32"]["latency_ms"]["median"] / rows["onnxruntime-fp32"]["latency_ms"]["median"]
        assert rows["onnxruntime-fp32"]["vs_baseline"] == pytest.approx(ratio)
        assert f"ONNX Runtime fp32 {ratio:.2f}×" in out


def test_quick_run_json_validates_and_the_schema_can_fail(quick: dict[str, Any]) -> None:
    doc = quick["doc"]
    validate(doc)
    broken = []
    for mutate in (lambda d: d["workloads"][0]["rows"][0].pop("tflops"),
                   lambda d: d["workloads"][0]["rows"][0]["latency_ms"].update(median=-1.0),
                   lambda d: d["workloads"][0]["rows"][0].update(dtype="fp8"),
                   lambda d: d["conditions"].pop("commit"),
                   lambda d: d["workloads"][0]["unavailable"].append({"backend": "x", "label": "x", "reason": ""})):
        bad = copy.deepcopy(doc)
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError):
            validate(bad)
        broken.append(bad)
    assert len(broken) == 5


def test_quick_run_figures_follow_their_definitions(quick: dict[str, Any]) -> None:
    """Each derived figure recomputed from the raw times and the counted multiply-adds."""
    from engine import models as M
    from engine.models.flops import macs_per_pixel

    doc = quick["doc"]
    net, _ = M.load(REPO / "weights" / "tiny_x4.safetensors")
    # the shipped default model: RRDBNet nf 32, gc 16, 2 blocks, ×4 (closed form in tests/test_flops.py)
    assert macs_per_pixel(net) == 715_104
    for w in doc["workloads"]:
        n, c, h, wd = w["input"]
        assert w["macs_per_pixel"] == 715_104
        assert w["flops_per_call"] == 2 * 715_104 * n * h * wd
        assert w["output"] == [n, 3, 4 * h, 4 * wd]
        base = next(r for r in w["rows"] if r["backend"] == "torch-fp32")
        for r in w["rows"]:
            times = np.asarray(r["times_ms"])
            assert len(times) == doc["conditions"]["repeat"]
            median = float(np.median(times))
            assert r["latency_ms"]["median"] == pytest.approx(median)
            assert r["latency_ms"]["p20"] <= median <= r["latency_ms"]["p80"]
            assert r["fps"] == pytest.approx(n / (median / 1e3))
            assert r["output_mpix_s"] == pytest.approx(n * 16 * h * wd / (median / 1e3) / 1e6)
            assert r["tflops"] == pytest.approx(w["flops_per_call"] / (median / 1e3) / 1e12)
            peak = doc["peaks"]["cpu"][r["dtype"]]["tflops"]
            assert r["peak_fraction"] == pytest.approx(r["tflops"] / peak)
            assert r["vs_baseline"] == pytest.approx(base["latency_ms"]["median"] / median)
            assert r["build_s"] > 0 and r["set_alpha_ms"] > 0
            # every backend runs the same network: a wrong one would show here (fp32 rows are the reference's
            # own numerics up to reassociation; bf16 keeps 8 mantissa bits)
            floor = 40.0 if r["dtype"] == "bf16" else 60.0
            assert r["psnr_db"] is None or r["psnr_db"] > floor, (r["backend"], r["psnr_db"])
        assert base["psnr_db"] is None and base["max_abs_diff"] == 0  # the reference's own path


def test_quick_run_times_a_clip_end_to_end_beside_the_engine_alone(quick: dict[str, Any]) -> None:
    """The video workload: every row has the clip's frames/s (decode + engine + encode, the row's own fps), the engine
    alone on the same frames, their ratio and each stage's busy share; the table shows them."""
    w = next(w for w in quick["doc"]["workloads"] if w["name"] == "quick-video")
    assert w["input"][0] == 8 and "upscale_video" in w["mode"]
    assert w["rows"]
    for r in w["rows"]:
        v = r["video"]
        assert v["frames"] == 8 and v["pipeline_fps"] == pytest.approx(r["fps"])
        assert v["pipeline_vs_engine"] == pytest.approx(v["pipeline_fps"] / v["engine_fps"])
        assert 0 < v["busy"]["engine"] <= 1 and 0 <= v["busy"]["decode"] <= 1 and 0 <= v["busy"]["encode"] <= 1
    section = quick["stdout"].split("## quick-video:")[1].split("\n## ")[0]
    assert "| backend | clip frames/s (decode + engine + encode) | engine-only frames/s |" in section
    assert not any("video" in r for r in quick["doc"]["workloads"][0]["rows"])  # frame workloads have none


def test_quick_run_lists_every_backend_that_did_not_run_with_its_reason(quick: dict[str, Any]) -> None:
    for w in quick["doc"]["workloads"]:
        ran = {r["backend"] for r in w["rows"]}
        missing = {u["backend"]: u["reason"] for u in w["unavailable"]}
        assert ran | set(missing) == {b.key for b in run.backend_specs()} and not ran & set(missing)
        assert {"torch-fp32", "torch-channels-last", "onnxruntime-fp32"} <= ran
        if cpu_has_bf16():
            assert "torch-bf16" in ran
        else:  # emulated bf16 is tens of times slower than fp32 (AVX2-only CPUs): listed, not timed
            assert "no bf16 instructions" in missing["torch-bf16"]
        for key in ("tensorrt-fp16", "tensorrt-int8", "triton-fp16", "triton-int8", "native-fp16"):
            assert "GPU" in missing[key]
        assert "fp16" in missing["torch-fp16"]


def test_quick_run_draws_its_chart(quick: dict[str, Any]) -> None:
    pytest.importorskip("matplotlib")
    png = quick["path"].with_suffix(".png")
    image = cv2.imread(str(png))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 400
    assert image.std() > 10  # bars and text, not a blank canvas


def test_memory_counts_an_allocation_made_inside_it() -> None:
    """In a fresh process, as bench/run.py runs (the test process's own history of allocations and frees made the
    resident-size reading unreliable here once in CI)."""
    code = """
import sys, numpy as np, torch
sys.path.insert(0, sys.argv[1])
import report
run = report.load_run()
from bench import measure
with measure.Memory(torch.device("cpu")) as mem:
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    block.sum()
with measure.Memory(torch.device("cpu")) as small:
    pass
print(mem.peak, small.peak)
"""
    proc = subprocess.run([sys.executable, "-c", code, str(REPO / "bench")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak, small = proc.stdout.split()
    if peak == "None":
        pytest.skip("this system has no /proc/self/clear_refs")
    assert 60 * 2**20 < int(peak) < 200 * 2**20, peak
    assert int(small) < 16 * 2**20, small


def test_psnr_and_percentiles_follow_their_definitions() -> None:
    a = np.zeros((4, 4), np.uint8)
    b = a.copy()
    b[0, 0] = 16
    value, largest = measure.psnr(b, a, 255.0)
    assert value == pytest.approx(10 * np.log10(255.0**2 / (16**2 / 16))) and largest == 16
    assert measure.psnr(a, a, 255.0) == (None, 0.0)
    lat = measure.percentiles([0.001 * k for k in range(1, 11)])
    assert lat == {"median": pytest.approx(5.5), "p20": pytest.approx(2.8), "p80": pytest.approx(8.2)}


def test_readme_and_docs_benchmark_sections_are_made_from_the_committed_results() -> None:
    """README's summary table and docs/benchmarks.md's full tables are exactly what bench/report.py renders from
    bench/results (what `python bench/report.py --check` checks)."""
    for path, now, rendered in report.updated(REPO / "README.md", REPO / "docs" / "benchmarks.md",
                                              REPO / "bench" / "results"):
        assert rendered == now, f"{path.name}'s benchmark results are out of date: run python bench/report.py"
    runs = report.latest_runs(REPO / "bench" / "results")
    assert runs, "no full run is committed under bench/results/<device>/"
    for _, doc in runs:
        validate(doc)


def test_readme_summary_has_one_row_per_measured_backend() -> None:
    """One table: a row per (device, workload, backend) that ran, its speed-up as the run computed it; the
    workloads a device skipped are named below it; the full tables go to docs/benchmarks.md."""
    results = REPO / "bench" / "results"
    summary = report.render_summary(results)
    rows = [line for line in summary.splitlines() if line.startswith("| ") and not line.startswith("| device")]
    expected = [(doc["conditions"]["device"], w["name"], r) for _, doc in report.latest_runs(results)
                for w in doc["workloads"] if not w.get("skipped") for r in w["rows"]]
    assert len(rows) == len(expected) > 0
    for line, (device, workload, r) in zip(rows, expected, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:4] == [device, f"`{workload}`", r["label"], r["dtype"]]
        # "—" where the run left out the baseline (PyTorch fp32), as a GPU run of a few backends does
        assert cells[6] == ("—" if r["vs_baseline"] is None else f"{r['vs_baseline']:.2f}×")
    assert summary.count("](docs/benchmarks.md)") == 1
    for _, doc in report.latest_runs(results):
        for w in doc["workloads"]:
            if w.get("skipped"):
                assert f"`{w['name']}`" in summary and w["skipped"] in summary
    full = report.render_full(results)
    assert "](../bench/results/" in full and "| backend | dtype | median ms (p20–p80) |" in full


def test_report_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    readme, docs = tmp_path / "README.md", tmp_path / "benchmarks.md"
    readme.write_text(f"x\n{report.BEGIN}\nold\n{report.END}\n")
    docs.write_text(f"y\n{report.FULL_BEGIN}\n{report.FULL_END}\n")
    args = ["--readme", str(readme), "--docs", str(docs), "--results", str(REPO / "bench" / "results")]
    assert report.main(["--check", *args]) == 1
    assert "old" in readme.read_text()  # --check changes nothing
    assert report.main(args) == 0 and report.main(["--check", *args]) == 0
    assert "| device | workload |" in readme.read_text() and "#### default-cpu" in docs.read_text()


def test_report_picks_the_newest_full_run_per_device(tmp_path: Path) -> None:
    doc = {"conditions": {"created": "2026-01-01T00:00:00Z", "quick": False}}
    for name, created, quick in (("a", "2026-01-01T00:00:00Z", False), ("b", "2026-02-01T00:00:00Z", False),
                                 ("c-quick", "2026-03-01T00:00:00Z", True)):
        d = copy.deepcopy(doc)
        d["conditions"].update(created=created, quick=quick)
        (tmp_path / "gpu").mkdir(exist_ok=True)
        (tmp_path / "gpu" / f"{name}.json").write_text(json.dumps(d))
    runs = report.latest_runs(tmp_path)
    assert [p.name for p, _ in runs] == ["b.json"]
    with pytest.raises(ValueError, match="bench:begin"):
        report.splice("no markers", "x")
    with pytest.raises(ValueError, match="bench-full:begin"):
        report.splice(f"{report.FULL_END} {report.FULL_BEGIN}", "x", report.FULL_BEGIN, report.FULL_END)


def test_triton_rows_build_time_and_check_under_the_interpreter(tmp_path: Path) -> None:
    """The GPU rows' code (the Triton backend in fp16 and with the calibrated INT8 trunk, set_alpha, the alternating
    timing, PSNR) run here on a tiny frame with the kernels interpreted, so a GPU run does not find their bugs first."""
    import argparse
    import dataclasses

    assert os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
    w = run.Workload("tiny", "8×8 frame", "default", 8, 8, device="cpu")
    keys = ("torch-fp32", "triton-fp16", "triton-int8")
    specs = [dataclasses.replace(s, unavailable=lambda ctx: None) for s in run.backend_specs() if s.key in keys]
    args = argparse.Namespace(warmup=0, repeat=1, peaks={})
    result = run.run_workload(w, specs, args, tmp_path)
    rows = {r["backend"]: r for r in result["rows"]}
    assert set(rows) == set(keys), result["unavailable"]
    assert rows["triton-fp16"]["dtype"] == "fp16" and rows["triton-int8"]["dtype"] == "int8"
    for key in keys:
        assert len(rows[key]["times_ms"]) == 1 and rows[key]["set_alpha_ms"] > 0
        assert rows[key]["peak_fraction"] is None  # no peak given: no share invented
    # 8-bit outputs of the same network: fp16 and the INT8 trunk stay close to the fp32 reference
    assert rows["triton-fp16"]["psnr_db"] is None or rows["triton-fp16"]["psnr_db"] > 45
    assert rows["triton-int8"]["psnr_db"] > 35 and rows["triton-int8"]["max_abs_diff"] > 0


def test_datasheet_peaks_are_looked_up_by_gpu_name() -> None:
    """The PCIe H100 is told apart from the SXM one (names as torch.cuda.get_device_name gives them)."""
    assert measure.datasheet("NVIDIA H100 PCIe") == {"fp16": 756.0, "bf16": 756.0, "int8": 1513.0, "fp32": 51.0}
    assert measure.datasheet("NVIDIA H100 80GB HBM3")["fp16"] == 989.0
    assert measure.datasheet("NVIDIA H200")["int8"] == 1979.0
    assert measure.datasheet("NVIDIA GeForce RTX 4090") is None  # measured instead, and the report says so


def test_published_model_workloads_use_the_real_weights_or_say_they_could_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rrdb23-sized workloads run RealESRGAN_x4plus where it is on this machine; elsewhere random weights of
    the same shape, and the result says why."""
    import engine.models as M

    pretrained = sys.modules["engine.models.pretrained"]
    w = next(w for w in run.WORKLOADS if w.name == "1080p")
    assert w.model == "RealESRGAN_x4plus" and w.fallback == "rrdb23"

    def absent(name: str, **kwargs: Any) -> Path:
        raise pretrained.PretrainedError(f"{name} is not in the cache")

    monkeypatch.setattr(pretrained, "resolve", absent)
    small = dataclasses.replace(w, fallback="msrresnet")
    net, gan, where = run.load_network(small)
    assert net.arch == "msrresnet" and "random msrresnet weights" in where and "RealESRGAN_x4plus is not" in where

    torch.manual_seed(0)
    path = tmp_path / "RealESRGAN_x4plus.safetensors"
    M.save(M.build("rrdbnet", dict(num_feat=8, num_block=1, num_grow_ch=4, scale=4)), path)
    monkeypatch.setattr(pretrained, "resolve", lambda name, **kwargs: path)
    net, gan, where = run.load_network(w)
    assert net.hparams["num_feat"] == 8 and where.startswith("RealESRGAN_x4plus (RealESRGAN_x4plus.safetensors")
    assert not torch.equal(net.conv_first.weight, gan.conv_first.weight)  # a perturbed copy as the GAN endpoint
