"""JUMP Cell Painting (cpg0016) as the ingest reads it: `jump_reader(src, ...)` -> a DatasetReader whose layout is
built from the data, and `READER`, the registry's "jump" (the defaults: `JUMP`'s layout).

    reader = jump_reader("/data/cpg0016-jump", plates=["BR00117035"], metadata="/data/jump-datasets/metadata",
                         brightfield=True, scale="clip-percentile:0.1,99.9")
    reader.layout                      # 8 channels, the plates' site shape, uint8, the perturbation vocabulary
    sites = reader.read_sites(src)     # one row per field: plate, well "A01", site, source, batch, path_<Ch>, ...
    pixels = reader.read_site(src, sites.iloc[0].to_dict())    # (H, W, 8) uint8
    cellio.ingest(src, "jump.zarr", reader=reader)

How the layout is built (docs/datasets.md): the channels asked for; the site shape from the load_data's
`Metadata_ImageSizeY/X` when it has them, else from the first TIFF of each chosen plate (one header read a plate;
plates of different sizes are refused: ingest one source at a time); fields per well = the largest site number
of the chosen plates; the perturbations from `metadata` (consortium.py), or none; the intensity rule from
`illumination` and `scale`; the display window of each shown channel from the first site (its 99.9th percentile)
when 16 bits are kept.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import LayoutError, MetadataError
from ..intensity import Intensity
from ..layout import DatasetLayout
from ..reader import DatasetReader
from .pixels import filesystem, read_site as read_site_pixels, tiff_module
from .layout import BRIGHTFIELD, BUCKET_PREFIX, CHANNELS, COLORS, FLUORESCENCE, JUMP, LABEL_COLUMN, \
    UNKNOWN_WELL_TYPE, jump_layout, unannotated

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SOURCE_KIND", "JumpSelection", "READER", "jump_reader", "read_sites", "is_raw_dir"]

log = logging.getLogger(__name__)

SOURCE_KIND = "jump-tiff"
RAW_DESCRIPTION = ("a mirror of s3://cellpainting-gallery/cpg0016-jump/ (the folder of source_*/, with "
                   "<source>/workspace/load_data_csv/<batch>/<plate>/load_data*.csv[.gz]), or that s3:// prefix")


@dataclass(frozen=True)
class JumpSelection:
    """What to read of a mirror: channels by name (layout order), and optionally only these sources, plates,
    wells ("A01") and fields (site numbers); `metadata`: the consortium's metadata directory; `illumination`:
    whether the site table carries the illumination functions (`illum_<Ch>`); `check_files`: list each image
    folder once and refuse a load_data that names a file the mirror lacks; `storage_options`: fsspec's (for an
    s3:// mirror: {"anon": True} for the public bucket, or an endpoint and credentials)."""

    channels: tuple[str, ...] = FLUORESCENCE
    sources: tuple[str, ...] | None = None
    plates: tuple[str, ...] | None = None
    wells: tuple[str, ...] | None = None
    fields: tuple[int, ...] | None = None
    metadata: str | None = None
    illumination: bool = True
    check_files: bool = True
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        chans = tuple(self.channels)
        unknown = [c for c in chans if c not in CHANNELS]
        if not chans or unknown or len(set(chans)) != len(chans):
            raise MetadataError(f"channels={list(chans)}: expected distinct names among {list(CHANNELS)}")
        object.__setattr__(self, "channels", chans)
        for name in ("sources", "plates", "wells", "fields"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(int(v) for v in value) if name == "fields" else tuple(str(v) for v in value)
                if not value:
                    raise MetadataError(f"{name}: expected a non-empty list, or None for all")
                object.__setattr__(self, name, value)


def _prefixes(raw: str) -> tuple[str, ...]:
    """The URL prefixes load_data paths may start with: the gallery's, and the mirror's own when it is a URL."""
    own = str(raw).rstrip("/") + "/"
    return (BUCKET_PREFIX,) + ((own,) if "://" in own and own != BUCKET_PREFIX else ())


def _order(table: "pd.DataFrame", channels: tuple[str, ...]) -> "pd.DataFrame":
    """The site table's columns in a fixed order: ids, location, perturbation, then each channel's files."""
    files = [f"path_{c}" for c in channels] + [f"illum_{c}" for c in channels if f"illum_{c}" in table]
    first = [c for c in table.columns if c not in files and c not in ("load_data", "load_data_line")]
    return table[first + files + ["load_data", "load_data_line"]]


def _site_shape(fs: Any, root: str, table: "pd.DataFrame", channel: str) -> tuple[int, int]:
    """The sites' (height, width): every chosen plate's first TIFF header (Metadata_ImageSizeY/X are not kept in
    the table: a header read per plate is cheap and is what read_site checks against)."""
    tifffile = tiff_module()

    shapes: dict[tuple[int, int], list[str]] = {}
    for plate, first in table.groupby("plate", sort=True).head(1).set_index("plate")[f"path_{channel}"].items():
        path = f"{root}/{first}"
        try:
            with fs.open(path, "rb") as f, tifffile.TiffFile(f) as tif:
                shape = tuple(int(v) for v in tif.pages[0].shape)
        except FileNotFoundError:
            raise MetadataError(f"{path}: missing (the first image of plate {plate})") from None
        except Exception as exc:
            raise MetadataError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc})") from None
        if len(shape) != 2:
            raise MetadataError(f"{path}: expected a greyscale (height, width) image, found shape {shape}")
        shapes.setdefault(shape, []).append(str(plate))
    if len(shapes) > 1:
        raise MetadataError("the chosen plates' images differ in size: " +
                            "; ".join(f"{h}x{w}: {ps[:4]}" for (h, w), ps in shapes.items()) +
                            "; expected one size (choose plates of one source with plates= / --plates)")
    return next(iter(shapes))


def read_sites(raw: str | Path, selection: JumpSelection = JumpSelection(),
               layout: DatasetLayout | None = None) -> "pd.DataFrame":
    """The site table of the mirror `raw` (see the module docstring); `layout` is attached as
    `table.attrs["layout"]` (None: the one `build_layout` makes of it)."""
    from .load_data import check_files, find_plates, read_plate, site_table

    fs, root = filesystem(str(raw), selection.storage_options)
    plates = find_plates(fs, root, selection.sources, selection.plates)
    prefixes = _prefixes(str(raw))
    parts = [read_plate(fs, root, p, selection.channels, selection.illumination, prefixes) for p in plates]
    fields_per_well = max(int(p["site"].max()) for p in parts)
    table = site_table(parts, selection.wells, selection.fields)
    if selection.metadata is not None:
        from .consortium import join_metadata

        table, perturbations = join_metadata(table, selection.metadata)
    else:
        table[LABEL_COLUMN] = ""
        table["well_type"] = UNKNOWN_WELL_TYPE
        perturbations = unannotated()
    table = _order(table, selection.channels)
    if selection.check_files:
        cols = [f"path_{c}" for c in selection.channels] + [f"illum_{c}" for c in selection.channels
                                                             if f"illum_{c}" in table]
        check_files(fs, root, table, cols)
    table.attrs["raw_dir"] = str(raw) if "://" in str(raw) else str(Path(raw).resolve())
    table.attrs["fields_per_well"] = fields_per_well
    table.attrs["layout"] = layout if layout is not None else jump_layout(
        selection.channels, _site_shape(fs, root, table, selection.channels[0]), fields_per_well, perturbations,
        Intensity(illumination="divide" if selection.illumination else "none"))
    return table


def is_raw_dir(path: Path) -> bool:
    """A directory holding source_*/workspace/load_data_csv/ (a cpg0016 mirror)."""
    path = Path(path)
    return path.is_dir() and any((s / "workspace" / "load_data_csv").is_dir() for s in path.glob("source_*"))


def _display_ranges(raw: str, row: Mapping[str, Any], layout: DatasetLayout,
                    storage_options: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """Each shown channel's window: 0 to its 99.9th percentile in the first site (16-bit data has no fixed one)."""
    site = read_site_pixels(raw, row, layout=layout, storage_options=storage_options)
    top = np.percentile(site.reshape(-1, site.shape[-1]), 99.9, axis=0)
    return {c.name: (0, max(1, int(np.ceil(t)))) for c, t in zip(layout.channels, top) if c.name in COLORS}


def jump_reader(src: str | Path, *, channels: Iterable[str] | None = None, brightfield: bool = False,
                sources: Iterable[str] | None = None, plates: Iterable[str] | None = None,
                wells: Iterable[str] | None = None, fields: Iterable[int] | None = None,
                metadata: str | Path | None = None, illumination: str = "divide", scale: str = "keep",
                storage_options: Mapping[str, Any] | None = None, check_files: bool = True) -> DatasetReader:
    """The DatasetReader of this ingest of the mirror `src` (a directory or an s3:// prefix): reads its load_data
    once to build the layout (module docstring). channels: names (default the five fluorescence ones, plus the
    three brightfield planes with `brightfield=True`); illumination: "divide" (apply `<plate>_Illum<Ch>.npy`) or
    "none"; scale: the intensity rule ("keep" | "linear:LOW,HIGH" | "clip-percentile[:PLO,PHI]",
    cellio/datasets/intensity.py), recorded in the layout the store keeps."""
    chans = tuple(channels) if channels is not None else FLUORESCENCE + (BRIGHTFIELD if brightfield else ())
    if channels is not None and brightfield:
        chans += tuple(c for c in BRIGHTFIELD if c not in chans)
    if illumination not in ("divide", "none"):
        raise MetadataError(f"illumination={illumination!r}: expected 'divide' (the plates' illumination "
                            "functions, as CellProfiler applies them) or 'none'")
    rule = Intensity.parse(scale, illumination=illumination)
    options = dict(storage_options or {})
    selection = JumpSelection(channels=chans, sources=tuple(sources) if sources else None,
                              plates=tuple(plates) if plates else None, wells=tuple(wells) if wells else None,
                              fields=tuple(fields) if fields else None,
                              metadata=str(metadata) if metadata is not None else None,
                              illumination=illumination == "divide", check_files=check_files,
                              storage_options=options)
    table = read_sites(src, selection)
    built: DatasetLayout = table.attrs["layout"]
    layout = jump_layout(chans, built.site_shape, built.sites_per_well, built.perturbations, rule)
    if rule.output_dtype is None:  # 16 bits: a display window from the data
        ranges = _display_ranges(str(src), table.iloc[0].to_dict(), layout, options)
        layout = jump_layout(chans, built.site_shape, built.sites_per_well, built.perturbations, rule, ranges)
    log.info("%s: %d sites of %d plates; layout %s", src, len(table), table["plate"].nunique(), layout.description)
    return DatasetReader(layout=layout, source_kind=SOURCE_KIND,
                         read_sites=partial(read_sites, selection=selection, layout=layout),
                         is_raw_dir=is_raw_dir, raw_description=RAW_DESCRIPTION,
                         stats_source="no per-site statistics (JUMP publishes none)",
                         read_site=partial(read_site_pixels, layout=layout, storage_options=options))


def bind_source(src: str | Path, metadata: str | Path | None = None,
                channels: Iterable[str] | None = None) -> DatasetReader:
    """The registered reader bound to the mirror `src` (`cellio ingest SRC STORE --from jump [--metadata DIR]
    [--channels DNA,Brightfield]`): `jump_reader` with its defaults, the layout (site shape, fields, vocabulary)
    read from the data; `channels` (names, in store order) reads exactly those, so brightfield is had on request
    and nothing else is read. LayoutError naming unknown ones and listing every JUMP channel."""
    if channels is not None:
        unknown = [c for c in channels if c not in CHANNELS]
        if unknown:
            raise LayoutError(f"channels {unknown}: not channels of layout 'jump'; expected names among "
                              f"{list(CHANNELS)}")
    return jump_reader(src, metadata=metadata, channels=None if channels is None else tuple(channels))


READER = DatasetReader(layout=JUMP, source_kind=SOURCE_KIND, read_sites=partial(read_sites, layout=JUMP),
                       is_raw_dir=is_raw_dir, raw_description=RAW_DESCRIPTION,
                       stats_source="no per-site statistics (JUMP publishes none)",
                       read_site=partial(read_site_pixels, layout=JUMP), bind=bind_source)
