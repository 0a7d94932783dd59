"""`python bench/report.py [--check]`: README's performance section, made from the latest full run of each device.

Reads every `bench/results/<device>/*.json` written by `python bench/run.py` (`--quick` runs are smoke tests and are
left out), keeps the newest per device by its `created` time, renders each as `bench/run.py` prints it (headings one
level deeper) with a link to its JSON and chart, and rewrites README.md between `<!-- bench:begin -->` and
`<!-- bench:end -->`. `--check` changes nothing and exits 1 when README does not match the results (a test runs it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
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


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


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


def render(results: Path, root: Path = REPO) -> str:
    runs = latest_runs(results)
    if not runs:
        return "No full run has been recorded yet: `python bench/run.py`.\n"
    parts = []
    for path, doc in runs:
        rel = path.relative_to(root).as_posix()
        chart = path.with_suffix(".png")
        link = f"Results: [`{rel}`]({rel})"
        if chart.is_file():
            crel = chart.relative_to(root).as_posix()
            link += f", chart: [`{crel}`]({crel})"
        parts.append(load_run().markdown(doc, level=3).rstrip("\n") + "\n\n" + link + ".\n")
    return "\n".join(parts)


def splice(readme: str, section: str) -> str:
    if readme.count(BEGIN) != 1 or readme.count(END) != 1 or readme.index(BEGIN) > readme.index(END):
        raise ValueError(f"README.md must hold one {BEGIN} … {END} pair for the performance section")
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{section}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if README is out of date; change nothing "
                   "(default: rewrite README)")
    p.add_argument("--results", default=str(REPO / "bench" / "results"), help="default: bench/results")
    p.add_argument("--readme", default=str(REPO / "README.md"), help="default: README.md")
    args = p.parse_args(argv)
    readme = Path(args.readme)
    old = readme.read_text()
    new = splice(old, render(Path(args.results)))
    if args.check:
        if new != old:
            print(f"{readme}: the performance section is not what bench/results holds: run python bench/report.py",
                  file=sys.stderr)
            return 1
        return 0
    if new != old:
        atomic_write(readme, lambda tmp: Path(tmp).write_text(new))
        print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
