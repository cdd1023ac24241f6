"""The model's output columns and the labels they stand for.

The loader yields a raw class id per site (-1 when unknown). A `ClassMap` fixes which ids the model predicts and in
which column: the treatments seen in training, optionally followed by the controls as extra classes (1108 + 31 =
1139 on RxRx1, what the winning teams did). It travels inside every checkpoint (`to_dict`/`from_dict`).

Two kinds of labels, as the data set's layout says (`Perturbations.label_kind`):

- **class ids** ("int", RxRx1's `sirna`): the raw id is the label column's value; the loader reads it from the
  store.
- **names** ("str": RxRx3-core's gene or compound in `perturbation`, RxRx2's soluble factor in `treatment`): the
  class map holds a vocabulary, `names`, built from the store's site table (the treatments' names sorted, then the
  controls' names sorted, each control group as the layout lists it); a class's raw id is its position there. The
  trainer hands the loader each site's id (`loader_labels` -> `cellio.create_loader(labels=...)`), and checkpoints,
  predictions and reports name classes by `names`.

**Dose.** Where a treatment is given at several doses (RxRx3-core's compounds at 8 concentrations, RxRx2's factors
at several), a class is the treatment *at a dose* ("Compound-A @ 0.25"): a compound's phenotype depends on its
dose — at its lowest doses most compounds look like the control — so pooling the doses would make one class of
wells that look different, and a map profiles compounds per concentration (EFAAR's compound benchmarks score
compound–concentration pairs). `data.dose_column` chooses: `auto` (default) takes the first numeric column among
the layout's perturbation columns (`Perturbations.columns`) whose value varies within one label among the labelled
treatment wells (RxRx3-core: `concentration`, RxRx2: `treatment_conc`; a gene's concentration is empty, so genes
stay one class with their guides as replicates); `none` keeps the label alone (a compound pooled over its doses);
a column name uses that column. Controls never take a dose. Labels that are class ids ignore it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from cellio.errors import ConfigError, MetadataError

if TYPE_CHECKING:
    import pandas as pd
    import torch

__all__ = ["ClassMap", "IGNORE_INDEX", "AUTO_DOSE", "NO_DOSE", "DOSE_SEPARATOR", "dose_column", "class_names"]

IGNORE_INDEX = -100  # torch's cross-entropy default ignore_index: unknown or unmapped labels
AUTO_DOSE, NO_DOSE = "auto", "none"   # data.dose_column's two words (else a column name)
DOSE_SEPARATOR = " @ "                # "Compound-A @ 0.25": a named treatment at a dose


def _format_dose(value: float) -> str:
    """The shortest text that reads back as the same float (0.0025, 10): two doses never share a name."""
    return np.format_float_positional(float(value), trim="-")


def dose_column(sites: "pd.DataFrame", setting: str = AUTO_DOSE) -> str | None:
    """The column whose value joins a named label in a class name (module docstring), or None: `setting` is
    data.dose_column ('auto', 'none' or a column). Labels that are class ids have none."""
    import pandas as pd

    from .layout import label_column, labelled_rows, layout_of, treatment_mask

    layout = layout_of(sites)
    if layout.perturbations.label_kind == "int" or setting == NO_DOSE:
        return None
    if setting != AUTO_DOSE:
        if setting not in sites.columns or not pd.api.types.is_numeric_dtype(sites[setting]):
            numeric = [c for c in sites.columns if pd.api.types.is_numeric_dtype(sites[c])]
            raise ConfigError(f"data.dose_column={setting!r}: expected 'auto', 'none' or a numeric column of data "
                              f"set {layout.name!r}'s site table, one of {numeric}")
        return setting
    label = label_column(layout)
    treated = sites[labelled_rows(sites, layout) & treatment_mask(sites, layout)]
    for column in layout.perturbations.columns:
        if column in treated.columns and pd.api.types.is_numeric_dtype(treated[column]):
            doses = treated[[label, column]].dropna()
            if len(doses) and int(doses.groupby(label)[column].nunique().max()) > 1:
                return column
    return None


def class_names(sites: "pd.DataFrame", columns: Sequence[str]) -> "pd.Series":
    """Each row's class name (object Series, None where the row has no class): the label (`columns[0]`) of a
    labelled row, at its dose (`columns[1]`, when given and the treatment row has one). A treatment row with an
    empty label has no class; a control keeps its layout's label, even an empty one (RxRx2's untreated wells)."""
    import pandas as pd

    from .layout import labelled_rows, layout_of, treatment_mask

    layout = layout_of(sites)
    missing = [c for c in columns if c not in sites.columns]
    if missing:
        raise MetadataError(f"site table of data set {layout.name!r}: expected the class columns {list(columns)}; "
                            f"missing {missing}")
    labelled = labelled_rows(sites, layout)
    treated = treatment_mask(sites, layout)
    label = sites[columns[0]].astype(object)
    names = pd.Series([str(v) if ok else None for v, ok in zip(label, labelled)], index=sites.index, dtype=object)
    names[treated & (names == "").to_numpy()] = None
    if len(columns) > 1:
        dose = sites[columns[1]]
        dosed = (treated & dose.notna().to_numpy() & names.notna().to_numpy())
        names[dosed] = [f"{n}{DOSE_SEPARATOR}{_format_dose(d)}" for n, d in zip(names[dosed], dose[dosed])]
    return names


@dataclass(frozen=True)
class ClassMap:
    classes: tuple[int, ...]                      # raw class id of each output column
    names: tuple[str, ...] | None = None          # named labels: raw id i is the class names[i]; None: class ids
    columns: tuple[str, ...] = ()                 # named labels: the site-table columns a name is made of
    _lookup: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        classes = tuple(int(c) for c in self.classes)
        if not classes:
            raise ConfigError("ClassMap: expected at least one class, found none (no labelled train sites?)")
        if len(set(classes)) != len(classes):
            raise ConfigError(f"ClassMap: class ids must be unique, found duplicates in {classes[:20]}...")
        if min(classes) < 0:
            raise ConfigError(f"ClassMap: class ids are raw class ids >= 0, found {min(classes)}")
        object.__setattr__(self, "classes", classes)
        if self.names is not None:
            names = tuple(str(n) for n in self.names)
            if classes != tuple(range(len(names))):
                raise ConfigError(f"ClassMap: named classes are the vocabulary's positions 0..{len(names) - 1}, "
                                  f"found {len(classes)} ids starting {classes[:5]}")
            if len(set(names)) != len(names):
                dup = sorted({n for n in names if names.count(n) > 1})
                raise ConfigError(f"ClassMap: class names must be unique, found duplicates {dup[:5]}")
            if not self.columns:
                raise ConfigError("ClassMap: named classes need the site-table columns their names are made of")
            object.__setattr__(self, "names", names)
        object.__setattr__(self, "columns", tuple(str(c) for c in self.columns))

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def from_sites(cls, sites: "pd.DataFrame", include_controls: bool, dose: str = AUTO_DOSE) -> "ClassMap":
        """Classes from the labelled rows of a site table (its layout's labelled splits and label column):
        treatments (sorted), then controls if asked. Named labels get their vocabulary (module docstring); `dose`
        is data.dose_column."""
        from .layout import label_column, labelled_rows, layout_of, treatment_mask

        layout = layout_of(sites)
        label = label_column(layout)
        needed = {"dataset", layout.perturbations.well_type_column, label}
        missing = needed - set(sites.columns)
        if missing:
            raise MetadataError(f"site table: expected columns {sorted(needed)} (layout {layout.name!r}); missing "
                                f"{sorted(missing)}")
        is_treat = treatment_mask(sites, layout)
        if layout.perturbations.label_kind == "int":
            keep = labelled_rows(sites, layout)
            treat = sorted({int(s) for s in sites.loc[keep & is_treat, label]})
            controls = sorted({int(s) for s in sites.loc[keep & ~is_treat, label]}) if include_controls else []
            return cls(tuple(treat + [c for c in controls if c not in set(treat)]))
        by = dose_column(sites, dose)
        columns = (label,) if by is None else (label, by)
        names = class_names(sites, columns)
        known = names.notna().to_numpy()
        treat = sorted(set(names[known & is_treat]))
        controls = sorted(set(names[known & ~is_treat]) - set(treat)) if include_controls else []
        vocabulary = tuple(treat + controls)
        return cls(tuple(range(len(vocabulary))), vocabulary, columns)

    def row_ids(self, sites: "pd.DataFrame") -> np.ndarray:
        """Each row's raw class id (int64; -1 where the row has no class of this map's kind): the label column's
        class id, or the position of the row's class name in the vocabulary (-1 for a name not in it)."""
        from .layout import label_column, layout_of

        if self.names is None:
            label = sites[label_column(layout_of(sites))]
            return label.astype("Int64").fillna(-1).to_numpy(dtype=np.int64)
        import pandas as pd

        names = class_names(sites, self.columns)
        pos = pd.Index(self.names).get_indexer(names.fillna("\0no class\0"))
        return pos.astype(np.int64)

    def loader_labels(self, sites: "pd.DataFrame", rows: np.ndarray) -> dict[int, int] | None:
        """store row -> raw class id for `rows` (cellio.create_loader's `labels=`), where the loader cannot read the
        label from the store (named labels); None for class ids (the loader reads them itself)."""
        if self.names is None:
            return None
        rows = np.asarray(rows, dtype=np.int64)
        return dict(zip(rows.tolist(), self.row_ids(sites)[rows].tolist()))

    def name(self, raw_id: int) -> str | int:
        """A raw class id as the data set names it: its class name, or the id itself for class-id labels."""
        if self.names is None:
            return int(raw_id)
        if not 0 <= int(raw_id) < len(self.names):
            raise ConfigError(f"ClassMap.name: expected a raw class id in 0..{len(self.names) - 1}, found {raw_id}")
        return self.names[int(raw_id)]

    def _table(self) -> "torch.Tensor":
        import torch

        if self._lookup is None:  # class id -> column, IGNORE_INDEX elsewhere; built once, cached
            table = torch.full((max(self.classes) + 1,), IGNORE_INDEX, dtype=torch.int64)
            table[torch.tensor(self.classes, dtype=torch.int64)] = torch.arange(len(self.classes))
            object.__setattr__(self, "_lookup", table)
        return self._lookup

    def encode(self, sirna: "torch.Tensor") -> "torch.Tensor":
        """Raw class ids (int64, -1 = unknown) -> class indices; IGNORE_INDEX for unknown or unmapped ids."""
        import torch

        table = self._table().to(sirna.device)
        sirna = sirna.long()
        inside = (sirna >= 0) & (sirna < table.numel())
        out = torch.full_like(sirna, IGNORE_INDEX)
        out[inside] = table[sirna[inside]]
        return out

    def decode(self, indices: "torch.Tensor | Sequence[int]") -> "torch.Tensor":
        """Class indices -> raw class ids (int64)."""
        import torch

        classes = torch.tensor(self.classes, dtype=torch.int64)
        idx = torch.as_tensor(indices, dtype=torch.int64)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self.classes)):
            raise ConfigError(f"ClassMap.decode: expected indices in 0..{len(self.classes) - 1}, "
                              f"found {int(idx.min())}..{int(idx.max())}")
        return classes.to(idx.device)[idx]

    def to_dict(self) -> dict[str, Any]:
        if self.names is None:
            return {"classes": list(self.classes)}
        return {"classes": list(self.classes), "names": list(self.names), "columns": list(self.columns)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClassMap":
        if "classes" not in d:
            raise ConfigError(f"ClassMap.from_dict: expected a 'classes' key, found keys {sorted(d)}")
        names = d.get("names")
        return cls(tuple(d["classes"]), None if names is None else tuple(names), tuple(d.get("columns", ())))
