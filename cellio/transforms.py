"""Augmentation config, per-sample random parameter draws, and the pure-torch reference of every op.

Random parameters are DRAWN (:func:`make_params`, numpy, no torch) separately from being APPLIED
(:func:`apply_torch` here, or the DALI graph in ``cellio.pipeline``), the way torchvision.transforms.v2 splits
``make_params`` from ``transform``. Both backends receive the same parameters, so they produce the same pixels
(exactly for crops, D4 views, flips, intensity and normalization up to float32 rounding; within 1 grey level for
interpolated rotation / resized crops, whose uint8 results are rounded — see docs/pipelines.md).

Geometry of one sample (a site of H x W x 6 uint8, channel-last):

1. ``window`` (y, x, h, w): the part of the site that is READ from the store. Without rotation it is exactly the
   output crop (S x S, placed by ``shift``); with ``rotation="any"`` it is an M x M margin window
   (M = S + 2*ceil((S*sqrt(2) - S) / 2)) around the crop, so the rotated centre crop has no black corners;
   with ``rrc_scale`` it is the random-resized-crop region (any size/aspect, later resized to S x S).
2. ``rotate`` by ``angle`` degrees about the window centre (bilinear, uint8 out), then centre crop S x S.
3. ``resize`` (random resized crop) to S x S (bilinear, no antialias, uint8 out).
4. D4 / flips as ``transpose`` then ``hflip`` then ``vflip`` (the D4 code and the extra random flips are folded
   into these three booleans; :data:`D4_TABLE` holds the decomposition, matching ``np.rot90``).
5. Photometric variation of the kind real screens have between plates (training only, each off unless
   configured), in float on the S x S output: Gaussian ``blur`` (focus; separable, reflect-101 borders),
   per-channel ``gamma`` (``255 (x / 255) ** g``), a smooth multiplicative ``illumination`` field
   (``exp(gx X + gy Y + v (X^2 + Y^2))`` per channel, X, Y in [-1, 1]) and ``noise``
   (``x + n sqrt(shot x + read^2)``, n a window of a fixed standard-normal bank at a drawn offset, so both
   backends add the same noise).
6. ``out = ((x * a + b) - mean) / std`` per channel in float32, NCHW, cast to ``dtype``.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from .params import parse_choice, parse_int, parse_probability, parse_range
from .errors import PipelineConfigError
from .schema import N_CHANNELS

if TYPE_CHECKING:  # torch stays a lazy import: `import cellio.transforms` must not pull it in
    import torch

__all__ = [
    "ROTATIONS", "NORMALIZE_LEVELS", "DTYPES", "TTA_MODES",
    "AugmentConfig", "get_preset", "list_presets", "register_preset",
    "margin_size", "check_fits", "make_params", "epoch_params", "PARAM_BLOCK", "eval_views", "eval_params",
    "decode_view",
    "D4_TABLE", "d4_flags", "normalization_affine", "warp_matrices",
    "blur_window", "gaussian_kernel", "field_coords", "noise_bank", "noise_windows",
    "d4", "flip_transpose", "crop", "rotate", "resize", "intensity", "normalize", "photometric", "apply_torch",
    "torch_dtype",
]

log = logging.getLogger(__name__)

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
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AugmentConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PipelineConfigError(f"AugmentConfig: unknown keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


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
# geometry and parameter draws (numpy only)
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


def _flags_of(k: int) -> tuple[bool, bool, bool]:
    """Find (transpose, hflip, vflip) such that vflip(hflip(transpose(x))) == d4(x, k) on HWC arrays."""
    probe = np.arange(12).reshape(3, 4)  # non-square, distinct values: only one decomposition matches
    target = np.rot90(probe if k < 4 else probe.T, k % 4)
    for t in (False, True):
        for hf in (False, True):
            for vf in (False, True):
                y = probe.T if t else probe
                y = y[:, ::-1] if hf else y
                y = y[::-1, :] if vf else y
                if y.shape == target.shape and np.array_equal(y, target):
                    return t, hf, vf
    raise AssertionError(f"no flip/transpose decomposition of D4 view {k}")  # unreachable: D4 is generated


# D4 view k (0..7): rot90 by k%4 (counter-clockwise, np.rot90 semantics) of the image (k < 4) or of its transpose.
D4_TABLE: tuple[tuple[bool, bool, bool], ...] = tuple(_flags_of(k) for k in range(8))


def d4_flags(k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = np.asarray(D4_TABLE, dtype=bool)
    f = table[np.asarray(k, dtype=np.int64)]
    return f[..., 0], f[..., 1], f[..., 2]


def _place(rng: np.random.Generator, n: int, size: int, extent: int, shift: bool | int) -> np.ndarray:
    """Origins of n windows of `size` along an axis of `extent` under the shift rule."""
    free = extent - size
    if shift is True:
        return rng.integers(0, free + 1, size=n)
    centre = np.full(n, free // 2, dtype=np.int64)
    if shift is False or shift == 0:
        return centre
    return np.clip(centre + rng.integers(-int(shift), int(shift) + 1, size=n), 0, free)


def _rrc_windows(rng: np.random.Generator, n: int, h: int, w: int, scale: tuple[float, float],
                 ratio: tuple[float, float]) -> np.ndarray:
    """torchvision RandomResizedCrop geometry, vectorised: 10 tries per sample, the first that fits wins; samples
    with no fitting try get the central crop of the clamped aspect ratio."""
    tries = 10
    area = h * w * rng.uniform(scale[0], scale[1], size=(n, tries))
    r = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(n, tries)))
    cw = np.rint(np.sqrt(area * r)).astype(np.int64)
    ch = np.rint(np.sqrt(area / r)).astype(np.int64)
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = np.argmax(ok, axis=1)
    found = ok[np.arange(n), first]
    ch, cw = ch[np.arange(n), first], cw[np.arange(n), first]
    uy, ux = rng.random(n), rng.random(n)
    in_r = w / h
    fb_w, fb_h = ((w, int(round(w / ratio[0]))) if in_r < ratio[0] else
                  (int(round(h * ratio[1])), h) if in_r > ratio[1] else (w, h))
    ch = np.where(found, ch, fb_h)
    cw = np.where(found, cw, fb_w)
    y = np.where(found, np.floor(uy * (h - ch + 1)).astype(np.int64), (h - ch) // 2)
    x = np.where(found, np.floor(ux * (w - cw + 1)).astype(np.int64), (w - cw) // 2)
    return np.stack([y, x, ch, cw], axis=1).astype(np.int64)


def make_params(cfg: AugmentConfig, rng: np.random.Generator, n: int, image_hw: tuple[int, int]
                ) -> dict[str, np.ndarray]:
    """Draw every random parameter of n samples from `rng` (nothing is applied here).

    Returns arrays with a leading n: window (n, 4) int64 (y, x, h, w) to read from the site; angle (n,) float32
    degrees; d4 (n,) int64 in 0..7; transpose / hflip / vflip (n,) bool (D4 view and extra flips combined);
    scale / shift (n, 6) float32 (the x*a + b of each channel).
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    check_fits(cfg, (h, w))
    s = cfg.crop_size
    if cfg.rrc_scale is not None:
        window = _rrc_windows(rng, n, h, w, cfg.rrc_scale, cfg.rrc_ratio)
    else:
        side = margin_size(s) if cfg.rotation == "any" else s
        window = np.stack([_place(rng, n, side, h, cfg.shift), _place(rng, n, side, w, cfg.shift),
                           np.full(n, side), np.full(n, side)], axis=1).astype(np.int64)
    angle = (rng.uniform(-cfg.max_angle, cfg.max_angle, size=n) if cfg.rotation == "any"
             else np.zeros(n)).astype(np.float32)
    k = rng.integers(0, 8, size=n) if cfg.rotation == "d4" else np.zeros(n, dtype=np.int64)
    t, hf, vf = d4_flags(k)
    hf = hf ^ (rng.random(n) < cfg.hflip) if cfg.hflip > 0 else hf
    vf = vf ^ (rng.random(n) < cfg.vflip) if cfg.vflip > 0 else vf
    a = (rng.uniform(*cfg.intensity_scale, size=(n, N_CHANNELS)) if cfg.intensity_scale is not None
         else np.ones((n, N_CHANNELS)))
    b = (rng.uniform(*cfg.intensity_shift, size=(n, N_CHANNELS)) if cfg.intensity_shift is not None
         else np.zeros((n, N_CHANNELS)))
    out = {"window": window, "angle": angle, "d4": k.astype(np.int64), "transpose": t, "hflip": hf, "vflip": vf,
           "scale": a.astype(np.float32), "shift": b.astype(np.float32)}
    out.update(_photometric_params(cfg, rng, n))  # drawn last: configurations without them draw as before
    return out


def _photometric_params(cfg: AugmentConfig, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """The photometric draws of n samples: only the keys of the ops that are on."""
    out: dict[str, np.ndarray] = {}
    if cfg.blur_sigma is not None:
        out["blur_sigma"] = rng.uniform(*cfg.blur_sigma, size=n).astype(np.float32)
    if cfg.gamma is not None:
        out["gamma"] = rng.uniform(*cfg.gamma, size=(n, N_CHANNELS)).astype(np.float32)
    if cfg.illumination is not None:
        s = cfg.illumination
        out["field"] = np.stack([rng.uniform(-s, s, size=(n, N_CHANNELS)), rng.uniform(-s, s, size=(n, N_CHANNELS)),
                                 rng.uniform(-s, 0.0, size=(n, N_CHANNELS))], axis=1).astype(np.float32)
    if cfg.noise is not None:
        free = NOISE_BANK_SCALE * cfg.crop_size - cfg.crop_size
        out["noise_offset"] = rng.integers(0, free + 1, size=(n, 2)).astype(np.int64)
        out["noise_read"] = rng.uniform(0.0, cfg.noise[0], size=n).astype(np.float32)
        out["noise_shot"] = rng.uniform(0.0, cfg.noise[1], size=n).astype(np.float32)
    return out


PARAM_BLOCK = 1024  # positions drawn per Generator: rows never depend on how many positions an epoch has


def epoch_params(cfg: AugmentConfig, seed: int, epoch: int, positions: np.ndarray, image_hw: tuple[int, int]
                 ) -> dict[str, np.ndarray]:
    """Parameters of the samples at `positions` (global positions in the epoch order), rows in that order.

    Position p is row p % PARAM_BLOCK of a block drawn vectorised from a Generator seeded with
    (seed, epoch, p // PARAM_BLOCK), so a sample's parameters do not depend on the backend, worker count, batch
    size, rank count, epoch length or resume point (and a block costs about what one per-sample Generator did).
    """
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    if len(positions) == 0:
        return make_params(cfg, np.random.default_rng(0), 0, image_hw)
    blocks = np.unique(positions // PARAM_BLOCK)
    drawn = [make_params(cfg, np.random.default_rng([int(seed), int(epoch), int(b), 0xA06]), PARAM_BLOCK, image_hw)
             for b in blocks]
    row = np.searchsorted(blocks, positions // PARAM_BLOCK) * PARAM_BLOCK + positions % PARAM_BLOCK
    return {k: np.concatenate([d[k] for d in drawn])[row] for k in drawn[0]}


def eval_views(tta: str, dihedral: bool) -> np.ndarray:
    """View ids of a TTA mode: view = cell * 8 + d4, cell the 3x3 grid cell (row-major, 4 = centre; 0 in 'full')."""
    parse_choice("tta", tta, TTA_MODES)
    cells = {"center": [4], "grid9": list(range(9)), "full": [0]}[tta]
    d4s = list(range(8)) if dihedral else [0]
    return np.array([c * 8 + d for c in cells for d in d4s], dtype=np.int64)


def decode_view(view: int | np.ndarray) -> tuple[Any, Any]:
    """view id -> (grid cell 0..8, D4 code 0..7)."""
    v = np.asarray(view)
    return v // 8, v % 8


def eval_params(cfg: AugmentConfig, views: np.ndarray, image_hw: tuple[int, int], tta: str
                ) -> dict[str, np.ndarray]:
    """Deterministic parameters of TTA views (same dict layout as make_params)."""
    h, w = int(image_hw[0]), int(image_hw[1])
    views = np.asarray(views, dtype=np.int64).reshape(-1)
    n = len(views)
    cell, k = decode_view(views)
    if tta == "full":
        window = np.tile(np.array([0, 0, h, w], dtype=np.int64), (n, 1))
    else:
        check_fits(cfg, (h, w), tta)
        s = cfg.crop_size
        window = np.stack([(cell // 3) * (h - s) // 2, (cell % 3) * (w - s) // 2, np.full(n, s), np.full(n, s)],
                          axis=1).astype(np.int64)
    t, hf, vf = d4_flags(k)
    return {"window": window, "angle": np.zeros(n, np.float32), "d4": k, "transpose": t, "hflip": hf, "vflip": vf,
            "scale": np.ones((n, N_CHANNELS), np.float32), "shift": np.zeros((n, N_CHANNELS), np.float32)}


def normalization_affine(mean: np.ndarray, std: np.ndarray, scale: np.ndarray, shift: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Fold x*a + b then (. - mean)/std into one (x - m')/s' (what DALI's crop_mirror_normalize takes):
    m' = (mean - b)/a, s' = std/a."""
    std = np.maximum(np.asarray(std, np.float32), MIN_STD)
    a = np.asarray(scale, np.float32)
    return ((np.asarray(mean, np.float32) - np.asarray(shift, np.float32)) / a).astype(np.float32), \
        (std / a).astype(np.float32)


def warp_matrices(params: Mapping[str, np.ndarray], cfg: AugmentConfig, out_hw: tuple[int, int] | None = None
                  ) -> np.ndarray:
    """(B, 2, 3) float32 destination -> source maps composing every geometric step of each sample, for one
    ``fn.warp_affine`` in DALI (coordinates continuous, [0, 0] = the corner of the first pixel).

    Output point p goes back through vflip, hflip, transpose (each an involution), then into the read window:
    + the centre-crop offset and the inverse rotation about the window centre (rotation="any"), or a scale by
    window / output size (random resized crop: the same sample points as a bilinear resize with half-pixel
    centres). The torch reference applies the steps one by one instead, so the two stay independent.
    """
    win = np.asarray(params["window"], dtype=np.float64)
    n = len(win)
    sh, sw = (float(cfg.crop_size),) * 2 if out_hw is None else (float(out_hw[0]), float(out_hw[1]))
    m = np.tile(np.eye(3), (n, 1, 1))
    vflip = np.asarray(params["vflip"], bool)
    hflip = np.asarray(params["hflip"], bool)
    trans = np.asarray(params["transpose"], bool)
    fv = np.eye(3)
    fv[1, 1], fv[1, 2] = -1.0, sh
    fh = np.eye(3)
    fh[0, 0], fh[0, 2] = -1.0, sw
    tr = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    m[vflip] = fv @ m[vflip]
    m[hflip] = fh @ m[hflip]
    m[trans] = tr @ m[trans]
    if cfg.rotation == "any":
        side = win[:, 2]
        off = (side - sh) / 2.0
        c = side / 2.0
        th = np.deg2rad(np.asarray(params["angle"], np.float64))
        cos, sin = np.cos(th), np.sin(th)
        g = np.zeros((n, 3, 3))
        # src = R(-angle) (p + off - c) + c, as in `rotate`
        g[:, 0, 0], g[:, 0, 1] = cos, -sin
        g[:, 1, 0], g[:, 1, 1] = sin, cos
        g[:, 0, 2] = cos * (off - c) - sin * (off - c) + c
        g[:, 1, 2] = sin * (off - c) + cos * (off - c) + c
        g[:, 2, 2] = 1.0
        m = g @ m
    elif cfg.rrc_scale is not None:
        g = np.zeros((n, 3, 3))
        g[:, 0, 0] = win[:, 3] / sw
        g[:, 1, 1] = win[:, 2] / sh
        g[:, 2, 2] = 1.0
        m = g @ m
    return m[:, :2, :].astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# photometric parameters as both backends consume them (numpy)
NOISE_BANK_SCALE = 2  # the noise bank is (2S, 2S, C): (S + 1)^2 windows of S x S at drawn offsets
_NOISE_SEED = 0x9015E


def blur_window(sigma: float) -> int:
    """Odd kernel width of a Gaussian of `sigma` pixels: 2 ceil(3 sigma) + 1 (1, no blur, below MIN_BLUR_SIGMA)."""
    return 1 if float(sigma) < MIN_BLUR_SIGMA else 2 * int(math.ceil(3.0 * float(sigma))) + 1


def gaussian_kernel(sigma: float) -> np.ndarray:
    """The normalised 1-D Gaussian of `sigma` over blur_window(sigma) taps (what DALI's gaussian_blur builds from
    sigma and window_size)."""
    w = blur_window(sigma)
    if w == 1:
        return np.ones(1, np.float64)
    t = np.arange(w, dtype=np.float64) - w // 2
    k = np.exp(-t * t / (2.0 * float(sigma) ** 2))
    return k / k.sum()


def field_coords(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] of an H x W output: Y (H, 1, 1) and X (1, W, 1), float32."""
    def axis(n: int) -> np.ndarray:
        return ((np.arange(n, dtype=np.float64) + 0.5) / n * 2.0 - 1.0).astype(np.float32)

    return axis(height)[:, None, None], axis(width)[None, :, None]


@functools.lru_cache(maxsize=4)
def noise_bank(size: int, channels: int = N_CHANNELS) -> np.ndarray:
    """A fixed (NOISE_BANK_SCALE * size)^2 x channels standard-normal float32 bank (read-only); a sample's noise
    is the size x size window at its drawn offset."""
    side = NOISE_BANK_SCALE * int(size)
    bank = np.random.default_rng(_NOISE_SEED).standard_normal((side, side, int(channels)), dtype=np.float32)
    bank.setflags(write=False)
    return bank


def noise_windows(offsets: np.ndarray, size: int, channels: int = N_CHANNELS) -> np.ndarray:
    """(B, size, size, channels) float32: each sample's noise window of the bank."""
    bank = noise_bank(size, channels)
    return np.stack([bank[y:y + size, x:x + size] for y, x in np.asarray(offsets, np.int64)])


# ---------------------------------------------------------------------------------------------------------------
# torch reference ops: one HWC sample (uint8 or float) at a time unless said otherwise; CPU or CUDA tensors
def torch_dtype(name: str) -> "torch.dtype":
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def d4(x: "torch.Tensor", k: int) -> "torch.Tensor":
    """Dihedral view k of an HW... tensor: np.rot90(x, k % 4) for k < 4, of x transposed for k >= 4."""
    import torch

    y = x.transpose(0, 1) if int(k) >= 4 else x
    return torch.rot90(y, int(k) % 4, dims=(0, 1))


def flip_transpose(x: "torch.Tensor", transpose: bool, hflip: bool, vflip: bool) -> "torch.Tensor":
    """transpose (H <-> W), then flip W, then flip H: the form both backends apply D4 views and flips in."""
    if transpose:
        x = x.transpose(0, 1)
    if hflip:
        x = x.flip(1)
    if vflip:
        x = x.flip(0)
    return x


def crop(x: "torch.Tensor", y0: int, x0: int, h: int, w: int) -> "torch.Tensor":
    if y0 < 0 or x0 < 0 or y0 + h > x.shape[0] or x0 + w > x.shape[1]:
        raise PipelineConfigError(f"crop ({y0}, {x0}, {h}, {w}) does not fit in an image of {tuple(x.shape[:2])}")
    return x[y0:y0 + h, x0:x0 + w]


def _to_uint8_like(y: "torch.Tensor", like: "torch.Tensor") -> "torch.Tensor":
    import torch

    if like.dtype == torch.uint8:  # DALI rounds uint8 warps/resizes back to uint8: so does the reference
        return y.round().clamp_(0, 255).to(torch.uint8)
    return y.to(like.dtype)


def rotate(x: "torch.Tensor", angle: float) -> "torch.Tensor":
    """Rotate an HWC image by `angle` degrees counter-clockwise (as displayed, y down) about its centre, keeping its
    size; bilinear, zeros outside. Pixel centres at i + 0.5, like DALI's fn.rotate(keep_size=True)."""
    import torch
    import torch.nn.functional as F

    h, w = x.shape[0], x.shape[1]
    dev = x.device
    th = math.radians(float(angle))
    c, s = math.cos(th), math.sin(th)
    ys = torch.arange(h, device=dev, dtype=torch.float64) + 0.5 - h / 2.0
    xs = torch.arange(w, device=dev, dtype=torch.float64) + 0.5 - w / 2.0
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    # inverse map: output (x, y) samples input R(-angle) (x, y) in a y-down frame
    src_x = c * xx - s * yy + w / 2.0
    src_y = s * xx + c * yy + h / 2.0
    grid = torch.stack([src_x * 2.0 / w - 1.0, src_y * 2.0 / h - 1.0], dim=-1)[None].to(torch.float32)
    img = x.permute(2, 0, 1)[None].to(torch.float32)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return _to_uint8_like(out[0].permute(1, 2, 0), x)


def resize(x: "torch.Tensor", size: tuple[int, int]) -> "torch.Tensor":
    """Bilinear resize of an HWC image to (h, w), half-pixel centres, no antialias (DALI fn.resize, antialias=False)."""
    import torch.nn.functional as F

    img = x.permute(2, 0, 1)[None].float()
    out = F.interpolate(img, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False,
                        antialias=False)
    return _to_uint8_like(out[0].permute(1, 2, 0), x)


def intensity(x: "torch.Tensor", a: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
    """Per-channel x * a + b on channel-last float tensors (a, b broadcast over the last dim)."""
    return x * a + b


def normalize(x: "torch.Tensor", mean: "torch.Tensor", std: "torch.Tensor") -> "torch.Tensor":
    """Per-channel (x - mean) / std on channel-last float tensors."""
    return (x - mean) / std


def _reflect101(n: int, r: int) -> np.ndarray:
    """Indices of an axis of n padded by r on each side, mirrored without repeating the edge (DALI's border)."""
    i = np.abs(np.arange(-r, n + r))
    if n == 1:
        return np.zeros_like(i)
    i = i % (2 * n - 2)
    return np.where(i >= n, 2 * n - 2 - i, i)


def photometric(x: "torch.Tensor", params: Mapping[str, np.ndarray], cfg: AugmentConfig) -> "torch.Tensor":
    """Blur, gamma, illumination field and noise (each when on) of float (B, S, S, C) grey levels, in that order,
    exactly as the DALI graph does them (cellio.pipeline.photometric_graph)."""
    import torch

    b, h, w, c = x.shape
    dev = x.device

    def tensor(a: Any) -> "torch.Tensor":
        return torch.as_tensor(np.asarray(a, np.float32), device=dev)

    if cfg.blur_sigma is not None:
        rows = []
        for i in range(b):
            k = gaussian_kernel(float(params["blur_sigma"][i])).astype(np.float32)
            y = x[i]
            if len(k) > 1:
                r = len(k) // 2
                for axis, n in ((0, h), (1, w)):
                    idx = torch.as_tensor(_reflect101(n, r), device=dev)
                    p = y.index_select(axis, idx)
                    acc = torch.zeros_like(y)
                    for j, kj in enumerate(k):
                        acc += float(kj) * p.narrow(axis, j, n)
                    y = acc
            rows.append(y)
        x = torch.stack(rows)
    if cfg.gamma is not None:
        x = 255.0 * torch.pow(x / 255.0, tensor(params["gamma"])[:, None, None, :])
    if cfg.illumination is not None:
        yy, xx = (tensor(v)[None] for v in field_coords(h, w))
        f = tensor(params["field"])
        gx, gy, v = f[:, 0][:, None, None, :], f[:, 1][:, None, None, :], f[:, 2][:, None, None, :]
        x = x * torch.exp(gx * xx + gy * yy + v * (xx * xx + yy * yy))
    if cfg.noise is not None:
        n = torch.as_tensor(noise_windows(params["noise_offset"], h, c), device=dev)
        shot = tensor(params["noise_shot"])[:, None, None, None]
        read = tensor(params["noise_read"])[:, None, None, None]
        x = x + n * torch.sqrt(torch.clamp(shot * x + read * read, min=0.0))
    return x


def _as_tensor(x: Any, device: Any) -> "torch.Tensor":
    import torch

    if isinstance(x, torch.Tensor):
        return x.to(device)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def apply_torch(batch: "torch.Tensor | Sequence[Any]", params: Mapping[str, np.ndarray], mean: np.ndarray,
                std: np.ndarray, cfg: AugmentConfig, device: Any = None) -> "torch.Tensor":
    """Apply drawn parameters to B read windows: uint8 (B, h, w, 6) tensor/array or a list of (h_i, w_i, 6)
    (random resized crops differ in size) -> cfg.dtype (B, 6, S, S) on `device` (default: the batch's).

    mean / std: (B, 6) channel statistics of each sample (0..255 scale), see normalization_affine.
    """
    import torch

    items = list(batch) if not isinstance(batch, torch.Tensor) else list(batch.unbind(0))
    if len(items) == 0:
        raise PipelineConfigError("apply_torch: expected at least one sample, found an empty batch")
    if device is None:
        device = items[0].device if isinstance(items[0], torch.Tensor) else "cpu"
    n = len(items)
    for key in ("window", "angle", "transpose", "hflip", "vflip", "scale", "shift"):
        if len(params[key]) != n:
            raise PipelineConfigError(f"apply_torch: params[{key!r}] has {len(params[key])} rows, batch has {n}")
    s = cfg.crop_size
    out = []
    for i, item in enumerate(items):
        x = _as_tensor(item, device)
        if x.ndim != 3 or x.shape[2] != N_CHANNELS or x.dtype != torch.uint8:
            raise PipelineConfigError(f"apply_torch: sample {i}: expected uint8 (h, w, {N_CHANNELS}), found "
                                      f"{x.dtype} {tuple(x.shape)}")
        if cfg.rotation == "any":
            x = rotate(x, float(params["angle"][i]))
            x = crop(x, (x.shape[0] - s) // 2, (x.shape[1] - s) // 2, s, s)
        if cfg.rrc_scale is not None and tuple(x.shape[:2]) != (s, s):
            x = resize(x, (s, s))
        x = flip_transpose(x, bool(params["transpose"][i]), bool(params["hflip"][i]), bool(params["vflip"][i]))
        out.append(x)
    shapes = {tuple(x.shape) for x in out}
    if len(shapes) != 1:
        raise PipelineConfigError(f"apply_torch: samples ended with different shapes {sorted(shapes)}")
    if cfg.photometric:  # float NHWC through blur, gamma, field and noise, then NCHW
        x = photometric(torch.stack(out).to(torch.float32), params, cfg).permute(0, 3, 1, 2).contiguous()
    else:  # uint8 NHWC -> NCHW while still 1 byte per value, then one float conversion
        x = torch.stack(out).permute(0, 3, 1, 2).contiguous().to(torch.float32)
    m, sd = normalization_affine(mean, std, params["scale"], params["shift"])
    m_t = _as_tensor(m, device)[:, :, None, None]
    s_t = _as_tensor(sd, device)[:, :, None, None]
    y = x.sub_(m_t).div_(s_t)  # = normalize(intensity(x, a, b), mean, std), folded as in DALI
    return y.to(torch_dtype(cfg.dtype))
