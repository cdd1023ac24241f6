"""RxRx1's plate groups: which treatment siRNAs share a plate, as 4 groups, and each experiment's rotation of the
groups over its 4 plates (docs/architecture.md, "Plate groups").

    groups = derive_plate_groups(sites)          # sites: read_metadata's table (or train.csv-like)
    groups.allowed_sirnas(plate=2, rotation=1)   # the siRNAs plate 2 of such an experiment can hold
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from ...errors import MetadataError
from ...records import from_dict, to_dict
from .layout import N_TREATMENTS, PLATES, WellType

__all__ = ["PlateGroups", "derive_plate_groups"]


@dataclass(frozen=True)
class PlateGroups:
    """The 4 disjoint treatment-siRNA groups and each (train) experiment's rotation: plate p of an experiment with
    rotation r holds group (p - 1 + r) % 4."""

    groups: tuple[tuple[int, ...], ...]
    rotations: Mapping[str, int]
    _lookup: Mapping[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        groups = tuple(tuple(sorted(int(s) for s in g)) for g in self.groups)
        if len(groups) != 4:
            raise MetadataError(f"PlateGroups: expected 4 groups, found {len(groups)}")
        lookup: dict[int, int] = {}
        for gi, g in enumerate(groups):
            for s in g:
                if s in lookup:
                    raise MetadataError(f"PlateGroups: sirna {s} is in groups {lookup[s]} and {gi}; expected disjoint")
                lookup[s] = gi
        rotations = {str(k): int(v) for k, v in dict(self.rotations).items()}
        bad = {k: v for k, v in rotations.items() if not 0 <= v <= 3}
        if bad:
            raise MetadataError(f"PlateGroups: rotations must be in 0..3; found {bad}")
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "rotations", MappingProxyType(dict(sorted(rotations.items()))))
        object.__setattr__(self, "_lookup", MappingProxyType(lookup))

    def group_of(self, sirna: int) -> int:
        try:
            return self._lookup[int(sirna)]
        except KeyError:
            raise MetadataError(f"PlateGroups.group_of: sirna {sirna} is in no plate group "
                                "(controls and unseen siRNAs have none)") from None

    def plate_group(self, plate: int, rotation: int) -> int:
        if int(plate) not in PLATES or not 0 <= int(rotation) <= 3:
            raise MetadataError(f"PlateGroups.plate_group: expected plate in 1..4 and rotation in 0..3, "
                                f"got plate={plate}, rotation={rotation}")
        return (int(plate) - 1 + int(rotation)) % 4

    def allowed_sirnas(self, plate: int, rotation: int) -> tuple[int, ...]:
        return self.groups[self.plate_group(plate, rotation)]

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def __reduce__(self) -> tuple[Any, ...]:
        # mappingproxy fields do not pickle; rebuild from the JSON-safe form (DataLoader workers, checkpoints).
        return (PlateGroups.from_dict, (self.to_dict(),))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlateGroups:
        return from_dict(cls, d, error=MetadataError)


def derive_plate_groups(frame: pd.DataFrame) -> PlateGroups:
    """Connected components of "shares a plate" over treatment siRNAs (4 groups) and each labelled experiment's
    rotation. Group g is the group on plate g + 1 of the first train experiment (sorted by name)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    missing = [c for c in ("experiment", "plate", "sirna") if c not in frame.columns]
    if missing:
        raise MetadataError(f"derive_plate_groups: frame lacks column(s) {missing}; expected experiment, plate, sirna")
    sirna = pd.to_numeric(frame["sirna"], errors="coerce")
    treat = sirna.notna() & (sirna < N_TREATMENTS)
    if "well_type" in frame.columns:
        treat &= frame["well_type"] == WellType.TREATMENT.value
    df = pd.DataFrame({"experiment": frame["experiment"].astype(str), "plate": frame["plate"].astype(np.int64),
                       "sirna": sirna}).loc[treat]
    if "dataset" in frame.columns:
        df["dataset"] = frame.loc[treat, "dataset"].astype(str)
    df = df.drop_duplicates(["experiment", "plate", "sirna"])
    df["sirna"] = df["sirna"].astype(np.int64)
    if df.empty:
        raise MetadataError("derive_plate_groups: no labelled treatment rows (sirna 0..1107) in the frame")

    nodes, node = np.unique(df["sirna"].to_numpy(), return_inverse=True)
    plate_key = pd.factorize(df["experiment"] + "|" + df["plate"].astype(str))[0]
    # Star edges: every siRNA of a plate to the plate's first siRNA.
    first = pd.Series(node).groupby(plate_key).transform("first").to_numpy()
    graph = coo_matrix((np.ones(len(node)), (node, first)), shape=(len(nodes), len(nodes)))
    n_comp, comp = connected_components(graph, directed=False)
    if n_comp != 4:
        sizes = sorted(np.bincount(comp).tolist(), reverse=True)
        raise MetadataError(f"derive_plate_groups: treatment siRNAs that share a plate form {n_comp} connected "
                            f"group(s) of sizes {sizes[:10]}; expected 4 disjoint groups (a mislabelled well "
                            "merges groups; too few experiments or missing wells can split them)")
    df["comp"] = comp[node]

    exps = sorted(df["experiment"].unique())
    if "dataset" in df.columns and (df["dataset"] == "train").any():
        ref_exp = sorted(df.loc[df["dataset"] == "train", "experiment"].unique())[0]
    else:
        ref_exp = exps[0]
    # Component -> group index from the reference experiment's plates 1..4.
    ref = df[df["experiment"] == ref_exp].groupby("plate")["comp"].first()
    comp_to_group: dict[int, int] = {}
    for plate, c in ref.items():
        comp_to_group.setdefault(int(c), int(plate) - 1)
    for c in sorted(set(range(4)) - set(comp_to_group), key=lambda c: int(nodes[comp == c].min())):
        comp_to_group[c] = min(set(range(4)) - set(comp_to_group.values()))
    df["group"] = df["comp"].map(comp_to_group)

    rotations: dict[str, int] = {}
    per_plate = df.groupby(["experiment", "plate"])["group"].first().reset_index()
    per_plate["rot"] = (per_plate["group"] - (per_plate["plate"] - 1)) % 4
    for exp, rows in per_plate.groupby("experiment"):
        rots = rows["rot"].unique()
        if len(rots) != 1:
            majority = rows["rot"].mode().iloc[0]
            bad = rows[rows["rot"] != majority].iloc[0]
            raise MetadataError(f"derive_plate_groups: experiment {exp!r} plate {int(bad['plate'])} holds group "
                                f"{int(bad['group'])}, which no single cyclic rotation of the group->plate mapping "
                                f"allows together with its other plates (rotations seen {sorted(map(int, rots))})")
        rotations[str(exp)] = int(rots[0])
    groups = tuple(tuple(int(s) for s in sorted(nodes[[comp_to_group[int(c)] == g for c in comp]]))
                   for g in range(4))
    return PlateGroups(groups=groups, rotations=rotations)
