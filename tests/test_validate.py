"""cellio.params: the shared parameter checks name the parameter and say expected vs found."""
from __future__ import annotations

import numpy as np
import pytest

from cellio.params import parse_choice, parse_device, parse_int, parse_probability, parse_range
from cellio.errors import PipelineConfigError


def test_parse_int():
    assert parse_int("batch_size", np.int64(4), minimum=1) == 4 and type(parse_int("n", 3)) is int
    for bad in (0, True, 2.0, "2", None):
        with pytest.raises(PipelineConfigError, match=rf"batch_size: expected an integer >= 1, found {bad!r}"):
            parse_int("batch_size", bad, minimum=1)


def test_parse_choice():
    assert parse_choice("tta", "grid9", ("center", "grid9")) == "grid9"
    assert parse_choice("balance", None, ("class",), optional=True) is None
    with pytest.raises(PipelineConfigError, match=r"balance: expected one of \('class',\) or None, found 'well'"):
        parse_choice("balance", "well", ("class",), optional=True)
    with pytest.raises(PipelineConfigError, match=r"tta: expected one of \('center',\), found None"):
        parse_choice("tta", None, ("center",))


def test_parse_probability_and_range():
    assert parse_probability("hflip", 1) == 1.0
    for bad in (1.5, -0.1, "x", None):
        with pytest.raises(PipelineConfigError, match="hflip: expected a probability in"):
            parse_probability("hflip", bad)
    assert parse_range("rrc_scale", [0.5, 1], 0.0, 1.0) == (0.5, 1.0) and parse_range("r", None, 0, 1) is None
    with pytest.raises(PipelineConfigError, match=r"rrc_scale: expected 0.0 <= low <= high <= 1.0, found \(0.9, 0.1\)"):
        parse_range("rrc_scale", (0.9, 0.1), 0.0, 1.0)
    with pytest.raises(PipelineConfigError, match="pair of numbers"):
        parse_range("rrc_scale", "x", 0.0, 1.0)


def test_parse_device():
    assert [parse_device(d) for d in ("cpu", "cuda", "cuda:1")] == ["cpu", "cuda", "cuda:1"]
    for bad in ("tpu", "cuda:x", "gpu", None):
        with pytest.raises(PipelineConfigError, match="device: expected 'cpu', 'cuda' or 'cuda:N'"):
            parse_device(bad)
