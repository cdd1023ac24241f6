"""RxRx1 (Kaggle "Recursion Cellular Image Classification", 2019): its DatasetLayout, `RXRX1`, and the facts the RxRx1
readers, the synthetic generator and the Kaggle client use as constants (cell types, plates, wells, controls,
experiment and well name forms, the Kaggle layout of file names). Nothing here does I/O. See docs/rxrx1.md.

Everything outside `cellio/datasets/rxrx1/` reads these facts from a store's layout (`open_store(...).layout`) or
from `cellio.get_layout("rxrx1")`, never from this module (tests/test_imports.py).
"""
from __future__ import annotations

import re
from enum import Enum

from ..layout import ControlGroup, DatasetLayout, IdFormats, Perturbations, PlateGeometry
from ..recursion import RECURSION_CHANNELS

__all__ = [
    "RXRX1",
    "CELL_TYPES",
    "CHANNELS",
    "CHANNEL_NAMES",
    "N_CHANNELS",
    "PLATES",
    "SITES",
    "WELL_ROWS",
    "WELL_COLS",
    "ALL_WELLS",
    "NEGATIVE_CONTROL_WELL",
    "N_TREATMENTS",
    "POSITIVE_CONTROL_SIRNAS",
    "NEGATIVE_CONTROL_SIRNA",
    "N_CLASSES_WITH_CONTROLS",
    "WellType",
    "DATASETS",
    "SITE_COLUMNS",
    "PATH_COLUMNS",
    "PIXEL_MEAN_COLUMNS",
    "PIXEL_STD_COLUMNS",
    "COMPOSITE_COLORS",
    "COMPOSITE_RANGES",
    "GLOBAL_PIXEL_MEAN",
    "GLOBAL_PIXEL_STD",
    "KAGGLE_SLUG",
    "parse_experiment",
    "parse_well",
    "make_id_code",
    "image_relpath",
]


class WellType(str, Enum):
    TREATMENT = "treatment"
    NEGATIVE_CONTROL = "negative_control"
    POSITIVE_CONTROL = "positive_control"


RXRX1 = DatasetLayout(
    name="rxrx1",
    version=1,
    channels=RECURSION_CHANNELS,  # cellio/datasets/recursion.py
    pixel_dtype="uint8",
    site_shape=(512, 512),
    sites_per_well=2,
    # a 384-well plate with the outer ring unused: rows B..O, columns 02..23 -> 308 wells
    plate=PlateGeometry(rows=16, columns=24, used_rows=tuple("BCDEFGHIJKLMNO"), used_columns=tuple(range(2, 24))),
    perturbations=Perturbations(
        label_column="sirna", n_treatments=1108, label_kind="int",
        controls=(ControlGroup(WellType.NEGATIVE_CONTROL.value, (1138,)),
                  ControlGroup(WellType.POSITIVE_CONTROL.value, tuple(range(1108, 1138)))),
        well_type_column="well_type", treatment_well_type=WellType.TREATMENT.value),
    cell_types=("HEPG2", "HUVEC", "RPE", "U2OS"),
    splits=("train", "test"),
    hidden_test_labels=True,
    ids=IdFormats(well="{experiment}_{plate}_{well}", site="{experiment}_{plate}_{well}_{site}"),
    description="RxRx1: 4 cell types x 1,108 siRNAs (+31 controls), six-channel 512x512 8-bit sites, 2 per well",
)

KAGGLE_SLUG = "recursion-cellular-image-classification"

CELL_TYPES: tuple[str, ...] = RXRX1.cell_types
N_CHANNELS = RXRX1.n_channels
CHANNELS: tuple[int, ...] = tuple(range(1, N_CHANNELS + 1))  # the w-numbers of the file names
CHANNEL_NAMES: tuple[str, ...] = RXRX1.channel_names
PLATES: tuple[int, ...] = (1, 2, 3, 4)
SITES: tuple[int, ...] = tuple(range(1, RXRX1.sites_per_well + 1))
DATASETS: tuple[str, ...] = RXRX1.splits

WELL_ROWS: str = "".join(RXRX1.plate.used_rows or ())
WELL_COLS: tuple[int, ...] = RXRX1.plate.used_columns or ()
ALL_WELLS: tuple[str, ...] = RXRX1.wells
NEGATIVE_CONTROL_WELL = "B02"

N_TREATMENTS = RXRX1.perturbations.n_treatments
POSITIVE_CONTROL_SIRNAS: tuple[int, ...] = RXRX1.perturbations.control(WellType.POSITIVE_CONTROL.value).labels
(NEGATIVE_CONTROL_SIRNA,) = RXRX1.perturbations.control(WellType.NEGATIVE_CONTROL.value).labels
N_CLASSES_WITH_CONTROLS = max(RXRX1.perturbations.control_labels) + 1

PATH_COLUMNS: tuple[str, ...] = RXRX1.path_columns
PIXEL_MEAN_COLUMNS: tuple[str, ...] = RXRX1.pixel_mean_columns
PIXEL_STD_COLUMNS: tuple[str, ...] = RXRX1.pixel_std_columns

# The validated site table (cellio.read_metadata), one row per site, in this column order.
# pixel_* columns are NaN where pixel_stats.csv is absent.
SITE_COLUMNS: tuple[str, ...] = (
    "id_code", "dataset", "experiment", "cell_type", "plate", "well", "site", "well_type", "sirna",
    *PATH_COLUMNS, *PIXEL_MEAN_COLUMNS, *PIXEL_STD_COLUMNS,
)

COMPOSITE_COLORS: tuple[tuple[int, int, int], ...] = tuple(c.color for c in RXRX1.channels if c.color is not None)
COMPOSITE_RANGES: tuple[tuple[int, int], ...] = tuple(c.display_range for c in RXRX1.channels
                                                      if c.display_range is not None)

# Kaggle's pixel_stats.csv averaged over the set: the synthetic generator's brightness per channel.
GLOBAL_PIXEL_MEAN: tuple[float, ...] = (6.747, 14.746, 10.513, 10.454, 5.500, 9.815)
GLOBAL_PIXEL_STD: tuple[float, ...] = (7.959, 12.173, 5.862, 7.835, 4.701, 5.431)

_EXPERIMENT_RE = re.compile(r"^([A-Z0-9]+)-(\d{2,})$")
_WELL_RE = re.compile(r"^([A-P])(\d{2})$")


def parse_experiment(name: str) -> tuple[str, int]:
    """'HUVEC-07' -> ('HUVEC', 7). Raises ValueError naming the expected form."""
    m = _EXPERIMENT_RE.match(str(name))
    if not m:
        raise ValueError(f"experiment {name!r} is not of the form CELLTYPE-NN (e.g. 'HUVEC-07')")
    return m.group(1), int(m.group(2))


def parse_well(well: str) -> tuple[str, int]:
    """'B03' -> ('B', 3). Raises ValueError if the well is not a letter and two digits."""
    m = _WELL_RE.match(str(well))
    if not m:
        raise ValueError(f"well {well!r} is not a row letter and a two-digit column (e.g. 'B03')")
    return m.group(1), int(m.group(2))


def make_id_code(experiment: str, plate: int, well: str) -> str:
    return RXRX1.ids.well_id(experiment=experiment, plate=int(plate), well=well)


def image_relpath(dataset: str, experiment: str, plate: int, well: str, site: int, channel: int) -> str:
    """Kaggle layout: train/HUVEC-10/Plate3/J02_s1_w1.png (POSIX, relative to the data set root)."""
    return f"{dataset}/{experiment}/Plate{int(plate)}/{well}_s{int(site)}_w{int(channel)}.png"
