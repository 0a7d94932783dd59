"""`python -m engine.interp A B --alpha 0.8 -o out.safetensors`: blend two checkpoints of one network.

A is the PSNR-oriented network (alpha 0), B its GAN fine-tune (alpha 1). Both may be in any format that
`engine.models.load` accepts; the result is written as our safetensors, with alpha and the sources in its
metadata.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .atomic import same_file
from .models import CheckpointError, InterpolationError, interpolate, load, save
from .models.registry import same_network


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.interp", description=__doc__.splitlines()[0])
    parser.add_argument("a", help="checkpoint at alpha = 0 (the PSNR-oriented network)")
    parser.add_argument("b", help="checkpoint at alpha = 1 (the GAN network)")
    parser.add_argument("--alpha", type=float, required=True, help="weight of B, in [0, 1] (no default)")
    parser.add_argument("-o", "--output", required=True, help="output .safetensors file (no default)")
    args = parser.parse_args(argv)

    out = Path(args.output)
    if out.suffix != ".safetensors":
        parser.error(f"-o/--output {out}: the blend is written as safetensors; name it *.safetensors")
    if not (math.isfinite(args.alpha) and 0.0 <= args.alpha <= 1.0):
        parser.error(f"--alpha {args.alpha}: give a weight in [0, 1] (0: A, 1: B)")
    for name, source in (("A", args.a), ("B", args.b)):
        if same_file(out, Path(source)):
            print(f"error: -o {out} is the input {name} ({source}): inputs are never written over; choose another -o",
                  file=sys.stderr)
            return 2
    try:
        net_a, info_a = load(args.a)
        net_b, info_b = load(args.b)
        if not same_network(net_a, net_b):
            raise InterpolationError(f"{args.a} is a {info_a.arch} {info_a.hparams} but {args.b} is a "
                                     f"{info_b.arch} {info_b.hparams}: only two versions of one network blend")
        net_a.load_state_dict(interpolate(net_a, net_b, args.alpha))
        save(net_a, out, metadata={"alpha": repr(args.alpha), "interp_a": str(args.a), "interp_b": str(args.b)})
    except (CheckpointError, InterpolationError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: -o {out}: cannot be written ({e.strerror or e}); nothing was changed there", file=sys.stderr)
        return 2
    name = info_a.name or info_a.arch
    print(f"{out}: {name} ×{info_a.scale}, alpha={args.alpha} ({args.a} → {args.b})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
