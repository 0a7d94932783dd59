"""`python bench/report.py [--check]`: the benchmark results in README (one summary table) and docs/benchmarks.md
(every table), made from the latest full run of each device.

Reads every `bench/results/<device>/*.json` written by `python bench/run.py` (`--quick` runs are smoke tests and are
left out) and keeps the newest per device by its `created` time. README.md gets, between `<!-- bench:begin -->` and
`<!-- bench:end -->`, one table: each backend that ran on each workload, with its throughput and its speed-up over
PyTorch eager fp32. docs/benchmarks.md gets, between `<!-- bench-full:begin -->` and `<!-- bench-full:end -->`, each
run as `bench/run.py` prints it (its title a level-3 heading) with links to its JSON and chart. `--check` changes
nothing and exits 1 when either file does not match the results (a test runs it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.atomic import atomic_write  # noqa: E402


def load_run() -> Any:
    """bench/run.py as a module (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("esrgan_bench_run", REPO / "bench" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"  # README.md: the summary table
FULL_BEGIN, FULL_END = "<!-- bench-full:begin -->", "<!-- bench-full:end -->"  # docs/benchmarks.md: every table
DOCS = REPO / "docs" / "benchmarks.md"


def latest_runs(results: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(path, run) of the newest full run in each device folder, by device name."""
    latest: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in sorted(results.glob("*/*.json")):
        if path.stem.endswith("-quick"):
            continue
        doc = json.loads(path.read_text())
        if doc.get("conditions", {}).get("quick"):
            continue
        device = path.parent.name
        if device not in latest or doc["conditions"]["created"] > latest[device][1]["conditions"]["created"]:
            latest[device] = (path, doc)
    return [latest[d] for d in sorted(latest)]


def _link(path: Path, page_dir: Path) -> str:
    """A Markdown link to `path` from a page in `page_dir`, its text the path from the repository root."""
    rel = os.path.relpath(path, page_dir).replace(os.sep, "/")
    try:
        shown = path.relative_to(REPO).as_posix()
    except ValueError:
        shown = rel
    return f"[`{shown}`]({rel})"


def _files(path: Path, page_dir: Path) -> str:
    text = "Results: " + _link(path, page_dir)
    chart = path.with_suffix(".png")
    if chart.is_file():
        text += ", chart: " + _link(chart, page_dir)
    return text + "."


NO_RUN = "No full run has been recorded yet: `python bench/run.py`.\n"


def render_full(results: Path, page_dir: Path = DOCS.parent) -> str:
    """Every table of each device's newest full run, for a page in `page_dir` (links are relative to it)."""
    runs = latest_runs(results)
    if not runs:
        return NO_RUN
    run = load_run()
    return "\n".join(run.markdown(doc, level=3).rstrip("\n") + "\n\n" + _files(path, page_dir) + "\n"
                     for path, doc in runs)


def render_summary(results: Path, page_dir: Path = REPO, full_page: Path = DOCS) -> str:
    """One table over every device: each backend that ran on each workload, its median time, output megapixels/s,
    speed-up over PyTorch eager fp32 (its median time ÷ the backend's) and PSNR against it; then, per device, its
    conditions and the workloads it did not run. Links are relative to `page_dir`."""
    runs = latest_runs(results)
    if not runs:
        return NO_RUN
    num = load_run()._num
    lines = ["| device | workload | backend | dtype | median ms | out MP/s | vs PyTorch fp32 | PSNR vs fp32 dB |",
             "|---|---|---|---|---|---|---|---|"]
    notes = []
    for path, doc in runs:
        c, v = doc["conditions"], doc["conditions"]["versions"]
        skipped: dict[str, list[str]] = {}
        for w in doc["workloads"]:
            if w.get("skipped"):
                skipped.setdefault(w["skipped"], []).append(f"`{w['name']}`")
                continue
            for r in w["rows"]:
                psnr = "∞ (identical)" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}"
                vs = "—" if r["vs_baseline"] is None else f"{r['vs_baseline']:.2f}×"
                lines.append(f"| {c['device']} | `{w['name']}` | {r['label']} | {r['dtype']} | "
                             f"{num(r['latency_ms']['median'], 3)} | {num(r['output_mpix_s'])} | {vs} | {psnr} |")
        sha = (c["commit"]["sha"] or "unknown")[:10]
        note = (f"- {c['device']}: {c['created'][:10]}, commit {sha}, torch {v['torch']}, onnxruntime "
                f"{v['onnxruntime']}, TensorRT {v['tensorrt'] or 'not installed'}, CUDA {v['cuda'] or '—'}")
        if skipped:
            note += "; not run: " + "; ".join(f"{', '.join(names)} ({why})" for why, names in skipped.items())
        notes.append(note + ". " + _files(path, page_dir))
    full = os.path.relpath(full_page, page_dir).replace(os.sep, "/")
    return ("\n".join(lines) + "\n\n" + "\n".join(notes) + "\n\n"
            f"Every figure (latency percentiles, TFLOP/s and share of peak, memory, build and `set_alpha` time), the "
            f"backends that could not run and why, and how it is measured: [{full}]({full}).\n")


def splice(text: str, section: str, begin: str = BEGIN, end: str = END, name: str = "README.md") -> str:
    """`text` with everything between its one `begin` … `end` pair replaced by `section`."""
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"{name} must hold one {begin} … {end} pair for the benchmark results")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{section}{end}{tail}"


def updated(readme: Path, docs: Path, results: Path) -> list[tuple[Path, str, str]]:
    """(file, its text now, the text the results give) for README and docs/benchmarks.md."""
    old_readme, old_docs = readme.read_text(), docs.read_text()
    summary = render_summary(results, readme.parent, docs)
    full = render_full(results, docs.parent)
    return [(readme, old_readme, splice(old_readme, summary, name=str(readme))),
            (docs, old_docs, splice(old_docs, full, FULL_BEGIN, FULL_END, name=str(docs)))]


def _write(tmp: str, text: str) -> None:
    Path(tmp).write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if README or docs/benchmarks.md is out of date; "
                   "change nothing (default: rewrite them)")
    p.add_argument("--results", default=str(REPO / "bench" / "results"), help="default: bench/results")
    p.add_argument("--readme", default=str(REPO / "README.md"), help="default: README.md")
    p.add_argument("--docs", default=str(DOCS), help="default: docs/benchmarks.md")
    args = p.parse_args(argv)
    stale = 0
    for path, old, new in updated(Path(args.readme), Path(args.docs), Path(args.results)):
        if new == old:
            continue
        if args.check:
            print(f"{path}: the benchmark results in it are not what bench/results holds: run python bench/report.py",
                  file=sys.stderr)
            stale = 1
        else:
            atomic_write(path, partial(_write, text=new))
            print(f"updated {path}")
    return stale


if __name__ == "__main__":
    sys.exit(main())
