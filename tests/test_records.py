"""cellio.records: dataclasses <-> JSON-able dicts, the one scheme (unknown and missing keys refused by name,
nested records and tuples rebuilt, derived fields left out)."""
from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field

import numpy as np
import pytest

from cellio.errors import ConfigError, PipelineConfigError
from cellio.records import from_dict, to_dict


class Colour(str, enum.Enum):
    RED = "red"


@dataclass(frozen=True)
class Inner:
    size: tuple[int, int]
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner
    inners: tuple[Inner, ...] = ()
    window: tuple[float, float] | None = None
    mixed: tuple[int | str, ...] = ()
    extra: dict[str, int] = field(default_factory=dict)
    cached: int = field(default=0, init=False)


def test_round_trip_through_json():
    obj = Outer("a", Inner((17, 11), ("x",)), (Inner((1, 2)),), (0.5, 1.0), (3, "b"), {"k": 1})
    d = to_dict(obj)
    assert d == {"name": "a", "inner": {"size": [17, 11], "tags": ["x"]}, "inners": [{"size": [1, 2], "tags": []}],
                 "window": [0.5, 1.0], "mixed": [3, "b"], "extra": {"k": 1}}
    back = from_dict(Outer, json.loads(json.dumps(d)))
    assert back == obj and isinstance(back.inner.size, tuple) and isinstance(back.inners[0], Inner)
    assert from_dict(Outer, {"name": "b", "inner": {"size": [1, 1]}}).window is None


def test_values_become_json_types():
    @dataclass
    class Values:
        colour: Colour
        count: int
        array: object

    assert to_dict(Values(Colour.RED, np.int64(3), np.arange(3))) == {"colour": "red", "count": 3, "array": [0, 1, 2]}
    assert type(to_dict(Values(Colour.RED, np.int64(3), None))["count"]) is int
    with pytest.raises(TypeError, match="dataclass instance"):
        to_dict({"a": 1})


def test_unknown_and_missing_keys_name_the_class():
    with pytest.raises(ConfigError, match=r"Outer: unknown keys \['cached', 'nme'\]; expected a subset of"):
        from_dict(Outer, {"name": "a", "nme": 1, "cached": 2, "inner": {"size": [1, 1]}})
    with pytest.raises(ConfigError, match=r"Outer: missing keys \['inner'\]; expected .* found \['name'\]"):
        from_dict(Outer, {"name": "a"})
    with pytest.raises(PipelineConfigError, match=r"Outer.inners\[1\]: unknown keys \['sise'\]"):
        from_dict(Outer, {"name": "a", "inner": {"size": [1, 1]}, "inners": [{"size": [1, 1]}, {"sise": 2}]},
                  error=PipelineConfigError)
    with pytest.raises(ConfigError, match="Outer: expected a mapping of Outer's fields, found list"):
        from_dict(Outer, [1])
