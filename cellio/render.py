"""Look at a site: the six channels side by side and the official rxrx1-utils RGB composite (`cellio show`).

    image = store.read([i])[0]                    # uint8 (H, W, 6)
    rgb = rgb_composite(image)                    # uint8 (H, W, 3), identical to rxrx1-utils' convert_tensor_to_rgb
    grid = channel_grid(image)                    # uint8 (2H + gap, 3W + 2 gap), each channel auto-contrasted
    png = render_site(image, title="HUVEC-07_1_B03 s1")
    save_png(png, "site.png")

`load_site(source, id_code, site)` reads one site from a cellio store or from a raw RxRx1 directory (the six
PNGs), so `cellio show` works before ingest. Numpy and Pillow only.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ImageError, MetadataError, StoreError
from .schema import CHANNEL_NAMES, COMPOSITE_COLORS, COMPOSITE_RANGES, N_CHANNELS

__all__ = ["rgb_composite", "channel_grid", "render_site", "save_png", "load_site", "autocontrast"]

log = logging.getLogger(__name__)

_SEPARATOR = 64     # grey between tiles, so a black channel is still visibly a tile
_LABEL_MIN_WIDTH = 96  # tiles narrower than this get no label: the text would cover the cells


def _check_site(image: np.ndarray, what: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != N_CHANNELS:
        raise ImageError(f"{what}: expected a site as (H, W, {N_CHANNELS}) channel-last array, "
                         f"found shape {image.shape}")
    if image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.integer) or image.size and (image.min() < 0 or image.max() > 255):
            raise ImageError(f"{what}: expected uint8 intensities 0..255, found dtype {image.dtype}")
        image = image.astype(np.uint8)
    return image


@lru_cache(maxsize=1)
def _composite_lut() -> np.ndarray:
    """(6, 256, 3) int16: each channel's tint contribution for every uint8 value, computed with the reference's
    float64 operations in the reference's order, so the table reproduces its truncation bit for bit."""
    values = np.arange(256, dtype=np.uint8)
    lut = np.empty((len(COMPOSITE_COLORS), 256, 3), dtype=np.int16)
    for c, (color, (lo, hi)) in enumerate(zip(COMPOSITE_COLORS, COMPOSITE_RANGES)):
        x = (values / 255) / ((hi - lo) / 255) + lo / 255
        x = np.where(x > 1.0, 1.0, x)
        lut[c] = np.array(np.outer(x, np.asarray(color)), dtype=np.int64)  # truncate, as the reference
    return lut


def rgb_composite(image: np.ndarray) -> np.ndarray:
    """The official rxrx1-utils composite of a (H, W, 6) uint8 site -> uint8 (H, W, 3).

    Per channel c (as `rxrx.io.convert_tensor_to_rgb` with vmax=255): x = (v / 255) / ((hi - lo) / 255) + lo / 255,
    clipped above at 1, times the channel's tint, truncated to int; the six tints are summed and clipped at 255.
    Inputs are uint8, so each channel's term is a 256-entry lookup table (~10x faster than the float maths).
    """
    image = _check_site(image)
    lut = _composite_lut()
    total = np.zeros((*image.shape[:2], 3), dtype=np.int16)  # six terms of at most 255 each fit in int16
    for c in range(image.shape[-1]):
        total += np.take(lut[c], image[:, :, c], axis=0)
    return np.minimum(total, 255).astype(np.uint8)


def autocontrast(channel: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Stretch one channel so its `low`..`high` percentiles span 0..255 (uint8)."""
    lo, hi = np.percentile(channel, [low, high])
    if hi <= lo:  # flat channel: keep it flat instead of dividing by zero
        return np.full(channel.shape, 0 if hi == 0 else 128, dtype=np.uint8)
    scaled = (channel.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _draw_labels(grid: np.ndarray, tile_h: int, tile_w: int, gap: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(grid)
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(CHANNEL_NAMES):
        y, x = (c // 3) * (tile_h + gap), (c % 3) * (tile_w + gap)
        text = f"w{c + 1} {name}"
        left, top, right, bottom = draw.textbbox((x + 3, y + 2), text)
        draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=0)
        draw.text((x + 3, y + 2), text, fill=255)
    return np.asarray(canvas)


def channel_grid(image: np.ndarray, *, gap: int = 2, labels: bool = True) -> np.ndarray:
    """The six channels, each auto-contrasted, in a 2x3 grid: uint8 (2H + gap, 3W + 2 gap), grey separators.

    Row 1 holds w1..w3, row 2 w4..w6. Labels (`w1 Hoechst`, ...) are drawn when tiles are wide enough.
    """
    image = _check_site(image)
    h, w = image.shape[:2]
    grid = np.full((2 * h + gap, 3 * w + 2 * gap), _SEPARATOR, dtype=np.uint8)
    for c in range(N_CHANNELS):
        y, x = (c // 3) * (h + gap), (c % 3) * (w + gap)
        grid[y:y + h, x:x + w] = autocontrast(image[:, :, c])
    if labels and w >= _LABEL_MIN_WIDTH:
        grid = _draw_labels(grid, h, w, gap)
    return grid


def render_site(image: np.ndarray, title: str | None = None, *, gap: int = 2) -> np.ndarray:
    """One picture of a site: the composite (2x, nearest) on the left, the channel grid on the right, and an
    optional title strip on top. Returns uint8 RGB (H', W', 3)."""
    from PIL import Image, ImageDraw

    image = _check_site(image)
    composite = rgb_composite(image).repeat(2, axis=0).repeat(2, axis=1)
    grid = np.repeat(channel_grid(image, gap=gap)[:, :, None], 3, axis=2)
    height = max(composite.shape[0], grid.shape[0])
    width = composite.shape[1] + 2 * gap + grid.shape[1]
    body = np.full((height, width, 3), _SEPARATOR, dtype=np.uint8)
    body[:composite.shape[0], :composite.shape[1]] = composite
    body[:grid.shape[0], composite.shape[1] + 2 * gap:] = grid
    if not title:
        return body
    canvas = Image.new("RGB", (width, 1), (0, 0, 0))
    left, top, right, bottom = ImageDraw.Draw(canvas).textbbox((0, 0), title)
    strip = Image.new("RGB", (width, bottom + 6), (0, 0, 0))
    ImageDraw.Draw(strip).text((4, 3), title, fill=(255, 255, 255))
    return np.concatenate([np.asarray(strip), body], axis=0)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 (H, W) or (H, W, 3) image as PNG; creates the parent directory."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image)).save(path, format="PNG")
    return path


def _pick_row(sites: Any, id_code: str, site: int, source: Path) -> int:
    """Position of (id_code, site) in a site table; MetadataError with a few valid choices otherwise."""
    ids = sites["id_code"].astype(str)
    match = ids == id_code
    if not match.any():
        unique = ids.drop_duplicates()
        # Suggest wells of the same experiment, else of the same cell type, else any.
        near: list[str] = []
        for prefix in (id_code.split("_")[0] + "_", id_code.split("-")[0] + "-", ""):
            near = unique[unique.str.startswith(prefix)].head(5).tolist()
            if near:
                break
        raise MetadataError(f"id_code {id_code!r} is not in {source} ({len(unique)} wells); "
                            f"valid id_codes look like {', '.join(near)}")
    in_well = match & (sites["site"].astype(int) == int(site))
    if not in_well.any():
        have = sorted(int(s) for s in sites.loc[match, "site"])
        raise MetadataError(f"{id_code} has site(s) {have} in {source}, not site {site}")
    return int(np.flatnonzero(in_well.to_numpy())[0])


def _read_png_channel(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode != "L":
                raise ImageError(f"{path}: expected an 8-bit grayscale PNG (mode L), found mode {img.mode}")
            return np.asarray(img)
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: image file is missing") from exc
    except OSError as exc:
        raise ImageError(f"{path}: not a readable PNG ({exc})") from exc


def load_site(source: str | Path, id_code: str, site: int = 1) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one site as uint8 (H, W, 6) plus its site-table row (as a dict).

    `source` is a cellio store (a Zarr group: has zarr.json; a local path or an fsspec URL such as
    s3://bucket/rxrx1.zarr) or a raw RxRx1 directory (has train.csv or test.csv; the six PNGs are read directly).
    """
    from .store.files import is_url

    if is_url(source):
        from .store import open_store

        store = open_store(str(source))
        i = _pick_row(store.sites, id_code, site, source)
        return np.asarray(store.read([i])[0]), store.sites.iloc[i].to_dict()
    source = Path(source)
    if (source / "zarr.json").is_file():
        from .store import open_store

        store = open_store(source)
        i = _pick_row(store.sites, id_code, site, source)
        return np.asarray(store.read([i])[0]), store.sites.iloc[i].to_dict()
    from .datasets import find_dataset, get_dataset, list_datasets

    reader = find_dataset(source) if source.is_dir() else None
    if reader is not None:
        sites = reader.read_sites(source)
        i = _pick_row(sites, id_code, site, source)
        row = sites.iloc[i]
        channels = [_read_png_channel(source / row[col]) for col in reader.layout.path_columns]
        shapes = {c.shape for c in channels}
        if len(shapes) != 1:
            raise ImageError(f"{id_code} site {site} in {source}: the {len(channels)} channels differ in size "
                             f"{sorted(shapes)}")
        return np.stack(channels, axis=-1), row.to_dict()
    raw_dirs = "; ".join(f"{name}: {get_dataset(name).raw_description}" for name in list_datasets())
    if not source.exists():
        raise StoreError(f"{source} does not exist; expected a cellio store or a raw data set directory ({raw_dirs})")
    raise StoreError(f"{source} is neither a cellio store (no zarr.json) nor a raw data set directory cellio reads "
                     f"({raw_dirs})")
