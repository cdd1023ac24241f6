"""Raw image files into planes: a channel PNG decoded and validated (8-bit grayscale of the site's H x W, read
completely; every failure an ImageError naming the file), and the site shape of a plan probed from its files'
headers."""
from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ImageError

__all__ = ["decode_png", "probe_shape"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}


def _check_png_header(path: str, data: bytes, shape: tuple[int, int]) -> None:
    """Validate the IHDR chunk (always first in a PNG): 8-bit, grayscale, H x W. Costs microseconds."""
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        kind = "empty" if not data else "truncated" if data[:8] == _PNG_SIGNATURE[:len(data[:8])] else "not a PNG"
        raise ImageError(f"{path}: not a readable PNG ({kind}: {len(data)} bytes); the file is corrupt or "
                         f"truncated")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    depth, colour = data[24], data[25]
    if colour != 0 or depth != 8:
        raise ImageError(f"{path}: expected an 8-bit single-channel grayscale PNG, found {depth}-bit "
                         f"{_COLOUR_TYPES.get(colour, f'colour type {colour}')} (PNG colour type {colour})")
    if (height, width) != shape:
        raise ImageError(f"{path}: expected {shape[0]}x{shape[1]} (HxW) pixels, found {height}x{width}")


def decode_png(path: str, shape: tuple[int, int]) -> np.ndarray:
    """One channel PNG -> (H, W) uint8, or ImageError naming the file and what is wrong with it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageError(f"{path}: channel file is missing") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc})") from None
    _check_png_header(path, data, shape)
    arr = _fast_decode(data)
    if arr is None:  # cv2 missing or refused: PIL decodes and names the problem
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                arr = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(f"{path}: not a readable PNG ({type(exc).__name__}: {exc}); the file is corrupt or "
                             f"truncated") from None
    if arr.shape != shape or arr.dtype != np.uint8:
        raise ImageError(f"{path}: decoded to {arr.dtype} {arr.shape}, expected uint8 {shape}")
    return arr


def _fast_decode(data: bytes) -> np.ndarray | None:
    """cv2 decodes PNG faster than PIL; returns None when unavailable or on any decode failure."""
    try:
        import cv2
    except ImportError:
        return None
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 2 or arr.dtype != np.uint8:
        return None
    return arr


def probe_shape(raw: Path, plan: pd.DataFrame, column: str) -> tuple[int, int]:
    """The (H, W) most of the plan's first-channel images (`column`) have (headers only); a wrong-size file then
    fails on its own."""
    from PIL import Image

    found: Counter[tuple[int, int]] = Counter()
    for rel in plan[column].iloc[np.linspace(0, len(plan) - 1, min(len(plan), 25)).astype(int)]:
        try:
            with Image.open(raw / rel) as im:
                found[(im.size[1], im.size[0])] += 1
        except (OSError, SyntaxError, ValueError):
            continue
    if not found:
        raise ImageError(f"{raw}: none of the probed {column.removeprefix('path_')} images could be read to find the "
                         f"image size")
    return found.most_common(1)[0][0]
