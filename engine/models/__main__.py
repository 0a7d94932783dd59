"""`python -m engine.models list`: the published models we know and where each is on this machine;
`python -m engine.models fetch NAME [--trust-unverified]`: download one into the cache."""

from __future__ import annotations

import argparse
import sys

from .pretrained import PRETRAINED, PretrainedError, cache_dir, fetch, where


def _list() -> int:
    rows = [("name", "arch", "scale", "license", "here", "for")]
    for row in PRETRAINED:
        found, _ = where(row.name)
        rows.append((row.name, row.arch, f"×{row.scale}", row.license, found, row.purpose))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    print(f"\ncache: {cache_dir()} (set $ESRGAN_ENGINE_HOME to move it); aliases: "
          + ", ".join(f"{a} = {row.name}" for row in PRETRAINED for a in row.aliases))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.models", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the published models and where each is here (cache, ncnn package, missing)")
    fetch_cmd = commands.add_parser("fetch", help="download a published model into the cache, checked by sha256")
    fetch_cmd.add_argument("name", help="a model's name or alias, any case (see `list`)")
    fetch_cmd.add_argument("--trust-unverified", action="store_true",
                           help="download a file whose authors publish no sha256 (default: refuse)")
    fetch_cmd.add_argument("--quiet", action="store_true", help="no progress bar (default: shown)")
    args = parser.parse_args(argv)
    if args.command == "list":
        return _list()
    try:
        path = fetch(args.name, trust_unverified=args.trust_unverified, progress=not args.quiet)
    except PretrainedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
