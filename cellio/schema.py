"""RxRx1 facts as constants: cell types, channels, plate geometry, well types and the site table's columns.

Closed sets are tuples/enums here; nothing in this module does I/O. See docs/rxrx1.md.
"""
from __future__ import annotations

import re
from enum import Enum

__all__ = [
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

KAGGLE_SLUG = "recursion-cellular-image-classification"

CELL_TYPES: tuple[str, ...] = ("HEPG2", "HUVEC", "RPE", "U2OS")
N_CHANNELS = 6
CHANNELS: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
# Stains documented for the sibling set RxRx19b (same protocol assumed).
CHANNEL_NAMES: tuple[str, ...] = ("Hoechst", "ConA", "Phalloidin", "Syto14", "MitoTracker", "WGA")
PLATES: tuple[int, ...] = (1, 2, 3, 4)
SITES: tuple[int, ...] = (1, 2)
DATASETS: tuple[str, ...] = ("train", "test")

# 384-well plate with the outer ring unused: rows B..O, columns 02..23 -> 308 wells.
WELL_ROWS: str = "BCDEFGHIJKLMNO"
WELL_COLS: tuple[int, ...] = tuple(range(2, 24))
ALL_WELLS: tuple[str, ...] = tuple(f"{r}{c:02d}" for r in WELL_ROWS for c in WELL_COLS)
NEGATIVE_CONTROL_WELL = "B02"

N_TREATMENTS = 1108
POSITIVE_CONTROL_SIRNAS: tuple[int, ...] = tuple(range(1108, 1138))
NEGATIVE_CONTROL_SIRNA = 1138
N_CLASSES_WITH_CONTROLS = 1139


class WellType(str, Enum):
    TREATMENT = "treatment"
    NEGATIVE_CONTROL = "negative_control"
    POSITIVE_CONTROL = "positive_control"


PATH_COLUMNS: tuple[str, ...] = tuple(f"path_w{c}" for c in CHANNELS)
PIXEL_MEAN_COLUMNS: tuple[str, ...] = tuple(f"pixel_mean_w{c}" for c in CHANNELS)
PIXEL_STD_COLUMNS: tuple[str, ...] = tuple(f"pixel_std_w{c}" for c in CHANNELS)

# The validated site table (cellio.read_metadata), one row per site, in this column order.
# pixel_* columns are NaN where pixel_stats.csv is absent.
SITE_COLUMNS: tuple[str, ...] = (
    "id_code", "dataset", "experiment", "cell_type", "plate", "well", "site", "well_type", "sirna",
    *PATH_COLUMNS, *PIXEL_MEAN_COLUMNS, *PIXEL_STD_COLUMNS,
)

# Official rxrx1-utils RGB composite: per channel tint and intensity range on 0..255.
COMPOSITE_COLORS: tuple[tuple[int, int, int], ...] = (
    (19, 0, 249), (42, 255, 31), (255, 0, 25), (45, 255, 252), (250, 0, 253), (254, 255, 40),
)
COMPOSITE_RANGES: tuple[tuple[int, int], ...] = ((0, 51), (0, 107), (0, 64), (0, 191), (0, 89), (0, 191))

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
    return f"{experiment}_{int(plate)}_{well}"


def image_relpath(dataset: str, experiment: str, plate: int, well: str, site: int, channel: int) -> str:
    """Kaggle layout: train/HUVEC-10/Plate3/J02_s1_w1.png (POSIX, relative to the data set root)."""
    return f"{dataset}/{experiment}/Plate{int(plate)}/{well}_s{int(site)}_w{int(channel)}.png"
