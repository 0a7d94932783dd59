"""`python -m train.photos OUT_DIR`: the training set of the shipped default model.

Writes the public-domain / CC0 photos and textures that scikit-image carries as PNG files: OUT_DIR/train (the
training images) and OUT_DIR/val (held out: three colour photos never seen in training). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

# name in skimage.data → licence as scikit-image states it
TRAIN = {
    "astronaut": "public domain (NASA)",
    "brick": "CC0 (CC0Textures)",
    "camera": "CC0 (Lav Varshney)",
    "cell": "CC0",
    "coins": "no known copyright restrictions",
    "grass": "CC0 (CC0Textures)",
    "gravel": "CC0 (CC0Textures)",
    "hubble_deep_field": "public domain (NASA)",
    "immunohistochemistry": "no known copyright restrictions",
    "retina": "CC0 1.0",
    "text": "public domain",
    "clock": "public domain (Stefan van der Walt)",
}
VAL = {
    "chelsea": "CC0 (Stefan van der Walt)",
    "coffee": "CC0 (Rachel Michetti)",
    "rocket": "public domain (SpaceX)",
}


def export(out: Path) -> None:
    import skimage.data

    for split, names in (("train", TRAIN), ("val", VAL)):
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            image = np.asarray(getattr(skimage.data, name)())
            if image.ndim == 3:
                image = cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2BGR)
            if not cv2.imwrite(str(folder / f"{name}.png"), image):
                raise OSError(f"cannot write {folder / name}.png")
    (out / "LICENSES.txt").write_text("".join(f"{split}/{n}.png: {lic}\n" for split, names in
                                              (("train", TRAIN), ("val", VAL)) for n, lic in names.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.photos", description=__doc__.splitlines()[0])
    p.add_argument("out", help="output folder (train/ and val/ are created in it)")
    args = p.parse_args(argv)
    try:
        export(Path(args.out))
    except ImportError:
        print("error: scikit-image is needed for the photos: pip install scikit-image", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(TRAIN)} training and {len(VAL)} held-out images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
