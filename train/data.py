"""Training and validation data: image listing and decoding, HR/LR patch datasets.

Images are RGB float32 in [0, 1] throughout. Tensors are CHW. A training sample is a pure function of its key
(image index, sample seed): `train.sampler.InfiniteBatchSampler` hands out the keys, so the sample stream is the
same whatever the number of DataLoader workers, and a run resumed at iteration N sees the batches it would have
seen.

On-the-fly LR patches equal the matching region of MATLAB's `imresize(HR, 1/scale)` of the whole (mod-cropped)
HR image, the way the SR benchmarks make their LR images, at the cost of downscaling only a small box.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from engine import imageio
from train.degradations import imresize

__all__ = [
    "IMAGE_EXTENSIONS",
    "TrainDataset",
    "ValDataset",
    "list_images",
    "load_image",
    "read_image",
]

logger = logging.getLogger("train.data")

IMAGE_EXTENSIONS: frozenset[str] = frozenset(imageio.SUPPORTED_EXTENSIONS)
MAX_PIXELS = imageio.DEFAULT_MAX_PIXELS  # the largest training image (~134 MP, 16384 × 8192)

# Margin, in LR pixels, of the HR box downscaled for an on-the-fly LR patch. The antialiased cubic kernel of a
# 1/scale downscale reaches 2 LR pixels (2·scale HR pixels) each side, so LR pixels 2 or more inside the box
# edge do not see the box edge; 4 leaves room.
_LR_MARGIN = 4


# --- files --------------------------------------------------------------------------------------------------


def list_images(folder: str | Path) -> list[Path]:
    """All image files under `folder`, recursively, sorted by their path relative to `folder`.

    An image file is one whose extension, compared case-insensitively, is in `IMAGE_EXTENSIONS`.

    Raises:
        FileNotFoundError: `folder` does not exist.
        NotADirectoryError: `folder` is not a directory.
        ValueError: `folder` holds no image file.
    """
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"image folder {root} is not a directory")
    paths = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    if not paths:
        raise ValueError(f"no images in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return sorted(paths, key=lambda p: p.relative_to(root).as_posix())


def read_image(path: str | Path) -> np.ndarray | None:
    """`load_image`, with None for a file whose content cannot be decoded. A corrupt file never raises.

    Raises:
        OSError (e.g. FileNotFoundError): the file cannot be read at all.
    """
    try:
        return load_image(path)
    except imageio.ImageError:
        return None


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file into RGB float32 (H, W, 3) in [0, 1], with `engine.imageio.read_image` (the same
    decoder as inference: OpenCV, JPEG EXIF orientation applied, non-ASCII paths).

    8-bit samples are divided by 255, 16-bit by 65535; float samples are kept (clipped to [0, 1]). Gray images
    are repeated to 3 channels, alpha is dropped.

    Raises:
        engine.imageio.ImageError: the content cannot be decoded (empty, corrupt, an unsupported format or sample
            type), or the header gives more than `MAX_PIXELS` pixels (a decompression bomb would take any memory);
            the message names the file and the reason.
        OSError (e.g. FileNotFoundError): the file cannot be read at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    size = imageio.image_size(path)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise imageio.ImageError(f"{path}: {size[1]}×{size[0]} pixels, more than a training image may have "
                                 f"({MAX_PIXELS / 1e6:.0f} MP); crop or downscale it")
    img = imageio.read_image(path, max_pixels=None)
    if img.size == 0:
        raise imageio.ImageError(f"{path}: the image has no pixels")

    if img.dtype == np.uint8:
        out = img.astype(np.float32) / np.float32(255)
    elif img.dtype == np.uint16:
        out = img.astype(np.float32) / np.float32(65535)
    else:
        out = np.clip(np.nan_to_num(img.astype(np.float32)), 0.0, 1.0)

    if out.ndim == 2:
        out = out[:, :, None]
    if out.shape[2] == 1:  # gray
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out[:, :, :3])  # RGB, or RGBA without its alpha


def _relative_name(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _pair_lr(hr_dir: Path, hr_paths: list[Path], lr_dir: Path) -> list[Path]:
    """The LR partner of each HR image: same relative folder and stem, any supported extension.

    Raises:
        ValueError: an HR image has no partner, or a stem has several LR candidates.
    """
    by_key: dict[tuple[str, str], Path] = {}
    for p in list_images(lr_dir):
        rel = p.relative_to(lr_dir)
        key = (rel.parent.as_posix(), rel.stem)
        if key in by_key:
            raise ValueError(f"LR images {_relative_name(by_key[key], lr_dir)} and {rel.as_posix()} in {lr_dir} "
                             f"have the same stem; cannot tell which one to pair")
        by_key[key] = p
    partners: list[Path] = []
    missing: list[str] = []
    for hr in hr_paths:
        rel = hr.relative_to(hr_dir)
        lr = by_key.get((rel.parent.as_posix(), rel.stem))
        if lr is None:
            missing.append(rel.as_posix())
        else:
            partners.append(lr)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{len(missing)} HR image(s) of {hr_dir} have no LR partner (same folder and stem) "
                         f"in {lr_dir}: {shown}")
    return partners


# --- patches --------------------------------------------------------------------------------------------------


def _mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """Drop the bottom rows and right columns of an (H, W, C) image so that H and W are multiples of `scale`."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def _to_chw(img: np.ndarray) -> torch.Tensor:
    """(H, W, C) numpy float32 -> contiguous (C, H, W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def _choose_crop(rng: np.random.Generator, lr_h: int, lr_w: int, lr_size: int) -> tuple[int, int]:
    """Top-left corner (top, left), in LR pixels, of a uniformly random lr_size × lr_size crop of an
    lr_h × lr_w LR image (which must be at least lr_size each way)."""
    top = int(rng.integers(0, lr_h - lr_size + 1))
    left = int(rng.integers(0, lr_w - lr_size + 1))
    return top, left


def _draw_augment(rng: np.random.Generator, use_flip: bool, use_rot: bool) -> tuple[bool, bool, bool]:
    """(hflip, vflip, rot90), each with p = 0.5. All three are always drawn, so the flags do not shift the
    stream."""
    hflip, vflip, rot = (bool(u < 0.5) for u in rng.random(3))
    return hflip and use_flip, vflip and use_flip, rot and use_rot


def _augment(img: torch.Tensor, hflip: bool, vflip: bool, rot: bool) -> torch.Tensor:
    """BasicSR's `augment` on a (C, H, W) tensor: horizontal flip, vertical flip, then a transpose of H and W
    (rotation by 90° combined with a flip), in that order. Returns a contiguous tensor."""
    if hflip:
        img = img.flip(-1)
    if vflip:
        img = img.flip(-2)
    if rot:
        img = img.transpose(-2, -1)
    return img.contiguous()


def _lr_patch(hr: np.ndarray, top: int, left: int, lr_size: int, scale: int) -> torch.Tensor:
    """The (3, lr_size, lr_size) LR patch at LR (top, left) of `imresize(hr, 1/scale)`, computed cheaply.

    Args:
        hr: (H, W, 3) float32 image in [0, 1], H and W multiples of `scale` (mod-cropped).
        top, left: the patch corner in LR pixels.

    Only an HR box around the patch, with a margin of `_LR_MARGIN` LR pixels each side clipped to the image, is
    downscaled. The box is LR-grid aligned; where it is clipped, the box edge is the image edge and MATLAB's
    mirroring is the same as for the whole image, so the patch equals the whole-image result up to float
    rounding.
    """
    lr_h, lr_w = hr.shape[0] // scale, hr.shape[1] // scale
    box_top, box_left = max(0, top - _LR_MARGIN), max(0, left - _LR_MARGIN)
    box_bottom, box_right = min(lr_h, top + lr_size + _LR_MARGIN), min(lr_w, left + lr_size + _LR_MARGIN)
    box = hr[box_top * scale: box_bottom * scale, box_left * scale: box_right * scale]
    lr_box = imresize(_to_chw(box), 1 / scale)
    r, c = top - box_top, left - box_left
    return lr_box[:, r: r + lr_size, c: c + lr_size].contiguous()


# --- datasets -------------------------------------------------------------------------------------------------


class TrainDataset(Dataset):
    """Random HR/LR training patches, keyed by (image index, sample seed).

    Without `lr_dir`, the LR patch is made on the fly: the HR image is mod-cropped to a multiple of `scale`, an
    LR-grid-aligned gt_size × gt_size crop is chosen, and its LR patch is the same region of
    `imresize(mod-cropped HR, 1/scale)` (MATLAB bicubic, clamped). With `lr_dir`, LR images are paired with HR
    images by relative folder and stem, and an LR crop and the HR crop above it are taken.

    The crop, the flips and the rotation come from `np.random.default_rng(seed)` only. An image that cannot be
    read or decoded, is smaller than gt_size, or whose paired LR image does not fit it is skipped for the next
    index, modulo len; the sample reports why in "skipped", once per file and process (the trainer logs each
    reason once, whichever DataLoader worker found it).

    Args:
        hr_dir: folder of HR images (searched recursively).
        scale: the SR factor, a positive integer.
        gt_size: side of the HR patch in pixels, a multiple of `scale`.
        lr_dir: folder of paired LR images, or None to make LR on the fly.
        use_flip: random horizontal and vertical flips.
        use_rot: random transpose of H and W (rotation by 90° up to a flip).

    Raises:
        ValueError: gt_size is not a positive multiple of scale, a folder holds no image, or an HR image has
            no LR partner.
        FileNotFoundError: a folder does not exist.
    """

    def __init__(self, hr_dir: str | Path, *, scale: int, gt_size: int, lr_dir: str | Path | None = None,
                 use_flip: bool = True, use_rot: bool = True) -> None:
        if scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        if gt_size < scale or gt_size % scale:
            raise ValueError(f"gt_size {gt_size} must be a positive multiple of scale {scale}")
        self.hr_dir = Path(hr_dir)
        self.lr_dir = None if lr_dir is None else Path(lr_dir)
        self.scale, self.gt_size, self.lr_size = int(scale), int(gt_size), int(gt_size) // int(scale)
        self.use_flip, self.use_rot = use_flip, use_rot
        self.hr_paths = list_images(self.hr_dir)
        self.names = [_relative_name(p, self.hr_dir) for p in self.hr_paths]
        self.lr_paths = None if self.lr_dir is None else _pair_lr(self.hr_dir, self.hr_paths, self.lr_dir)
        self._unusable: dict[int, str] = {}  # per process: indices found unusable, and why

    def __len__(self) -> int:
        return len(self.hr_paths)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        """The sample of key (image index, sample seed).

        Returns:
            {"lr": float32 (3, gt_size // scale, gt_size // scale), "hr": float32 (3, gt_size, gt_size),
             "name": path of the HR image used, relative to hr_dir, "skipped": why the images passed over were
             unusable, one line each, for the images this process had not found unusable before ("" if none)}.
            Values in [0, 1], tensors contiguous. If image `index` is unusable, the sample is the one of the next
            usable index with the same seed.

        Raises:
            ValueError: no image of the folder is usable.
        """
        index, seed = key
        n = len(self)
        if not 0 <= index < n:
            raise IndexError(f"image index {index} out of range for {n} images")
        skipped: list[str] = []
        for step in range(n):
            i = (index + step) % n
            if i in self._unusable:
                continue
            sample = self._sample(i, seed)
            if sample is not None:
                return {**sample, "skipped": "\n".join(skipped)}
            skipped.append(self._unusable[i])
        reasons = list(self._unusable.values())
        shown = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more" if len(reasons) > 3 else "")
        raise ValueError(f"no usable training image in {self.hr_dir} ({n} image file(s)): {shown}")

    def _skip(self, i: int, why: str) -> None:
        self._unusable[i] = why

    def _read(self, i: int, path: Path, what: str) -> np.ndarray | None:
        try:
            return load_image(path)
        except imageio.ImageError as e:
            self._skip(i, f"{what} cannot be decoded ({str(e).removeprefix(f'{path}: ')})")
        except OSError as e:
            self._skip(i, f"{what} cannot be read ({e.strerror or e})")
        return None

    def _sample(self, i: int, seed: int) -> dict | None:
        """The sample of image i, or None (the reason in `_unusable`) if the image is unusable."""
        name = self.names[i]
        hr = self._read(i, self.hr_paths[i], f"training image {name} in {self.hr_dir}")
        if hr is None:
            return None
        hr = _mod_crop(hr, self.scale)
        lr: np.ndarray | None = None
        if self.lr_paths is not None:
            assert self.lr_dir is not None
            lr_name = _relative_name(self.lr_paths[i], self.lr_dir)
            lr = self._read(i, self.lr_paths[i], f"LR image {lr_name} in {self.lr_dir} (partner of {name})")
            if lr is None:
                return None
            if hr.shape[0] != lr.shape[0] * self.scale or hr.shape[1] != lr.shape[1] * self.scale:
                self._skip(i, f"HR image {self.hr_paths[i]} is {hr.shape[0]}×{hr.shape[1]} after mod-crop, but its LR "
                              f"image {self.lr_paths[i]} is {lr.shape[0]}×{lr.shape[1]}: expected "
                              f"{hr.shape[0] // self.scale}×{hr.shape[1] // self.scale} at scale {self.scale}")
                return None
        h, w = hr.shape[:2]
        if h < self.gt_size or w < self.gt_size:
            self._skip(i, f"training image {name} in {self.hr_dir} is {h}×{w}, smaller than gt_size {self.gt_size} "
                          f"(H×W after mod-crop to a multiple of scale {self.scale})")
            return None

        rng = np.random.default_rng(seed)
        top, left = _choose_crop(rng, h // self.scale, w // self.scale, self.lr_size)
        hr_top, hr_left = top * self.scale, left * self.scale
        hr_patch = _to_chw(hr[hr_top: hr_top + self.gt_size, hr_left: hr_left + self.gt_size])
        if lr is not None:
            lr_patch = _to_chw(lr[top: top + self.lr_size, left: left + self.lr_size])
        elif self.scale == 1:
            lr_patch = hr_patch.clone()
        else:
            lr_patch = _lr_patch(hr, top, left, self.lr_size, self.scale)
        flips = _draw_augment(rng, self.use_flip, self.use_rot)
        return {"lr": _augment(lr_patch, *flips), "hr": _augment(hr_patch, *flips), "name": name}


class ValDataset(Dataset):
    """Whole validation images: the mod-cropped HR image and its LR image.

    LR is `imresize(HR, 1/scale)` of the whole mod-cropped image (MATLAB bicubic, clamped), or the paired image of
    `lr_dir` (same relative folder and stem). Every image is decoded once at construction: unreadable ones, ones
    smaller than `scale` and pairs whose LR image does not have the size of the mod-cropped HR image divided by
    scale are skipped with a warning (logger 'train.data').

    Raises:
        ValueError: no usable image is left (the message gives the first reasons), or an HR image has no LR
            partner.
        FileNotFoundError: a folder does not exist.
    """

    def __init__(self, hr_dir: str | Path, *, scale: int, lr_dir: str | Path | None = None) -> None:
        if scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        self.hr_dir = Path(hr_dir)
        self.lr_dir = None if lr_dir is None else Path(lr_dir)
        self.scale = int(scale)
        hr_paths = list_images(self.hr_dir)
        lr_paths = None if self.lr_dir is None else _pair_lr(self.hr_dir, hr_paths, self.lr_dir)

        self.hr_paths: list[Path] = []
        self.lr_paths: list[Path] | None = None if lr_paths is None else []
        self.names: list[str] = []
        skipped: list[str] = []
        for k, hr_path in enumerate(hr_paths):
            name = _relative_name(hr_path, self.hr_dir)
            why = self._unusable(hr_path, name, None if lr_paths is None else lr_paths[k])
            if why is not None:
                logger.warning("%s; skipping it", why)
                skipped.append(why)
                continue
            if self.lr_paths is not None and lr_paths is not None:
                self.lr_paths.append(lr_paths[k])
            self.hr_paths.append(hr_path)
            self.names.append(name)
        if not self.hr_paths:
            shown = "; ".join(skipped[:3]) + (f"; and {len(skipped) - 3} more" if len(skipped) > 3 else "")
            raise ValueError(f"no usable validation image in {self.hr_dir}: {shown}")

    def _unusable(self, hr_path: Path, name: str, lr_path: Path | None) -> str | None:
        """Why a validation image (and its LR partner) cannot be used, or None."""
        images = []
        for path, what in ((hr_path, f"validation image {name} in {self.hr_dir}"),
                           (lr_path, f"LR image {lr_path} (partner of {name})")):
            if path is None:
                continue
            try:
                images.append(load_image(path))
            except imageio.ImageError as e:
                return f"{what} cannot be decoded ({str(e).removeprefix(f'{path}: ')})"
            except OSError as e:
                return f"{what} cannot be read ({e.strerror or e})"
        hr = images[0]
        h, w = _mod_crop(hr, self.scale).shape[:2]
        if h == 0 or w == 0:
            return (f"validation image {name} in {self.hr_dir} is {hr.shape[0]}×{hr.shape[1]}, smaller than scale "
                    f"{self.scale}")
        if lr_path is not None:
            try:
                self._check_pair_size(hr_path, (h, w), lr_path, images[1].shape[:2])
            except ValueError as e:
                return str(e)
        return None

    def _check_pair_size(self, hr_path: Path, hr_hw: tuple[int, int], lr_path: Path, lr_hw: tuple[int, ...]) -> None:
        if hr_hw[0] != lr_hw[0] * self.scale or hr_hw[1] != lr_hw[1] * self.scale:
            raise ValueError(
                f"HR image {hr_path} is {hr_hw[0]}×{hr_hw[1]} after mod-crop, but its LR image {lr_path} is "
                f"{lr_hw[0]}×{lr_hw[1]}: expected {hr_hw[0] // self.scale}×{hr_hw[1] // self.scale} at scale "
                f"{self.scale}")

    def __len__(self) -> int:
        return len(self.hr_paths)

    def __getitem__(self, i: int) -> dict:
        """{"lr": float32 (3, h, w), "hr": float32 (3, h·scale, w·scale), "name": HR path relative to hr_dir}.

        Raises:
            ValueError: an image decoded at construction no longer decodes.
            OSError: an image cannot be read any more (e.g. deleted).
        """
        hr = read_image(self.hr_paths[i])
        if hr is None:
            raise ValueError(f"validation image {self.hr_paths[i]} decoded at construction but not any more")
        hr = _mod_crop(hr, self.scale)
        hr_t = _to_chw(hr)
        if self.lr_paths is not None:
            lr = read_image(self.lr_paths[i])
            if lr is None:
                raise ValueError(f"LR image {self.lr_paths[i]} decoded at construction but not any more")
            self._check_pair_size(self.hr_paths[i], hr.shape[:2], self.lr_paths[i], lr.shape[:2])
            lr_t = _to_chw(lr)
        elif self.scale == 1:
            lr_t = hr_t.clone()
        else:
            lr_t = imresize(hr_t, 1 / self.scale).contiguous()
        return {"lr": lr_t, "hr": hr_t, "name": self.names[i]}
