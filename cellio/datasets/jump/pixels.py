"""A JUMP site's pixels: each channel's 16-bit TIFF (tifffile), divided by the plate's illumination function as
CellProfiler's CorrectIlluminationApply does, then kept as 16 bits or scaled by the layout's intensity rule.

    x = tifffile's uint16 (H, W) as float64 / illum (the plate's `<plate>_Illum<Ch>.npy`, float (H, W))
    stored = layout.intensity.apply(stack of x over the layout's channels)     # keep: round, clip to 0..65535

Files come from the mirror `raw` (a directory or an fsspec URL such as "s3://bucket/cpg0016-jump"), the site
table's `path_<Ch>` / `illum_<Ch>` relative to it. Every check names the file and the load_data line that named
it: a TIFF that is missing, unreadable, not one page, not uint16 or not the layout's site shape; an illumination
function that is missing, not a 2-D float array of the image's shape, or not finite and positive.
"""
from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np

from ...errors import ImageError, MissingDependencyError
from ..layout import DatasetLayout

__all__ = ["tiff_module", "filesystem", "read_tiff", "read_illum", "read_site"]

log = logging.getLogger(__name__)

_ILLUM_CACHE: "OrderedDict[str, np.ndarray]" = OrderedDict()
_ILLUM_CACHE_SIZE = 24  # three plates of eight channels: the sites of a plate come together in the site table


@lru_cache(maxsize=8)
def _filesystem(raw: str, options_json: str) -> tuple[Any, str]:
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(raw, **json.loads(options_json))
    return fs, root.rstrip("/")


def tiff_module() -> Any:
    """tifffile, or MissingDependencyError with the install command."""
    try:
        import tifffile
    except ImportError:
        raise MissingDependencyError("tifffile", "formats", "Reading JUMP's TIFF images") from None
    return tifffile


def filesystem(raw: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """(fsspec filesystem, root path) of the mirror `raw`, one per process and mirror."""
    return _filesystem(str(raw), json.dumps(dict(storage_options or {}), sort_keys=True))


def _where(row: Mapping[str, Any], channel: str) -> str:
    return f"named by {row.get('load_data')} line {row.get('load_data_line')} (channel {channel})"


def read_tiff(fs: Any, path: str, shape: tuple[int, int] | None, where: str) -> np.ndarray:
    """The uint16 (H, W) plane of a one-page greyscale TIFF; ImageError naming `path` otherwise."""
    tifffile = tiff_module()

    try:
        with fs.open(path, "rb") as f, tifffile.TiffFile(f) as tif:
            pages = len(tif.pages)
            if pages != 1:
                raise ImageError(f"{path} ({where}): expected a single-page TIFF, found {pages} pages")
            page = tif.pages[0]
            if page.dtype != np.uint16:
                raise ImageError(f"{path} ({where}): expected uint16 pixels, found {page.dtype}")
            if shape is not None and tuple(page.shape) != tuple(shape):
                raise ImageError(f"{path} ({where}): expected a {shape[0]}x{shape[1]} (height x width) greyscale "
                                 f"image, found shape {tuple(page.shape)}")
            return page.asarray()
    except FileNotFoundError:
        raise ImageError(f"{path} ({where}): missing") from None
    except ImageError:
        raise
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error... on a damaged file
        raise ImageError(f"{path} ({where}): not a readable TIFF ({type(exc).__name__}: {exc})") from None


def read_illum(fs: Any, path: str, shape: tuple[int, int], where: str) -> np.ndarray:
    """The illumination function at `path`, checked against the image `shape` (cached per process: keyed by path,
    plus size and modification time on a local disk, where a file may be rewritten; the gallery's objects are
    not)."""
    key = path
    if "file" in np.atleast_1d(fs.protocol):
        try:
            st = os.stat(path)
            key = f"{path}\0{st.st_size}\0{st.st_mtime_ns}"
        except FileNotFoundError:
            raise ImageError(f"{path} ({where}): illumination function missing") from None
    illum = _ILLUM_CACHE.get(key)
    if illum is None:
        try:
            with fs.open(path, "rb") as f:
                illum = np.load(f, allow_pickle=False)
        except FileNotFoundError:
            raise ImageError(f"{path} ({where}): illumination function missing") from None
        except (OSError, ValueError) as exc:
            raise ImageError(f"{path} ({where}): not a readable .npy illumination function ({exc})") from None
        if illum.ndim != 2 or not np.issubdtype(illum.dtype, np.floating):
            raise ImageError(f"{path} ({where}): expected a 2-D float illumination function, found {illum.dtype} "
                             f"of shape {illum.shape}")
        if not (np.isfinite(illum).all() and (illum > 0).all()):
            raise ImageError(f"{path} ({where}): expected finite, positive values (the image is divided by them), "
                             f"found min {np.nanmin(illum)!r}")
        _ILLUM_CACHE[key] = illum
        while len(_ILLUM_CACHE) > _ILLUM_CACHE_SIZE:
            _ILLUM_CACHE.popitem(last=False)
    else:
        _ILLUM_CACHE.move_to_end(key)
    if tuple(illum.shape) != tuple(shape):
        raise ImageError(f"{path} ({where}): illumination function of shape {tuple(illum.shape)}; expected the "
                         f"image's {tuple(shape)} (height, width)")
    return illum


def read_site(raw: str, row: Mapping[str, Any], *, layout: DatasetLayout,
              storage_options: Mapping[str, Any] | None = None) -> np.ndarray:
    """The site's (H, W, C) pixels of `layout.dtype`, channels in layout order (the reader's `read_site`)."""
    fs, root = filesystem(raw, storage_options)
    rule = layout.intensity
    divide = rule.illumination == "divide"
    shape = tuple(layout.site_shape)
    if not divide and rule.scale == "keep" and layout.pixel_dtype == "uint16":  # the raw counts as they are
        return np.stack([read_tiff(fs, f"{root}/{row[f'path_{k}']}", shape, _where(row, k))
                         for k in layout.channel_keys], axis=-1)
    # one float64 plane at a time into the stored site: every intensity rule maps each channel on its own, and a
    # float64 stack of a 1080x1080x5 site (47 MB) cost 3x the whole conversion (benchmarks/layouts.py)
    site = np.empty((*shape, len(layout.channel_keys)), dtype=layout.dtype)
    for c, k in enumerate(layout.channel_keys):
        where = _where(row, k)
        x = read_tiff(fs, f"{root}/{row[f'path_{k}']}", shape, where).astype(np.float64)
        if divide:
            if f"illum_{k}" not in row:
                raise ImageError(f"site {row.get('id_code')} {row.get('site')}: no illum_{k} column in the site "
                                 "table; read it with illumination correction, or use a layout without it")
            x /= read_illum(fs, f"{root}/{row[f'illum_{k}']}", shape, where)
        site[:, :, c] = rule.apply(x[:, :, None], layout.pixel_dtype)[:, :, 0]
    return site
