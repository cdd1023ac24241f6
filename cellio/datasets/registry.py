"""The data sets cellio reads, by name: `get_dataset("rxrx1") -> DatasetReader`, `get_layout("rxrx1")`.

An open family, so a small registry (timm's `create_model` / zarr's codec registry style): the built-in data sets
are named here with the module that defines their `READER`, imported on first use, so naming a data set costs
nothing until it is read; `register_dataset` adds one at run time (a plug-in, a test). A new data set is a
package beside `cellio/datasets/rxrx1/` and a line in `_BUILTIN` (docs/architecture.md).
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path

from ..errors import LayoutError
from .layout import DatasetLayout
from .reader import DatasetReader

__all__ = ["register_dataset", "get_dataset", "get_layout", "list_datasets", "find_dataset"]

log = logging.getLogger(__name__)

# name -> module whose READER describes it (imported when the name is first asked for)
_BUILTIN: dict[str, str] = {
    "ome-zarr": "cellio.datasets.ome_zarr",
    "rxrx1": "cellio.datasets.rxrx1",
    "jump": "cellio.datasets.jump",
    "rxrx2": "cellio.datasets.rxrx2",
    "rxrx3-core": "cellio.datasets.rxrx3_core",
}
_READERS: dict[str, DatasetReader] = {}


def register_dataset(reader: DatasetReader, *, replace: bool = False) -> None:
    """Make `reader` known under `reader.name` (LayoutError if the name is taken, unless `replace`)."""
    if not isinstance(reader, DatasetReader):
        raise LayoutError(f"register_dataset: expected a DatasetReader, found {type(reader).__name__}")
    if reader.name in list_datasets() and not replace:
        raise LayoutError(f"register_dataset: a data set named {reader.name!r} is already registered; pass "
                          f"replace=True to replace it")
    _READERS[reader.name] = reader


def list_datasets() -> tuple[str, ...]:
    return tuple(sorted(set(_BUILTIN) | set(_READERS)))


def get_dataset(name: str) -> DatasetReader:
    """The reader of the data set `name` (LayoutError naming the known ones otherwise)."""
    reader = _READERS.get(name)
    if reader is None and name in _BUILTIN:
        reader = importlib.import_module(_BUILTIN[name]).READER
        _READERS[name] = reader
    if reader is None:
        raise LayoutError(f"data set {name!r} is unknown; expected one of {list(list_datasets())}")
    return reader


def get_layout(name: str) -> DatasetLayout:
    """The layout of the data set `name` (`cellio.get_layout("rxrx1")`)."""
    return get_dataset(name).layout


def find_dataset(path: str | Path) -> DatasetReader | None:
    """The reader whose raw directory `path` looks like (the first, in name order), or None."""
    for name in list_datasets():
        reader = get_dataset(name)
        if reader.is_raw_dir(Path(path)):
            return reader
    return None
