"""`Intensity`: how a store's pixels were made from the raw images' (what a data set reader applied at ingest).

A layout records it (`DatasetLayout.intensity`, written into the store with the layout), so a store says whether its
pixels are the camera's counts, counts divided by an illumination function, or counts rescaled to 8 bits and how.
The rules, on a site's float channels `x` (already illumination-corrected when `illumination == "divide"`):

    keep                      x rounded and clipped to the layout's pixel type (uint16 stays uint16)
    linear:LOW,HIGH           uint8: (x - LOW) / (HIGH - LOW) * 255, rounded, clipped to 0..255; the same map for
                              every site and channel, so intensities stay comparable across sites
    clip-percentile:PLO,PHI   uint8: per site and channel, lo/hi = the PLO/PHI percentiles of x, then as `linear`
                              with lo, hi (a channel with hi == lo becomes 0); comparability across sites is lost

    rule = Intensity.parse("clip-percentile:0.1,99.9", illumination="divide")
    rule.apply(x, "uint8")        # (H, W, C) float -> (H, W, C) uint8
    str(rule)                     # "divide, clip-percentile:0.1,99.9"
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import LayoutError

__all__ = ["ILLUMINATIONS", "SCALES", "Intensity"]

# "none": the raw counts; "divide": raw / the data set's illumination function (CellProfiler's
# CorrectIlluminationApply with Divide)
ILLUMINATIONS: tuple[str, ...] = ("none", "divide")
# the scale rule's name -> (its parameters' names, the default parameters, the pixel type it writes or None: the
# layout's own)
SCALES: dict[str, tuple[tuple[str, ...], tuple[float, ...], str | None]] = {
    "keep": ((), (), None),
    "linear": (("low", "high"), (), "uint8"),
    "clip-percentile": (("low_percentile", "high_percentile"), (0.1, 99.9), "uint8"),
}


def _fail(where: str, expected: str, found: Any) -> LayoutError:
    return LayoutError(f"{where}: expected {expected}, found {found!r}")


@dataclass(frozen=True)
class Intensity:
    """illumination: one of ILLUMINATIONS; scale: one of SCALES; scale_params: the rule's numbers (see the module
    docstring). The default, ("none", "keep", ()), is a store of the raw pixels as they are (RxRx1)."""

    illumination: str = "none"
    scale: str = "keep"
    scale_params: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.illumination not in ILLUMINATIONS:
            raise _fail("Intensity.illumination", f"one of {list(ILLUMINATIONS)}", self.illumination)
        if self.scale not in SCALES:
            raise _fail("Intensity.scale", f"one of {list(SCALES)}", self.scale)
        names = SCALES[self.scale][0]
        params = tuple(self.scale_params)
        if len(params) != len(names) or any(isinstance(v, bool) or not isinstance(v, (int, float, np.number))
                                            or not np.isfinite(v) for v in params):
            raise _fail(f"Intensity {self.scale!r}: scale_params", f"{len(names)} finite numbers {list(names)}",
                        self.scale_params)
        params = tuple(float(v) for v in params)
        if self.scale == "linear" and not 0 <= params[0] < params[1]:
            raise _fail("Intensity 'linear': scale_params", "0 <= low < high", params)
        if self.scale == "clip-percentile" and not 0 <= params[0] < params[1] <= 100:
            raise _fail("Intensity 'clip-percentile': scale_params", "0 <= low < high <= 100 (percentiles)", params)
        object.__setattr__(self, "scale_params", params)

    @classmethod
    def parse(cls, text: str, illumination: str = "none") -> "Intensity":
        """A rule from its command-line form: "keep", "linear:0,4095", "clip-percentile" (default 0.1,99.9) or
        "clip-percentile:1,99"."""
        if not isinstance(text, str) or not text.strip():
            raise _fail("scale", f"a rule: one of {list(SCALES)}, with ':a,b' where it takes numbers", text)
        name, _, args = text.strip().partition(":")
        if name not in SCALES:
            raise _fail("scale", f"one of {list(SCALES)} (e.g. 'clip-percentile:0.1,99.9')", text)
        if args:
            try:
                params = tuple(float(v) for v in args.split(","))
            except ValueError:
                raise _fail(f"scale {name!r}", f"numbers after ':' ({', '.join(SCALES[name][0])})", text) from None
        else:
            params = SCALES[name][1]
        return cls(illumination=illumination, scale=name, scale_params=params)

    @property
    def output_dtype(self) -> str | None:
        """The pixel type this rule writes (uint8), or None when it keeps the layout's own."""
        return SCALES[self.scale][2]

    def __str__(self) -> str:
        rule = self.scale + (":" + ",".join(f"{v:g}" for v in self.scale_params) if self.scale_params else "")
        return f"{self.illumination}, {rule}" if self.illumination != "none" else rule

    def apply(self, x: np.ndarray, dtype: str | np.dtype) -> np.ndarray:
        """The stored pixels of the (H, W, C) float site `x` (corrected already): `dtype` is the layout's pixel
        type, which must be the rule's own when it has one."""
        dtype = np.dtype(dtype)
        if self.output_dtype is not None and dtype != np.dtype(self.output_dtype):
            raise _fail(f"Intensity {self.scale!r}: pixel type", self.output_dtype, str(dtype))
        top = float(np.iinfo(dtype).max)
        x = np.asarray(x, dtype=np.float64)
        if self.scale == "keep":
            y = np.rint(x)
            return np.clip(y, 0, top, out=y).astype(dtype)
        if self.scale == "linear":
            lo = np.full(x.shape[-1], self.scale_params[0])
            hi = np.full(x.shape[-1], self.scale_params[1])
        else:  # clip-percentile: each channel's own percentiles over the site
            flat = x.reshape(-1, x.shape[-1])
            lo, hi = np.percentile(flat, self.scale_params, axis=0)
        span = hi - lo
        safe = np.where(span > 0, span, 1.0)
        y = (x - lo) / safe * top
        y = np.where(span > 0, y, 0.0)
        return np.clip(np.rint(y), 0, top).astype(dtype)
