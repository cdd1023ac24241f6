"""What the trainer needs to know about a data set, read from its layout (`cellio.DatasetLayout`), never from one
data set's constants: the labelled splits, the label and well-type columns, the cell types and the input
channels. A store records its layout (`Store.layout`; `Store.sites.attrs["layout"]` too); a site table without
one (an RxRx1 table written before layouts existed) holds RxRx1, as cellio itself reads it.

    layout = layout_of(store.sites)                 # the table's layout
    labelled_splits(layout)                          # ("train",) on RxRx1: its test labels are hidden
    labelled_rows(store.sites)                       # bool mask: rows of a labelled split with a label
    groups, why = plate_constraint(store.sites)      # RxRx1's plate groups, or None and the reason there are none
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

import cellio
from cellio.errors import CellioError, ConfigError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DEFAULT_LAYOUT", "HIDDEN_SPLIT", "layout_of", "labelled_splits", "label_column", "treatment_mask",
           "labelled_rows", "input_channels", "plate_constraint", "require_plate_constraint"]

DEFAULT_LAYOUT = "rxrx1"   # the layout of a table (or checkpoint) that names none: written before layouts existed
HIDDEN_SPLIT = "test"      # the split whose labels a layout with hidden_test_labels hides


def layout_of(sites: "pd.DataFrame") -> Any:
    """The layout a site table carries (`attrs["layout"]`, as `Store.sites` and cellio's readers set it), else
    RxRx1's."""
    layout = sites.attrs.get("layout")
    return layout if layout is not None else cellio.get_layout(DEFAULT_LAYOUT)


def labelled_splits(layout: Any) -> tuple[str, ...]:
    """The splits whose wells carry their labels: every split, less the test split where its labels are hidden."""
    return tuple(s for s in layout.splits if not (layout.hidden_test_labels and s == HIDDEN_SPLIT))


def label_column(layout: Any) -> str:
    return str(layout.perturbations.label_column)


def treatment_mask(sites: "pd.DataFrame", layout: Any | None = None) -> np.ndarray:
    """Rows of treatment wells (the layout's well-type column equal to its treatment well type)."""
    layout = layout if layout is not None else layout_of(sites)
    p = layout.perturbations
    return (sites[p.well_type_column] == p.treatment_well_type).to_numpy()


def labelled_rows(sites: "pd.DataFrame", layout: Any | None = None) -> np.ndarray:
    """Rows of a labelled split that carry a label."""
    layout = layout if layout is not None else layout_of(sites)
    return (sites["dataset"].isin(labelled_splits(layout)) & sites[label_column(layout)].notna()).to_numpy()


def input_channels(store: Any) -> int:
    """The number of channels a model of this store's images takes (the store's channel axis: (H, W, C))."""
    return int(store.image_shape[2])


# the site-table vocabulary the plate-constraint code (cellio.derive_plate_groups, trainer.infer.rotation/assign)
# reads: RxRx1's label column and well types
_PLATE_CONSTRAINT_COLUMNS = ("sirna", "well_type")
_PLATE_CONSTRAINT_WELL_TYPES = {"treatment", "negative_control", "positive_control"}


def plate_constraint(sites: "pd.DataFrame") -> tuple[Any, str]:
    """(cellio.PlateGroups, "") when the data set has RxRx1's plate constraint: its treatments form 4 groups, each
    plate of an experiment holds one group (each treatment once), and an experiment's plates hold the groups in one
    of 4 cyclic rotations, derived from its labelled wells by cellio.derive_plate_groups; else (None, why). Only a
    layout labelled as RxRx1 is (integer classes in `sirna`, RxRx1's well types in `well_type`) can have it; the plate
    geometry does not matter (the constraint is per plate, not per well position)."""
    layout = layout_of(sites)
    p = layout.perturbations
    if p.label_kind != "int" or (p.label_column, p.well_type_column) != _PLATE_CONSTRAINT_COLUMNS \
            or not set(p.well_types) <= _PLATE_CONSTRAINT_WELL_TYPES:
        return None, (f"data set {layout.name!r} has no RxRx1-style plate constraint (its wells are labelled in "
                      f"{p.label_column!r} with well types {list(p.well_types)}; the plate groups need integer "
                      "classes in 'sirna' and RxRx1's well types)")
    try:
        return cellio.derive_plate_groups(sites[labelled_rows(sites, layout)]), ""
    except CellioError as exc:
        return None, f"data set {layout.name!r}: no plate groups in its labelled wells ({exc})"


def require_plate_constraint(sites: "pd.DataFrame", what: str) -> Any:
    """The plate groups (plate_constraint), or a ConfigError naming `what` needs them and why there are none."""
    groups, why = plate_constraint(sites)
    if groups is None:
        raise ConfigError(f"{what} needs the plate constraint: {why}")
    return groups
