"""Parameter checks, written once: the read side's (loader, pipeline, sampler, transforms) and the counts of the
write side (ingest, repair, verify, synth, the reader's threads).

Each `parse_*` returns the value in its normal form or raises PipelineConfigError (ConfigError for `parse_count`)
whose message names the parameter and says what was expected and what was found: "batch_size: expected an integer
>= 1, found 0".
"""
from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any, TypeVar

import numpy as np

from .errors import CellioError, ConfigError, PipelineConfigError

__all__ = ["parse_int", "parse_count", "parse_choice", "parse_probability", "parse_range", "parse_device"]

T = TypeVar("T")


def parse_int(name: str, value: Any, *, minimum: int = 0) -> int:
    """An integer >= minimum (a bool or a float is not one)."""
    return _integer(name, value, minimum, "", PipelineConfigError)


def parse_count(name: str, value: Any) -> int | None:
    """A number of worker processes, threads or sites per task: None (chosen from the machine or the data) or an
    integer >= 1. Zero and negative counts are refused, never clamped to 1: `workers=-1` is not "all cores"."""
    return None if value is None else _integer(name, value, 1, " or None", ConfigError)


def _integer(name: str, value: Any, minimum: int, alternative: str, error: type[CellioError]) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise error(f"{name}: expected an integer >= {minimum}{alternative}, found {value!r}")
    return int(value)


def parse_choice(name: str, value: T, choices: Collection[T], *, optional: bool = False) -> T:
    """One of `choices` (or None when `optional`)."""
    if (optional and value is None) or value in choices:
        return value
    raise PipelineConfigError(f"{name}: expected one of {tuple(choices)}{' or None' if optional else ''}, "
                              f"found {value!r}")


def parse_probability(name: str, value: Any) -> float:
    """A probability in [0, 1], as a float."""
    try:
        p = float(value)
    except (TypeError, ValueError):
        p = float("nan")
    if not 0.0 <= p <= 1.0:
        raise PipelineConfigError(f"{name}: expected a probability in [0, 1], found {value!r}")
    return p


def parse_range(name: str, value: Any, lo: float, hi: float) -> tuple[float, float] | None:
    """An optional (low, high) pair of numbers with lo <= low <= high <= hi."""
    if value is None:
        return None
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise PipelineConfigError(f"{name}: expected a (low, high) pair of numbers or None, found {value!r}") \
            from None
    if not (lo <= a <= b <= hi):
        raise PipelineConfigError(f"{name}: expected {lo} <= low <= high <= {hi}, found ({a}, {b})")
    return (a, b)


def parse_device(value: Any) -> str:
    """A torch-style device as its string: "cpu", "cuda" or "cuda:N" (a torch.device works too)."""
    if value is None or not re.fullmatch(r"cpu|cuda(:[0-9]+)?", str(value)):
        raise PipelineConfigError(f"device: expected 'cpu', 'cuda' or 'cuda:N', found {value!r}")
    return str(value)
