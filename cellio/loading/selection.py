"""Which store rows a loader reads, and what it yields for each: `select_sites` (the filters by split, cell type,
experiment and control wells, checked against the store's layout) and `site_meta` (labels, cell-type indices,
sites, plates and the normalisation statistics of the selected rows). Both take the vocabulary (splits, cell types,
the label column, which wells are controls) from the layout of the store, never from a data set's constants."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..datasets import DatasetLayout
from ..errors import PipelineConfigError
from .sources import SiteMeta

__all__ = ["select_sites", "site_meta", "plate_numbers"]


def _as_tuple(name: str, value: Any, allowed: Sequence[str] | None = None) -> tuple[str, ...] | None:
    if value is None:
        return None
    vals = (value,) if isinstance(value, str) else tuple(value)
    if not vals:
        raise PipelineConfigError(f"{name}: expected a non-empty list or None, found {value!r}")
    if allowed is not None:
        bad = [v for v in vals if v not in allowed]
        if bad:
            raise PipelineConfigError(f"{name}: expected values in {tuple(allowed)}, found {bad}")
    return vals


def select_sites(sites: pd.DataFrame, *, datasets: Any = ("train",), cell_types: Any = None,
                 experiments: Any = None, controls: bool | str = True,
                 indices: Sequence[int] | np.ndarray | None = None,
                 layout: DatasetLayout | None = None) -> np.ndarray:
    """Store rows (ascending) passing the filters. controls: True keep, False drop, "only" keep only controls.

    layout: the data set's (default: the one the table carries, `sites.attrs["layout"]`, as `Store.sites` and
    `read_metadata` set it): datasets and cell_types must be among its splits and cell types, and its
    perturbations say which wells are controls. A table without one is filtered without those checks.
    """
    layout = layout if layout is not None else sites.attrs.get("layout")
    datasets = _as_tuple("datasets", datasets, layout.splits if layout is not None else None)
    cell_types = _as_tuple("cell_types", cell_types, layout.cell_types if layout is not None else None)
    experiments = _as_tuple("experiments", experiments)
    keep = np.ones(len(sites), dtype=bool)
    if indices is not None:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(sites)):
            raise PipelineConfigError(f"indices: expected store rows in 0..{len(sites) - 1}, found "
                                      f"{int(idx.min())}..{int(idx.max())}")
        keep[:] = False
        keep[idx] = True
    if datasets is not None:
        keep &= sites["dataset"].isin(datasets).to_numpy()
    if cell_types is not None:
        keep &= sites["cell_type"].isin(cell_types).to_numpy()
    if experiments is not None:
        unknown = sorted(set(experiments) - set(sites["experiment"].unique()))
        if unknown:
            raise PipelineConfigError(f"experiments: {unknown} are not in the store")
        keep &= sites["experiment"].isin(experiments).to_numpy()
    well_type, treatment = ("well_type", "treatment") if layout is None else \
        (layout.perturbations.well_type_column, layout.perturbations.treatment_well_type)
    is_control = (sites[well_type] != treatment).to_numpy()
    if controls is False:
        keep &= ~is_control
    elif controls == "only":
        keep &= is_control
    elif controls is not True:
        raise PipelineConfigError(f"controls: expected True, False or 'only', found {controls!r}")
    return np.flatnonzero(keep).astype(np.int64)


def plate_numbers(plates: pd.Series) -> np.ndarray:
    """int64 plate of each row: the plate itself where plates are numbers (RxRx1), else the index of its name among
    the table's sorted plate names (JUMP's "BR00117035")."""
    if pd.api.types.is_integer_dtype(plates.dtype):
        return plates.to_numpy(np.int64)
    names = plates.astype(str)
    return np.searchsorted(np.array(sorted(set(names))), names.to_numpy()).astype(np.int64)


def site_meta(store: Any, rows: np.ndarray, normalize: str | None,
              labels: Mapping[int, int] | None = None, channels: np.ndarray | None = None) -> SiteMeta:
    """What the loader yields for each selected store row: the label (the layout's label column where its labels
    are class ids, -1 where unknown or named; `labels` overrides rows), the cell type as an index into the layout's
    cell types (-1 for another), site, plate (`plate_numbers` of the store's table), and the (mean, std) the pixels
    are normalised with: per channel, from the store's exact statistics at the chosen level, in the data's grey
    levels (any range), for the store channels `channels` (None: all) in that order."""
    layout: DatasetLayout = store.layout
    sites = store.sites.iloc[rows]
    perturbations = layout.perturbations
    if perturbations.label_kind == "int":
        label = sites[perturbations.label_column].astype("Int64").fillna(-1).to_numpy(dtype=np.int64)
    else:  # names (genes, compounds): the caller maps them to classes through `labels`
        label = np.full(len(rows), -1, dtype=np.int64)
    if labels:
        given = pd.Series(labels, dtype="int64")
        pos = pd.Index(rows).get_indexer(given.index)
        if (pos < 0).any():
            raise PipelineConfigError(f"labels: store rows {given.index[pos < 0][:5].tolist()} are not in the "
                                      "loader's selection (filters and indices)")
        label[pos] = given.to_numpy()
    ct_index = {c: i for i, c in enumerate(layout.cell_types)}
    cell_type = np.array([ct_index.get(c, -1) for c in sites["cell_type"]], dtype=np.int64)
    C = int(store.image_shape[2]) if channels is None else len(channels)
    if normalize is None:  # x / max -> [0, 1] (the pixel type's largest value: 255, 65535)
        mean = np.zeros((len(rows), C), np.float32)
        std = np.full((len(rows), C), float(layout.max_value), np.float32)
    else:
        level = "site" if normalize == "sample" else normalize
        m, s = store.channel_stats(level)
        mean, std = np.asarray(m, np.float32)[rows], np.asarray(s, np.float32)[rows]
        if channels is not None:
            mean, std = np.ascontiguousarray(mean[:, channels]), np.ascontiguousarray(std[:, channels])
    plates = plate_numbers(store.sites["plate"])[rows]
    return SiteMeta(rows=rows, label=label, cell_type=cell_type, site=sites["site"].to_numpy(np.int64),
                    plate=plates, mean=mean, std=std)
