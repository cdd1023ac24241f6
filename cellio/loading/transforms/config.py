"""What the loader does to each site: `AugmentConfig` (validated on construction, PipelineConfigError naming the
field), the presets (an open family, so a small registry: `register_preset`, `get_preset`, `list_presets`), and
whether a configuration fits a site (`check_fits`). A new augmentation is a field here, its draw in draws.py, its
torch reference in reference.py and its DALI graph in cellio/loading/pipeline.py (docs/architecture.md)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ...errors import PipelineConfigError
from ...params import parse_choice, parse_int, parse_probability, parse_range
from ...records import from_dict, to_dict

__all__ = ["ROTATIONS", "NORMALIZE_LEVELS", "DTYPES", "TTA_MODES", "MIN_STD", "MIN_BLUR_SIGMA", "MAX_BLUR_SIGMA",
           "AugmentConfig", "register_preset", "list_presets", "get_preset", "margin_size", "check_fits"]

ROTATIONS: tuple[str, ...] = ("none", "d4", "any")
NORMALIZE_LEVELS: tuple[str, ...] = ("global", "experiment", "plate", "sample")
DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
TTA_MODES: tuple[str, ...] = ("center", "grid9", "full")
MIN_STD = 1e-3  # a constant channel (std 0) would divide by zero; clip its std instead
MIN_BLUR_SIGMA = 0.2  # below this a 3-tap kernel is ~[0.0, 1.0, 0.0]: no blur (window 1)
MAX_BLUR_SIGMA = 20.0


@dataclass(frozen=True)
class AugmentConfig:
    """What the loader does to each site. Validated on construction (PipelineConfigError names the field).

    crop_size: output side S in pixels (224 default; 512 = a full RxRx1 site).
    rotation: "none", "d4" (one of the 8 dihedral views, uniformly) or "any" (uniform angle in
        [-max_angle, max_angle] degrees, read with a margin so no black corners reach the output).
    shift: True = crop anywhere in the site, False = centre crop, int t = centre crop moved by up to t pixels.
    hflip / vflip: probabilities of an extra horizontal / vertical flip.
    rrc_scale: random resized crop area fraction range (e.g. (0.5, 1.0)), with rrc_ratio the aspect (w/h) range;
        None = off. Exclusive with rotation="any".
    intensity_scale / intensity_shift: per-channel x*a + b ranges (a, b drawn independently per channel);
        b is in grey levels (0..255 scale). None = off.
    blur_sigma: Gaussian blur sigma range in pixels (focus differences between plates); sigmas below
        MIN_BLUR_SIGMA leave the sample sharp. None = off.
    gamma: per-channel gamma range, x -> 255 (x / 255) ** g. None = off.
    illumination: strength s of a smooth per-channel multiplicative field exp(gx X + gy Y + v (X^2 + Y^2)),
        gx, gy ~ U(-s, s), v ~ U(-s, 0) (a gradient and a vignette). None = off.
    noise: (read, shot) upper bounds: x + n sqrt(shot' x + read'^2) with read' ~ U(0, read) grey levels and
        shot' ~ U(0, shot) grey levels per grey level (Poisson-like). None = off.
    normalize: subtract/divide channel statistics of the "global" set, the site's "experiment", its "plate", or
        the site itself ("sample"); None scales to [0, 1] (x / 255).
    dtype: output float dtype.
    """

    crop_size: int = 224
    rotation: str = "d4"
    max_angle: float = 180.0
    shift: bool | int = True
    hflip: float = 0.0
    vflip: float = 0.0
    rrc_scale: tuple[float, float] | None = None
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    intensity_scale: tuple[float, float] | None = None
    intensity_shift: tuple[float, float] | None = None
    blur_sigma: tuple[float, float] | None = None
    gamma: tuple[float, float] | None = None
    illumination: float | None = None
    noise: tuple[float, float] | None = None
    normalize: str | None = "plate"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass normalisation)
        set_("crop_size", parse_int("crop_size", self.crop_size, minimum=1))
        parse_choice("rotation", self.rotation, ROTATIONS)
        if not (0.0 <= float(self.max_angle) <= 180.0):
            raise PipelineConfigError(f"max_angle: expected 0 <= max_angle <= 180 degrees, found {self.max_angle}")
        set_("max_angle", float(self.max_angle))
        if not isinstance(self.shift, (bool, int, np.integer)) or (not isinstance(self.shift, bool)
                                                                   and self.shift < 0):
            raise PipelineConfigError(f"shift: expected True, False or a max translation >= 0 in pixels, "
                                      f"found {self.shift!r}")
        if not isinstance(self.shift, bool):
            set_("shift", int(self.shift))
        for name in ("hflip", "vflip"):
            set_(name, parse_probability(name, getattr(self, name)))
        set_("rrc_scale", parse_range("rrc_scale", self.rrc_scale, 1e-6, 1.0))
        ratio = parse_range("rrc_ratio", self.rrc_ratio, 1e-3, 1e3)
        if ratio is None:
            raise PipelineConfigError("rrc_ratio: expected a (low, high) aspect ratio pair, found None")
        set_("rrc_ratio", ratio)
        if self.rrc_scale is not None and self.rotation == "any":
            raise PipelineConfigError("rrc_scale and rotation='any' cannot be combined: use rotation='d4' with "
                                      "rrc_scale, or rrc_scale=None with rotation='any'")
        set_("intensity_scale", parse_range("intensity_scale", self.intensity_scale, 1e-3, 100.0))
        set_("intensity_shift", parse_range("intensity_shift", self.intensity_shift, -255.0, 255.0))
        set_("blur_sigma", parse_range("blur_sigma", self.blur_sigma, 0.0, MAX_BLUR_SIGMA))
        set_("gamma", parse_range("gamma", self.gamma, 0.1, 10.0))
        if self.illumination is not None:
            if not isinstance(self.illumination, (int, float)) or not 0.0 <= float(self.illumination) <= 2.0:
                raise PipelineConfigError(f"illumination: expected a field strength in [0, 2] or None, found "
                                          f"{self.illumination!r}")
            set_("illumination", float(self.illumination))
        if self.noise is not None:
            try:
                read, shot = (float(v) for v in self.noise)
            except (TypeError, ValueError):
                read = shot = -1.0
            if not (0.0 <= read <= 255.0 and 0.0 <= shot <= 255.0):
                raise PipelineConfigError(f"noise: expected (read, shot) upper bounds, each in [0, 255], found "
                                          f"{self.noise!r}")
            set_("noise", (read, shot))
        parse_choice("normalize", self.normalize, NORMALIZE_LEVELS, optional=True)
        parse_choice("dtype", self.dtype, DTYPES)

    @property
    def photometric(self) -> bool:
        """Whether any of blur, gamma, illumination or noise is on (the float stage before normalisation)."""
        return any(v is not None for v in (self.blur_sigma, self.gamma, self.illumination, self.noise))

    @property
    def is_random(self) -> bool:
        return (self.rotation != "none" or self.shift is not False or self.hflip > 0 or self.vflip > 0
                or self.rrc_scale is not None or self.intensity_scale is not None
                or self.intensity_shift is not None or self.photometric)

    def without_random(self) -> "AugmentConfig":
        """The same crop, normalisation and dtype with every random op off (evaluation views)."""
        return self.replace(rotation="none", shift=False, hflip=0.0, vflip=0.0, rrc_scale=None,
                            intensity_scale=None, intensity_shift=None, blur_sigma=None, gamma=None,
                            illumination=None, noise=None)

    def replace(self, **changes: Any) -> "AugmentConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AugmentConfig":
        return from_dict(cls, d, error=PipelineConfigError)


# ---------------------------------------------------------------------------------------------------------------
# presets: an open family, so a small registry
_PRESETS: dict[str, AugmentConfig] = {
    "d4_shift": AugmentConfig(rotation="d4", shift=True),
    "rotate_any": AugmentConfig(rotation="any", max_angle=180.0, shift=True, hflip=0.5),
    "d4_rrc_jitter": AugmentConfig(rotation="d4", shift=True, rrc_scale=(0.5, 1.0),
                                   intensity_scale=(0.9, 1.1), intensity_shift=(-2.0, 2.0)),
    # what plates of a real screen differ in besides biology: focus, per-channel gain and gamma, uneven
    # illumination, noise (issue 20: a model must not learn "this plate looks like that")
    "d4_photometric": AugmentConfig(rotation="d4", shift=True, intensity_scale=(0.75, 1.33),
                                    intensity_shift=(-2.0, 2.0), blur_sigma=(0.0, 2.0), gamma=(0.8, 1.25),
                                    illumination=0.3, noise=(2.0, 0.5)),
    "eval": AugmentConfig(rotation="none", shift=False),
    "none": AugmentConfig(rotation="none", shift=False, normalize=None),
}


def register_preset(name: str, cfg: AugmentConfig, *, overwrite: bool = False) -> None:
    if name in _PRESETS and not overwrite:
        raise PipelineConfigError(f"preset {name!r} already exists; pass overwrite=True to replace it")
    _PRESETS[name] = cfg


def list_presets() -> list[str]:
    return sorted(_PRESETS)


def get_preset(name: str) -> AugmentConfig:
    try:
        return _PRESETS[name]
    except KeyError:
        raise PipelineConfigError(f"augment preset: expected one of {list_presets()}, found {name!r}") from None


# ---------------------------------------------------------------------------------------------------------------
# does a configuration fit a site
def margin_size(crop_size: int) -> int:
    """Side M of the window read for arbitrary rotation: >= S*sqrt(2), with M - S even so the centre crop is exact."""
    half = math.ceil((crop_size * math.sqrt(2.0) - crop_size) / 2.0 - 1e-9)
    return crop_size + 2 * half


def check_fits(cfg: AugmentConfig, image_hw: tuple[int, int], tta: str | None = None) -> None:
    """Fail before any work when the crop (or its rotation margin) does not fit in an H x W site."""
    h, w = int(image_hw[0]), int(image_hw[1])
    if tta == "full":
        return
    s = cfg.crop_size
    if s > h or s > w:
        raise PipelineConfigError(f"crop_size: expected <= the site size {h}x{w}, found {s} (use crop_size <= "
                                  f"{min(h, w)}, or tta='full' for whole sites)")
    if tta is None and cfg.rotation == "any":
        m = margin_size(s)
        if m > h or m > w:
            raise PipelineConfigError(
                f"rotation='any' with crop_size={s} reads a {m}x{m} margin window, larger than the site {h}x{w}; "
                f"use crop_size <= {int(min(h, w) / math.sqrt(2.0)) - 1} or rotation='d4'")
