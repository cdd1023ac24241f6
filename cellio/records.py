"""Dataclasses as JSON-able dicts and back: the one scheme cellio's records use (reports, layouts, lock records,
augmentation configs), and the trainer's too.

    d = to_dict(report)                       # dataclasses -> dicts, tuples -> lists, enums -> values
    cfg = from_dict(AugmentConfig, d, error=PipelineConfigError)

`from_dict` checks the keys against the class's fields (an unknown or a missing key is an error naming the class,
the keys expected and the keys found), rebuilds nested dataclasses and turns lists back into tuples where the
field's type says tuple. It does not check the values themselves: a class validates its own fields in
`__post_init__` (zarr's `parse_*` style), so a record built in Python and one read from JSON pass the same checks.
Fields declared `field(init=False)` (derived caches) are neither written nor read.
"""
from __future__ import annotations

import dataclasses
import enum
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np

from .errors import CellioError, ConfigError

__all__ = ["to_dict", "from_dict", "jsonable"]

T = TypeVar("T")


def jsonable(value: Any) -> Any:
    """`value` with every dataclass, tuple, mapping, enum, numpy value and path turned into JSON types."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass instance as a JSON-able dict of its init fields, in declaration order."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"to_dict: expected a dataclass instance, found {type(obj).__name__}")
    return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}


def from_dict(cls: type[T], data: Any, *, error: type[CellioError] = ConfigError, where: str | None = None) -> T:
    """An instance of the dataclass `cls` from `to_dict`'s output (or hand-written JSON of the same form).

    Raises `error` naming the class (and `where`, the path of a nested record) when `data` is not a mapping, has a
    key that is not a field, or lacks a field that has no default. Values are converted only in form (nested
    dataclasses, lists to tuples); `cls.__post_init__` checks them.
    """
    name = where or cls.__name__
    if not isinstance(data, Mapping):
        raise error(f"{name}: expected a mapping of {cls.__name__}'s fields, found {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise error(f"{name}: unknown keys {unknown}; expected a subset of {sorted(fields)}")
    missing = [k for k, f in fields.items() if k not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise error(f"{name}: missing keys {missing}; expected {sorted(fields)}, found {sorted(data)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _convert(v, hints.get(k, Any), f"{name}.{k}", error) for k, v in data.items()}
    return cls(**kwargs)


def _convert(value: Any, tp: Any, where: str, error: type[CellioError]) -> Any:
    """`value` in the form the annotation `tp` asks for (nested dataclasses, tuples); anything else as it is."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        for arg in args:  # the first alternative whose form the value has
            if _has_form(value, arg):
                return _convert(value, arg, where, error)
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_dict(tp, value, error=error, where=where) if isinstance(value, Mapping) else value
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]", error) for i, v in enumerate(value))
        if args and len(args) == len(value):
            return tuple(_convert(v, a, f"{where}[{i}]", error) for i, (v, a) in enumerate(zip(value, args)))
        return tuple(value)
    if origin is list and isinstance(value, (list, tuple)):
        (item,) = typing.get_args(tp) or (Any,)
        return [_convert(v, item, f"{where}[{i}]", error) for i, v in enumerate(value)]
    return value


def _has_form(value: Any, tp: Any) -> bool:
    """Whether `value` could be a `tp` once converted (a list for a tuple, a mapping for a dataclass)."""
    origin = typing.get_origin(tp) or tp
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return isinstance(value, (Mapping, tp))
    if origin in (tuple, list):
        return isinstance(value, (list, tuple))
    if origin in (dict, Mapping):
        return isinstance(value, Mapping)
    if tp is Any:
        return True
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin) if isinstance(origin, type) else True
