"""Your own images: a folder of PNG and JPEG files read into uint8 grey levels [N, C, S, S].

Layout, as torchvision's ImageFolder: image files directly in the folder (no labels), or in
class subfolders (label i is the i-th subfolder in sorted order; files may sit deeper inside
a class subfolder). A single subfolder is one class, which labels nothing: its images come
without labels. Files ending in .png, .jpg or .jpeg (any case) are read; hidden files and
folders (a name starting with ".") and files with other endings are ignored.

Each image becomes an S x S square as torchvision's ``Resize(S, bicubic)`` then
``CenterCrop(S)`` make it (the pipeline of lucidrains' denoising-diffusion-pytorch
``Dataset``): the shorter side is resampled to S with PIL's bicubic filter, antialiased (its
support widens with the downscale factor), the longer side to floor(S * long / short); then
the centred S x S square is kept. An image whose shorter side is under S is refused rather
than upscaled: upscaling invents smooth detail that the bound would then score.

Modes, checked so that the stored levels are the file's own: grey (1, L) and colour (RGB, P)
are read as they are; an image with an alpha channel or a transparency entry (LA, RGBA, PA,
tRNS) only when every pixel is opaque, and the alpha is then dropped. Other modes (16-bit
grey, CMYK, ...) are refused: converting them would change the levels. When any image is in
colour, the grey ones become colour with R = G = B, which is exact and keeps every colour
image's colour; a folder of grey images only gives one channel. A JPEG's EXIF orientation is
applied, so images stand as viewers show them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ddpm.errors import DataError, DatasetNotFoundError

EXTENSIONS = (".png", ".jpg", ".jpeg")
NUM_LEVELS = 256
GREY_MODES = ("1", "L", "LA")
COLOUR_MODES = ("RGB", "RGBA", "P", "PA")
MAX_LISTED = 10  # bad files named one per line in one error; the rest are counted


class FolderFiles(NamedTuple):
    """The image files of a folder, in sorted order, and their class labels."""

    files: tuple[Path, ...]
    labels: np.ndarray | None  # int64 [N] class indices; None without class subfolders
    class_names: tuple[str, ...]  # the class subfolders' names, label i naming class_names[i]


class BadImage(Exception):
    """Why one file cannot be used; read_images gathers them into one DataError."""


def find_images(folder: str | os.PathLike[str]) -> FolderFiles:
    """The image files in ``folder`` (flat, or in class subfolders) and their labels.

    DatasetNotFoundError (naming data.folder) when the folder does not exist or holds no
    image files; DataError when it mixes image files and subfolders, or a class subfolder
    holds no image files.
    """
    root = Path(folder)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DatasetNotFoundError(f"data.folder={str(folder)!r} {what} (a relative path starts at the working "
                                   f"directory {os.getcwd()}); expected a folder of PNG or JPEG images")
    entries = [p for p in sorted(root.iterdir()) if not p.name.startswith(".")]
    subfolders = [p for p in entries if p.is_dir()]
    images = [p for p in entries if p.is_file() and _is_image_name(p.name)]
    if subfolders and images:
        raise DataError(f"{root} holds both image files ({images[0].name}, ...) and subfolders "
                        f"({subfolders[0].name}, ...); put every image in a class subfolder, or none")
    if not subfolders:
        if not images:
            others = [p.name for p in entries if p.is_file()]
            found = f"; it holds {len(others)} other files, e.g. {others[0]}" if others else ""
            raise DatasetNotFoundError(f"data.folder={str(folder)!r} holds no image files (names ending in "
                                       f"{', '.join(EXTENSIONS)}, any case; hidden files are ignored){found}")
        return FolderFiles(tuple(images), None, ())
    per_class = [_images_under(d) for d in subfolders]
    for sub, files in zip(subfolders, per_class, strict=True):
        if not files:
            raise DataError(f"{sub}: class subfolder holds no image files (names ending in {', '.join(EXTENSIONS)}); "
                            "add images or remove the subfolder")
    files = tuple(p for class_files in per_class for p in class_files)
    if len(subfolders) == 1:
        return FolderFiles(files, None, ())
    labels = np.repeat(np.arange(len(subfolders), dtype=np.int64), [len(f) for f in per_class])
    return FolderFiles(files, labels, tuple(d.name for d in subfolders))


def read_images(files: tuple[Path, ...] | list[Path], image_size: int) -> np.ndarray:
    """The files as uint8 grey levels [N, C, image_size, image_size], in the given order.

    C is 3 when any image is in colour (grey ones then get R = G = B), else 1. DataError
    naming each file that cannot be read, is too small or has a refused mode.
    """
    if not files:
        raise ValueError("read_images needs at least one file")
    arrays, bad = [], []
    for path in files:
        try:
            arrays.append(load_image(path, image_size))
        except BadImage as err:
            bad.append(f"{path}: {err}")
    if len(bad) == 1:
        raise DataError(bad[0])
    if bad:
        listed = "\n".join(f"  {line}" for line in bad[:MAX_LISTED])
        more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise DataError(f"{len(bad)} of {len(files)} image files cannot be used (fix or remove them):\n{listed}{more}")
    channels = max(a.shape[0] for a in arrays)
    return np.stack([np.repeat(a, channels // a.shape[0], axis=0) for a in arrays])


def load_image(path: str | os.PathLike[str], image_size: int) -> np.ndarray:
    """One image file as uint8 [C, image_size, image_size]: C = 1 for grey modes, 3 for colour.

    BadImage saying why when the file is unreadable, smaller than ``image_size`` on its
    shorter side, or in a refused mode (see the module docstring).
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            _check_header(image, image_size)
            image.load()
            image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise BadImage(f"not a readable PNG or JPEG image ({' '.join(str(err).split()) or type(err).__name__})"
                       ) from None
    return _square(_opaque(image), image_size)


def _check_header(image, image_size: int) -> None:
    """Mode and size, read from the header before the pixels are decoded."""
    if image.mode not in GREY_MODES + COLOUR_MODES:
        raise BadImage(f"mode {image.mode} is not accepted (each channel is scored on 256 levels); accepted: "
                       f"grey {', '.join(GREY_MODES)} or colour {', '.join(COLOUR_MODES)}, with alpha only "
                       "when fully opaque: save it as 8-bit grey or RGB")
    width, height = image.size
    if min(width, height) < image_size:
        raise BadImage(f"too small: {width} x {height} pixels (width x height); data.image_size={image_size} needs "
                       "both sides at least that long (images are never upscaled)")


def _opaque(image):
    """The image in mode L or RGB; BadImage when its alpha or transparency entry hides a pixel."""
    target = "L" if image.mode in GREY_MODES else "RGB"
    if image.has_transparency_data:
        low, _ = image.convert(f"{target}A").getchannel("A").getextrema()
        if low < 255:
            raise BadImage("has transparent pixels (alpha below 255); flatten it onto a background first")
    return image.convert(target)


def _square(image, image_size: int) -> np.ndarray:
    """torchvision's Resize(image_size, bicubic) then CenterCrop(image_size), as uint8 [C, S, S]."""
    # Imported here: torchvision costs a noticeable import time that only this stage needs.
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as tvf

    image = tvf.resize(image, image_size, interpolation=InterpolationMode.BICUBIC)
    levels = np.asarray(tvf.center_crop(image, image_size), dtype=np.uint8)
    return levels[None] if levels.ndim == 2 else levels.transpose(2, 0, 1).copy()


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(EXTENSIONS)


def _images_under(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder``, hidden files and folders skipped, sorted by relative path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath, name) for name in filenames if _is_image_name(name)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())
