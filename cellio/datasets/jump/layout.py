"""JUMP Cell Painting (cpg0016, the Cell Painting Gallery): the facts its readers use and `jump_layout`, the
layout of one ingest of it. Nothing here does I/O. See docs/datasets.md ("JUMP Cell Painting") and
docs/dataset_formats.md (where each fact comes from).

Unlike RxRx1, JUMP has no single shape: its sites of imaging use different microscopes (image sizes, fields per
well), a user picks channels, plates and a 16-bit or 8-bit rule, and the perturbations come from the consortium's
tables when given. So the layout of an ingest is built from the data (`reader.jump_reader`); `JUMP` is the layout
of the defaults (source_4's 1080 x 1080 sites, 9 fields, the five fluorescence channels, 16 bits kept, the
illumination functions applied, no perturbation tables) that the registry's "jump" reader uses.
"""
from __future__ import annotations

from ..intensity import Intensity
from ..layout import Channel, DatasetLayout, IdFormats, Perturbations, PlateGeometry

__all__ = ["JUMP", "BUCKET_PREFIX", "FLUORESCENCE", "BRIGHTFIELD", "CHANNELS", "CELL_TYPE", "LABEL_COLUMN",
           "UNKNOWN_WELL_TYPE", "PLATE", "ROWS_384", "jump_layout", "unannotated"]

# what every load_data URL of cpg0016 starts with; the rest is relative to the mirror (the folder of source_*/)
BUCKET_PREFIX = "s3://cellpainting-gallery/cpg0016-jump/"
FLUORESCENCE: tuple[str, ...] = ("DNA", "ER", "RNA", "AGP", "Mito")
# the three brightfield planes of the Phenix sites (pe2loaddata "Standard_3BF": OrigBrightfield, _H, _L)
BRIGHTFIELD: tuple[str, ...] = ("Brightfield", "Brightfield_H", "Brightfield_L")
CHANNELS: tuple[str, ...] = FLUORESCENCE + BRIGHTFIELD
# the composite tints of the fluorescence channels (the usual Cell Painting colours); brightfield is not shown
COLORS: dict[str, tuple[int, int, int]] = {"DNA": (0, 0, 255), "ER": (0, 255, 0), "RNA": (255, 255, 0),
                                           "AGP": (255, 0, 0), "Mito": (255, 0, 255)}
CELL_TYPE = "U2OS"  # every cpg0016 plate
LABEL_COLUMN = "jcp2022"  # the well's Metadata_JCP2022 (the consortium's perturbation id)
UNKNOWN_WELL_TYPE = "unknown"  # what every well is when no consortium tables are given
DEFAULT_SITE_SHAPE = (1080, 1080)  # source_4 (Opera Phenix)
DEFAULT_FIELDS = 9
PLATE = PlateGeometry(rows=16, columns=24)  # every cpg0016 plate is a 384-well plate
ROWS_384 = "".join(PLATE.row_labels)


def unannotated() -> Perturbations:
    """The perturbations of an ingest without the consortium tables: nothing known (labels empty, no controls)."""
    return Perturbations(label_column=LABEL_COLUMN, n_treatments=0, label_kind="str", controls=(),
                         well_type_column="well_type", treatment_well_type=UNKNOWN_WELL_TYPE)


def jump_layout(channels: tuple[str, ...] = FLUORESCENCE, site_shape: tuple[int, int] = DEFAULT_SITE_SHAPE,
                sites_per_well: int = DEFAULT_FIELDS, perturbations: Perturbations | None = None,
                intensity: Intensity | None = None,
                display_ranges: dict[str, tuple[int, int]] | None = None) -> DatasetLayout:
    """The layout of a JUMP ingest: `channels` by name (a subset of CHANNELS, in the order given), the sites'
    (height, width), fields per well, the perturbations (`unannotated()` by default), the intensity rule
    (default: illumination divided, 16 bits kept) and each shown channel's display window (default: the pixel
    type's whole range)."""
    intensity = intensity if intensity is not None else Intensity(illumination="divide", scale="keep")
    dtype = intensity.output_dtype or "uint16"
    top = 255 if dtype == "uint8" else 65535
    display_ranges = display_ranges or {}
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown:
        from ...errors import LayoutError

        raise LayoutError(f"JUMP channels {unknown}: expected names among {list(CHANNELS)}")
    chans = tuple(Channel(c, c, COLORS.get(c), (display_ranges.get(c, (0, top)) if c in COLORS else None))
                  for c in channels)
    rule = str(intensity)
    return DatasetLayout(
        name="jump", version=1, channels=chans, pixel_dtype=dtype, site_shape=tuple(site_shape),
        sites_per_well=int(sites_per_well), plate=PLATE,
        perturbations=perturbations if perturbations is not None else unannotated(),
        cell_types=(CELL_TYPE,), splits=("train",), hidden_test_labels=False,
        ids=IdFormats(well="{plate}_{well}", site="{plate}_{well}_{site}"),
        description=f"JUMP Cell Painting cpg0016: {len(chans)} channels ({', '.join(channels)}), "
                    f"{site_shape[0]}x{site_shape[1]} {dtype} ({rule}), {sites_per_well} fields per well",
        intensity=intensity)


JUMP = jump_layout()
