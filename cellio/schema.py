"""RxRx1 facts as constants: a backward-compatible public module, kept so code written against it (the trainer)
runs unchanged. Every name is the RxRx1 package's (`cellio/datasets/rxrx1/layout.py`), whose values come from the
RxRx1 layout, `RXRX1`: CELL_TYPES, CHANNELS, CHANNEL_NAMES, N_CHANNELS, PLATES, SITES, WELL_ROWS, WELL_COLS,
ALL_WELLS, NEGATIVE_CONTROL_WELL, N_TREATMENTS, POSITIVE_CONTROL_SIRNAS, NEGATIVE_CONTROL_SIRNA,
N_CLASSES_WITH_CONTROLS, WellType, DATASETS, SITE_COLUMNS, PATH_COLUMNS, PIXEL_MEAN_COLUMNS, PIXEL_STD_COLUMNS,
COMPOSITE_COLORS, COMPOSITE_RANGES, GLOBAL_PIXEL_MEAN, GLOBAL_PIXEL_STD, KAGGLE_SLUG, parse_experiment,
parse_well, make_id_code, image_relpath.

New code reads the layout of the store it opens instead (`cellio.open_store(path).layout`: channel names, cell
types, plate geometry, perturbations) or `cellio.get_layout("rxrx1")`; inside cellio nothing but the RxRx1
package itself imports these constants (tests/test_imports.py).
"""
from __future__ import annotations

from .datasets.rxrx1.layout import *  # noqa: F401,F403  (the names are the RxRx1 package's own)
from .datasets.rxrx1.layout import __all__ as _rxrx1_names

__all__ = [name for name in _rxrx1_names if name != "RXRX1"]
