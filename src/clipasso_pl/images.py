"""The one place that turns an image file into a tensor, and tensors into files.

Every file this package writes goes through :func:`atomic_write_bytes`: the data
is written to a temporary name beside the target and renamed over it, so a kill
mid-write leaves the previous file intact.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from .errors import ClipassoError

# Decoding more than this many pixels at full size is refused; larger files are
# decoded at a reduced scale (JPEG draft mode) or downscaled right after decode.
MAX_DECODE_PIXELS = 40_000_000
MIN_SIDE = 8


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, e.strerror, e.filename or str(path)) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not e.filename:  # a failed write names no file: name the one we meant
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_uint8(image: Tensor) -> np.ndarray:
    """image: [3, H, W] or [H, W] in [0, 1] -> uint8 array [H, W, 3] or [H, W]."""
    arr = image.detach().float().clamp(0, 1).mul(255).round().byte().cpu().numpy()
    return arr.transpose(1, 2, 0) if arr.ndim == 3 else arr


def save_png(path: str | Path, image: Tensor | np.ndarray | Image.Image) -> Path:
    """Save [3, H, W] / [H, W] tensors in [0, 1], uint8 arrays or PIL images as PNG, atomically."""
    if isinstance(image, Tensor):
        image = Image.fromarray(to_uint8(image))
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def open_image(path: str | Path, what: str = "target") -> Image.Image:
    """Open an image file as an upright PIL image, composited on white, mode RGB.

    Handles EXIF orientation, grayscale, palette, CMYK, 16-bit and alpha
    images; refuses missing, empty, truncated or non-image files and images
    smaller than 8 px with a :class:`ClipassoError`.
    """
    return _to_rgb(open_image_rgba(path, what))


def open_image_rgba(path: str | Path, what: str = "target") -> Image.Image:
    """Like :func:`open_image` but keeps transparency: mode RGBA (alpha 255 when the file has none)."""
    path = Path(path)
    hint = f"pass {what}=<path to a PNG or JPEG photo>"
    if not path.exists():
        raise ClipassoError(f"{what} {path} does not exist: {hint}")
    if path.is_dir():
        raise ClipassoError(f"{what} {path} is a directory: {hint}")
    if path.stat().st_size == 0:
        raise ClipassoError(f"{what} {path} is an empty file: {hint}")
    try:
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as e:
            raise ClipassoError(f"{what} {path} is refused by Pillow as a possible decompression bomb ({e}): "
                                "downscale it or pass a smaller image") from None
        if img.format == "JPEG" and img.width * img.height > MAX_DECODE_PIXELS:
            scale = (img.width * img.height / MAX_DECODE_PIXELS) ** 0.5
            img.draft("RGB", (int(img.width / scale), int(img.height / scale)))
        elif img.width * img.height > 4 * MAX_DECODE_PIXELS:
            raise ClipassoError(
                f"{what} {path} is {img.width}x{img.height} px, too large to decode: downscale it below "
                f"{int((4 * MAX_DECODE_PIXELS) ** 0.5)} px per side first"
            )
        prev = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            img.load()
        finally:
            Image.MAX_IMAGE_PIXELS = prev
        img = ImageOps.exif_transpose(img)
    except ClipassoError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ClipassoError(f"{what} {path} is not a readable image ({type(e).__name__}: {e}): {hint}") from None
    if min(img.size) < MIN_SIDE:
        raise ClipassoError(f"{what} {path} is {img.width}x{img.height} px; need at least {MIN_SIDE} px per side")
    if img.width * img.height > MAX_DECODE_PIXELS:
        img.thumbnail((4096, 4096), Image.Resampling.BOX)
    return _to_rgba(img)


def _to_rgba(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray((arr / peak * 255).round().astype(np.uint8), mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGBA")


def _to_rgb(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def pad_to_square(img: Image.Image, fill: tuple[int, ...] = (255, 255, 255)) -> Image.Image:
    """Centre ``img`` on a square canvas of its longer side, padded with ``fill``."""
    side = max(img.size)
    if img.width == img.height:
        return img
    canvas = Image.new(img.mode, (side, side), fill)
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return canvas


def pil_to_tensor(img: Image.Image) -> Tensor:
    """PIL image -> float32 tensor [C, H, W] in [0, 1]."""
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


SKIMAGE_PREFIX = "skimage:"
# scikit-image's bundled photos that make sensible sketch targets (no download needed).
SKIMAGE_TARGETS = ("chelsea", "astronaut", "coffee", "rocket")


def resolve_target(target: str | Path | None, cache_dir: str | Path | None = None) -> Path:
    """A target as a file path: ``None`` is scikit-image's ``chelsea`` cat, ``skimage:<name>``
    any photo bundled with scikit-image (written once as a PNG so it goes through
    :func:`clipasso_pl.sketch_target.load_sketch_target`), anything else a path."""
    if target is None:
        target = SKIMAGE_PREFIX + "chelsea"
    text = str(target)
    if not text.startswith(SKIMAGE_PREFIX):
        return Path(text)
    from skimage import data

    name = text[len(SKIMAGE_PREFIX):]
    loader = getattr(data, name, None)
    if name.startswith("_") or not callable(loader):
        raise ClipassoError(f"target={text}: scikit-image has no image '{name}'; try one of {', '.join(SKIMAGE_TARGETS)}")
    path = Path(cache_dir or Path(tempfile.gettempdir()) / "clipasso_pl") / f"{name}.png"
    if not path.exists():
        save_png(path, np.asarray(loader()))
    return path
