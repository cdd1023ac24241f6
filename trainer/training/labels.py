"""Raw class ids (the layout's label column: RxRx1's `sirna`) <-> the model's output columns.

The loader yields raw class ids (-1 when unknown). A `ClassMap` fixes which ids the model predicts and in which
column: the treatments seen in training (1108 on RxRx1), optionally followed by the controls as extra classes
(1139 on RxRx1, what the winning teams did). It travels inside every checkpoint (`to_dict`/`from_dict`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from cellio.errors import ConfigError, MetadataError

if TYPE_CHECKING:
    import pandas as pd
    import torch

__all__ = ["ClassMap", "IGNORE_INDEX"]

IGNORE_INDEX = -100  # torch's cross-entropy default ignore_index: unknown or unmapped labels


@dataclass(frozen=True)
class ClassMap:
    classes: tuple[int, ...]                      # raw class id (label column) of each output column
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

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def from_sites(cls, sites: "pd.DataFrame", include_controls: bool) -> "ClassMap":
        """Classes from the labelled rows of a site table (its layout's labelled splits and label column):
        treatments (sorted), then controls if asked."""
        from .layout import label_column, labelled_rows, layout_of, require_int_labels, treatment_mask

        layout = layout_of(sites)
        label = label_column(layout)
        needed = {"dataset", layout.perturbations.well_type_column, label}
        missing = needed - set(sites.columns)
        if missing:
            raise MetadataError(f"site table: expected columns {sorted(needed)} (layout {layout.name!r}); missing "
                                f"{sorted(missing)}")
        require_int_labels(layout, "ClassMap")
        keep = labelled_rows(sites, layout)
        is_treat = treatment_mask(sites, layout)
        treat = sorted({int(s) for s in sites.loc[keep & is_treat, label]})
        controls = sorted({int(s) for s in sites.loc[keep & ~is_treat, label]}) if include_controls else []
        return cls(tuple(treat + [c for c in controls if c not in set(treat)]))

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
        return {"classes": list(self.classes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClassMap":
        if "classes" not in d:
            raise ConfigError(f"ClassMap.from_dict: expected a 'classes' key, found keys {sorted(d)}")
        return cls(tuple(d["classes"]))
