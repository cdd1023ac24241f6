"""RxRx1 facts as constants: a backward-compatible public module, kept so code written against it (the trainer)
runs unchanged. Every value comes from the RxRx1 layout (`cellio/datasets/rxrx1/layout.py`, `RXRX1`).

New code reads the layout of the store it opens instead (`cellio.open_store(path).layout`: channel names, cell
types, plate geometry, perturbations) or `cellio.get_layout("rxrx1")`; inside cellio nothing but the RxRx1
package itself imports these constants (tests/test_imports.py).
"""
from __future__ import annotations

from .datasets.rxrx1.layout import (
    ALL_WELLS,
    CELL_TYPES,
    CHANNEL_NAMES,
    CHANNELS,
    COMPOSITE_COLORS,
    COMPOSITE_RANGES,
    DATASETS,
    GLOBAL_PIXEL_MEAN,
    GLOBAL_PIXEL_STD,
    KAGGLE_SLUG,
    N_CHANNELS,
    N_CLASSES_WITH_CONTROLS,
    N_TREATMENTS,
    NEGATIVE_CONTROL_SIRNA,
    NEGATIVE_CONTROL_WELL,
    PATH_COLUMNS,
    PIXEL_MEAN_COLUMNS,
    PIXEL_STD_COLUMNS,
    PLATES,
    POSITIVE_CONTROL_SIRNAS,
    SITE_COLUMNS,
    SITES,
    WELL_COLS,
    WELL_ROWS,
    WellType,
    image_relpath,
    make_id_code,
    parse_experiment,
    parse_well,
)

__all__ = [
    "CELL_TYPES", "CHANNELS", "CHANNEL_NAMES", "N_CHANNELS", "PLATES", "SITES", "WELL_ROWS", "WELL_COLS", "ALL_WELLS",
    "NEGATIVE_CONTROL_WELL", "N_TREATMENTS", "POSITIVE_CONTROL_SIRNAS", "NEGATIVE_CONTROL_SIRNA",
    "N_CLASSES_WITH_CONTROLS", "WellType", "DATASETS", "SITE_COLUMNS", "PATH_COLUMNS", "PIXEL_MEAN_COLUMNS",
    "PIXEL_STD_COLUMNS", "COMPOSITE_COLORS", "COMPOSITE_RANGES", "GLOBAL_PIXEL_MEAN", "GLOBAL_PIXEL_STD",
    "KAGGLE_SLUG", "parse_experiment", "parse_well", "make_id_code", "image_relpath",
]
