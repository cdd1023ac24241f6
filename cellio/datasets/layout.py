"""`DatasetLayout`: the shape of a data set, as a frozen, versioned value (normative form: docs/data_format.md).

Everything the store, the ingest, the loader and the display need to know about a data set that is not in its
pixels: the channels (store order, names, how raw files name them, the display composite), the pixel type, the
site shape and fields per well, the plate geometry and the wells used, the perturbation vocabulary and controls,
the cell types, the splits and whether the test split's labels are hidden, how ids are formed, and how the stored
pixels were made from the raw ones (`intensity`: illumination correction, 16 bits kept or a scaling). RxRx1 is one
instance (`cellio/datasets/rxrx1/layout.py`); another data set is another instance, never a branch in the code
that reads it. A store records its layout at ingest (`dataset_layout` attribute) and `open_store(...).layout`
reads it back.

    layout = cellio.get_layout("rxrx1")
    layout.n_channels, layout.channel_names, layout.pixel_dtype, layout.site_shape   # 6, (...), "uint8", (512, 512)
    d = layout.to_dict(); DatasetLayout.from_dict(d) == layout                          # JSON round trip

`to_dict` carries `layout_format` (the version of this dict form): `from_dict` refuses another major version, and a
key it does not know (a field a later cellio added) by name. Every field is checked on construction; a bad one is a
LayoutError naming it, with what was expected and what was found.
"""
from __future__ import annotations

import dataclasses
import re
import string
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import LayoutError
from ..records import from_dict, to_dict
from .intensity import Intensity

__all__ = ["LAYOUT_FORMAT", "PIXEL_DTYPES", "ID_FIELDS", "Channel", "PlateGeometry", "ControlGroup", "Perturbations",
           "IdFormats", "DatasetLayout", "row_label"]

LAYOUT_FORMAT = "1.1"  # 1.1: `intensity` (a 1.0 dict, without it, reads as the default)
# pixel types a layout may declare (the store writes uint8 today; uint16 describes JUMP-like sets for what comes next)
PIXEL_DTYPES: tuple[str, ...] = ("uint8", "uint16")
# site-table fields an id format may name
ID_FIELDS: tuple[str, ...] = ("experiment", "plate", "well", "site", "dataset", "cell_type")

_NAME = re.compile(r"[a-z][a-z0-9_-]*")
_KEY = re.compile(r"[A-Za-z0-9_]+")


def _fail(where: str, expected: str, found: Any) -> LayoutError:
    return LayoutError(f"{where}: expected {expected}, found {found!r}")


def _positive(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise _fail(where, "a positive integer", value)
    return int(value)


def _text(where: str, value: Any, pattern: re.Pattern[str] | None = None, what: str = "a non-empty string") -> str:
    if not isinstance(value, str) or not value or (pattern is not None and not pattern.fullmatch(value)):
        raise _fail(where, what, value)
    return value


def _unique(where: str, values: tuple[Any, ...]) -> None:
    dup = sorted({str(v) for v in values if values.count(v) > 1})
    if dup:
        raise LayoutError(f"{where}: expected distinct values, found {dup} repeated in {list(values)}")


def row_label(index: int) -> str:
    """Plate row label of 0-based row `index`: A..Z, then AA..AZ, BA.. (1,536-well plates run to AF)."""
    if index < 26:
        return chr(ord("A") + index)
    return row_label(index // 26 - 1) + chr(ord("A") + index % 26)


@dataclass(frozen=True)
class Channel:
    """One channel of the store, in store order.

    name: what it shows ("Hoechst", "DNA"); key: how raw files and site-table columns name it ("w1" ->
    `path_w1`, `pixel_mean_w1`); color: its RGB tint (0..255 each) in the display composite, None = left out;
    display_range: the (low, high) intensities mapped onto the whole tint (the composite's window).
    """

    name: str
    key: str
    color: tuple[int, int, int] | None = None
    display_range: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        _text("Channel.name", self.name)
        _text("Channel.key", self.key, _KEY, "letters, digits or _ (e.g. 'w1')")
        if self.color is not None:
            c = tuple(self.color)
            if len(c) != 3 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v <= 255
                                  for v in c):
                raise _fail(f"Channel {self.name!r}: color", "three integers in 0..255 (RGB)", self.color)
            object.__setattr__(self, "color", tuple(int(v) for v in c))
        if self.display_range is not None:
            r = tuple(self.display_range)
            if len(r) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in r) \
                    or not 0 <= r[0] < r[1]:
                raise _fail(f"Channel {self.name!r}: display_range", "(low, high) integers with 0 <= low < high",
                            self.display_range)
            object.__setattr__(self, "display_range", (int(r[0]), int(r[1])))
        if (self.color is None) != (self.display_range is None):
            raise _fail(f"Channel {self.name!r}", "color and display_range both set (shown in the composite) or "
                        "both None", (self.color, self.display_range))


@dataclass(frozen=True)
class PlateGeometry:
    """A plate of `rows` x `columns` wells (8x12 = 96, 16x24 = 384, 32x48 = 1,536) and the wells a data set uses:
    the rows `used_rows` (labels) crossed with the columns `used_columns` (1-based), all of them when None.
    Wells are named row label + two-digit column ("B02", "AF48"), listed row by row."""

    rows: int
    columns: int
    used_rows: tuple[str, ...] | None = None
    used_columns: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _positive("PlateGeometry.rows", self.rows)
        _positive("PlateGeometry.columns", self.columns)
        if self.used_rows is not None:
            rows = tuple(self.used_rows)
            bad = [r for r in rows if r not in self.row_labels]
            if not rows or bad:
                raise _fail("PlateGeometry.used_rows", f"row labels of a {self.rows}-row plate "
                            f"({self.row_labels[0]}..{self.row_labels[-1]})", list(rows))
            _unique("PlateGeometry.used_rows", rows)
            object.__setattr__(self, "used_rows", rows)
        if self.used_columns is not None:
            cols = tuple(self.used_columns)
            bad = [c for c in cols if isinstance(c, bool) or not isinstance(c, (int, np.integer))
                   or not 1 <= c <= self.columns]
            if not cols or bad:
                raise _fail("PlateGeometry.used_columns", f"column numbers in 1..{self.columns}", list(cols))
            _unique("PlateGeometry.used_columns", cols)
            object.__setattr__(self, "used_columns", tuple(int(c) for c in cols))

    @property
    def row_labels(self) -> tuple[str, ...]:
        return tuple(row_label(i) for i in range(self.rows))

    @property
    def wells(self) -> tuple[str, ...]:
        """The used wells, row by row ("B02", "B03", ..., "O23")."""
        rows = self.used_rows if self.used_rows is not None else self.row_labels
        cols = self.used_columns if self.used_columns is not None else tuple(range(1, self.columns + 1))
        return tuple(f"{r}{c:02d}" for r in rows for c in cols)


@dataclass(frozen=True)
class ControlGroup:
    """Control wells of one kind: their `well_type` value in the site table and the labels they carry."""

    well_type: str
    labels: tuple[int | str, ...]

    def __post_init__(self) -> None:
        _text("ControlGroup.well_type", self.well_type)
        labels = tuple(self.labels)
        if not labels or any(isinstance(v, bool) or not isinstance(v, (int, np.integer, str)) for v in labels):
            raise _fail(f"ControlGroup {self.well_type!r}: labels", "a non-empty list of ints or strings",
                        self.labels)
        object.__setattr__(self, "labels", tuple(v if isinstance(v, str) else int(v) for v in labels))


@dataclass(frozen=True)
class Perturbations:
    """What was done to each well: the site-table column holding it, the treatment classes and the controls.

    label_column: the column ("sirna"); label_kind: "int" (class ids, treatments 0..n_treatments-1) or "str"
    (names: genes, compounds); n_treatments: the number of treatment classes; controls: the control groups;
    well_type_column / treatment_well_type: how the site table marks treatment wells; columns: further columns
    that describe a perturbation (a concentration, a guide), in the site table beside the label.
    """

    label_column: str
    n_treatments: int
    label_kind: str = "int"
    controls: tuple[ControlGroup, ...] = ()
    well_type_column: str = "well_type"
    treatment_well_type: str = "treatment"
    columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _text("Perturbations.label_column", self.label_column)
        if isinstance(self.n_treatments, bool) or not isinstance(self.n_treatments, (int, np.integer)) \
                or self.n_treatments < 0:
            raise _fail("Perturbations.n_treatments", "a count >= 0 (0: not known)", self.n_treatments)
        object.__setattr__(self, "n_treatments", int(self.n_treatments))
        if self.label_kind not in ("int", "str"):
            raise _fail("Perturbations.label_kind", "'int' or 'str'", self.label_kind)
        controls = tuple(self.controls)
        if any(not isinstance(c, ControlGroup) for c in controls):
            raise _fail("Perturbations.controls", "ControlGroup values", controls)
        object.__setattr__(self, "controls", controls)
        _text("Perturbations.well_type_column", self.well_type_column)
        _text("Perturbations.treatment_well_type", self.treatment_well_type)
        _unique("Perturbations well types", self.well_types)
        kind = int if self.label_kind == "int" else str
        bad = [v for v in self.control_labels if not isinstance(v, kind)]
        if bad:
            raise _fail("Perturbations.controls", f"{self.label_kind} labels (label_kind)", bad)
        if kind is int and (clash := [v for v in self.control_labels if 0 <= v < self.n_treatments]):
            raise _fail("Perturbations.controls", f"control labels outside the treatments 0..{self.n_treatments - 1}",
                        clash)
        object.__setattr__(self, "columns", tuple(self.columns))
        for c in self.columns:
            _text("Perturbations.columns", c)

    @property
    def well_types(self) -> tuple[str, ...]:
        return (self.treatment_well_type, *(c.well_type for c in self.controls))

    @property
    def control_labels(self) -> tuple[int | str, ...]:
        return tuple(v for c in self.controls for v in c.labels)

    def control(self, well_type: str) -> ControlGroup:
        for c in self.controls:
            if c.well_type == well_type:
                return c
        raise LayoutError(f"well type {well_type!r}: expected one of the control well types "
                          f"{[c.well_type for c in self.controls]}")


@dataclass(frozen=True)
class IdFormats:
    """How ids are formed from site-table fields (str.format templates over ID_FIELDS)."""

    well: str = "{experiment}_{plate}_{well}"
    site: str = "{experiment}_{plate}_{well}_{site}"

    def __post_init__(self) -> None:
        for name in ("well", "site"):
            template = getattr(self, name)
            _text(f"IdFormats.{name}", template)
            try:
                used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
            except ValueError as exc:
                raise _fail(f"IdFormats.{name}", "a str.format template", f"{template!r} ({exc})") from None
            unknown = sorted(used - set(ID_FIELDS))
            if unknown or not used:
                raise _fail(f"IdFormats.{name}", f"a template naming fields of {list(ID_FIELDS)}", template)

    def well_id(self, **fields: Any) -> str:
        return self.well.format(**fields)

    def site_id(self, **fields: Any) -> str:
        return self.site.format(**fields)


@dataclass(frozen=True)
class DatasetLayout:
    """The shape of a data set (see the module docstring). Frozen and validated; `version` is this instance's: a
    data set whose description changes gets a new version, so a store says which one it was written with."""

    name: str
    version: int
    channels: tuple[Channel, ...]
    pixel_dtype: str
    site_shape: tuple[int, int]
    sites_per_well: int
    plate: PlateGeometry
    perturbations: Perturbations
    cell_types: tuple[str, ...]
    splits: tuple[str, ...] = ("train",)
    hidden_test_labels: bool = False
    ids: IdFormats = field(default_factory=IdFormats)
    description: str = ""
    intensity: Intensity = field(default_factory=Intensity)

    def __post_init__(self) -> None:
        _text("DatasetLayout.name", self.name, _NAME, "a lower-case name (letters, digits, - or _), e.g. 'rxrx1'")
        where = f"DatasetLayout {self.name!r}"
        _positive(f"{where}: version", self.version)
        channels = tuple(self.channels)
        if not channels or any(not isinstance(c, Channel) for c in channels):
            raise _fail(f"{where}: channels", "a non-empty list of Channel", self.channels)
        _unique(f"{where}: channel names", tuple(c.name for c in channels))
        _unique(f"{where}: channel keys", tuple(c.key for c in channels))
        object.__setattr__(self, "channels", channels)
        if self.pixel_dtype not in PIXEL_DTYPES:
            raise _fail(f"{where}: pixel_dtype", f"one of {list(PIXEL_DTYPES)}", self.pixel_dtype)
        shape = tuple(self.site_shape)
        if len(shape) != 2:
            raise _fail(f"{where}: site_shape", "(height, width)", self.site_shape)
        object.__setattr__(self, "site_shape", (_positive(f"{where}: site_shape height", shape[0]),
                                                _positive(f"{where}: site_shape width", shape[1])))
        _positive(f"{where}: sites_per_well", self.sites_per_well)
        if not isinstance(self.plate, PlateGeometry):
            raise _fail(f"{where}: plate", "a PlateGeometry", self.plate)
        if not isinstance(self.perturbations, Perturbations):
            raise _fail(f"{where}: perturbations", "a Perturbations", self.perturbations)
        for name in ("cell_types", "splits"):
            values = tuple(getattr(self, name))
            if not values or any(not isinstance(v, str) or not v for v in values):
                raise _fail(f"{where}: {name}", "a non-empty list of names", getattr(self, name))
            _unique(f"{where}: {name}", values)
            object.__setattr__(self, name, values)
        if not isinstance(self.hidden_test_labels, bool):
            raise _fail(f"{where}: hidden_test_labels", "True or False", self.hidden_test_labels)
        if self.hidden_test_labels and "test" not in self.splits:
            raise _fail(f"{where}: hidden_test_labels", "a 'test' split whose labels are hidden", self.splits)
        if not isinstance(self.ids, IdFormats):
            raise _fail(f"{where}: ids", "an IdFormats", self.ids)
        if not isinstance(self.description, str):
            raise _fail(f"{where}: description", "a string", self.description)
        if not isinstance(self.intensity, Intensity):
            raise _fail(f"{where}: intensity", "an Intensity", self.intensity)
        if self.intensity.output_dtype not in (None, self.pixel_dtype):
            raise _fail(f"{where}: pixel_dtype", f"{self.intensity.output_dtype} (what the intensity rule "
                        f"{str(self.intensity)!r} writes)", self.pixel_dtype)
        top = self.max_value
        for c in channels:
            if c.display_range is not None and c.display_range[1] > top:
                raise _fail(f"{where}: channel {c.name!r} display_range", f"values within 0..{top} "
                            f"({self.pixel_dtype})", c.display_range)

    # -- derived facts ------------------------------------------------------------------------------------------
    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.channels)

    @property
    def channel_keys(self) -> tuple[str, ...]:
        return tuple(c.key for c in self.channels)

    @property
    def path_columns(self) -> tuple[str, ...]:
        """Site-table columns holding each channel's raw file (relative to the raw data set root)."""
        return tuple(f"path_{k}" for k in self.channel_keys)

    @property
    def pixel_mean_columns(self) -> tuple[str, ...]:
        """Site-table columns of each channel's mean as the data set's own statistics give it (NaN if absent)."""
        return tuple(f"pixel_mean_{k}" for k in self.channel_keys)

    @property
    def pixel_std_columns(self) -> tuple[str, ...]:
        return tuple(f"pixel_std_{k}" for k in self.channel_keys)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.pixel_dtype)

    @property
    def max_value(self) -> int:
        """The largest pixel value of the pixel type (255 for uint8)."""
        return int(np.iinfo(self.pixel_dtype).max)

    @property
    def wells(self) -> tuple[str, ...]:
        return self.plate.wells

    @property
    def composite(self) -> tuple[tuple[int, Channel], ...]:
        """(store index, channel) of the channels the display composite shows, in store order."""
        return tuple((i, c) for i, c in enumerate(self.channels) if c.color is not None)

    def channel_index(self, name: str) -> int:
        """Store index of the channel called `name` (or keyed so)."""
        for i, c in enumerate(self.channels):
            if name in (c.name, c.key):
                return i
        raise LayoutError(f"channel {name!r}: expected one of {list(self.channel_names)} (or keys "
                          f"{list(self.channel_keys)}) of layout {self.name!r}")

    def channel_selection(self, names: str | Any) -> tuple[int, ...]:
        """Store indices of the channels `names` (names or keys; a comma-separated string or a list), in the order
        given: what `channels=["DNA", "RNA", "Mito"]` picks at ingest or load. LayoutError naming every unknown or
        repeated one and listing this layout's channels."""
        if isinstance(names, str):
            names = [v.strip() for v in names.split(",") if v.strip()]
        wanted = tuple(names) if names is not None else ()
        if not wanted or any(not isinstance(v, str) for v in wanted):
            raise _fail(f"channels of layout {self.name!r}", f"a non-empty list of channel names from "
                        f"{list(self.channel_names)}", names)
        lookup = {c.name: i for i, c in enumerate(self.channels)}
        lookup.update({c.key: i for i, c in enumerate(self.channels)})
        unknown = [v for v in wanted if v not in lookup]
        if unknown:
            raise LayoutError(f"channels {unknown}: not channels of layout {self.name!r}; expected names among "
                              f"{list(self.channel_names)} (or keys {list(self.channel_keys)})")
        picked = tuple(lookup[v] for v in wanted)
        _unique(f"channels of layout {self.name!r}", tuple(self.channels[i].name for i in picked))
        return picked

    def select_channels(self, names: str | Any) -> "DatasetLayout":
        """This layout with only the channels `names` (names or keys, in that order): the layout of a store
        ingested with `channels=` (see channel_selection for the errors)."""
        return self.replace(channels=tuple(self.channels[i] for i in self.channel_selection(names)))

    def replace(self, **changes: Any) -> "DatasetLayout":
        return dataclasses.replace(self, **changes)

    # -- the dict form ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"layout_format": LAYOUT_FORMAT, **to_dict(self)}

    @classmethod
    def from_dict(cls, data: Any) -> "DatasetLayout":
        if not isinstance(data, dict):
            raise _fail("DatasetLayout", "a mapping (DatasetLayout.to_dict's form)", type(data).__name__)
        data = dict(data)
        version = str(data.pop("layout_format", ""))
        if version.split(".")[0] != LAYOUT_FORMAT.split(".")[0]:
            raise _fail("DatasetLayout.layout_format", f"{LAYOUT_FORMAT.split('.')[0]}.x (this cellio reads "
                        f"layout format {LAYOUT_FORMAT})", version or None)
        return from_dict(cls, data, error=LayoutError)
