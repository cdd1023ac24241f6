"""Random parameters of each sample, DRAWN here (numpy, no torch) separately from being APPLIED (the torch
reference in reference.py, the DALI graph in cellio/loading/pipeline.py), the way torchvision.transforms.v2
splits `make_params` from `transform`; and the drawn parameters in the form both backends consume (the composed
warp matrix, the folded normalisation, blur kernels, illumination coordinates, the noise bank).

`channels` is the store's channel count (its layout's): per-channel draws have one column per channel.
`max_value` is the largest value of its pixel type (255, 65535): the config's grey levels (the intensity shift,
the noise's read and shot levels) are on the 0..255 scale and drawn scaled to the data's range, so a preset does
the same to 8-bit and 16-bit data.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import numpy as np

from ...params import parse_choice
from .config import MIN_BLUR_SIGMA, MIN_STD, TTA_MODES, AugmentConfig, check_fits, margin_size

__all__ = ["make_params", "epoch_params", "PARAM_BLOCK", "eval_views", "eval_params", "decode_view", "D4_TABLE",
           "d4_flags", "normalization_affine", "warp_matrices", "NOISE_BANK_SCALE", "blur_window",
           "gaussian_kernel", "field_coords", "noise_bank", "noise_windows"]


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


def _range_scale(max_value: int) -> float:
    """Factor from the config's 0..255 grey levels to the data's 0..max_value."""
    return float(max_value) / 255.0


def make_params(cfg: AugmentConfig, rng: np.random.Generator, n: int, image_hw: tuple[int, int],
                channels: int, max_value: int = 255) -> dict[str, np.ndarray]:
    """Draw every random parameter of n samples from `rng` (nothing is applied here).

    Returns arrays with a leading n: window (n, 4) int64 (y, x, h, w) to read from the site; angle (n,) float32
    degrees; d4 (n,) int64 in 0..7; transpose / hflip / vflip (n,) bool (D4 view and extra flips combined);
    scale / shift (n, channels) float32 (the x*a + b of each channel; b in the data's grey levels, 0..max_value).
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
    a = (rng.uniform(*cfg.intensity_scale, size=(n, channels)) if cfg.intensity_scale is not None
         else np.ones((n, channels)))
    b = (rng.uniform(*cfg.intensity_shift, size=(n, channels)) if cfg.intensity_shift is not None
         else np.zeros((n, channels)))
    if max_value != 255:  # (8-bit data draws exactly as before)
        b = b * _range_scale(max_value)
    out = {"window": window, "angle": angle, "d4": k.astype(np.int64), "transpose": t, "hflip": hf, "vflip": vf,
           "scale": a.astype(np.float32), "shift": b.astype(np.float32)}
    # drawn last: configurations without them draw as before
    out.update(_photometric_params(cfg, rng, n, channels, max_value))
    return out


def _photometric_params(cfg: AugmentConfig, rng: np.random.Generator, n: int, channels: int,
                        max_value: int = 255) -> dict[str, np.ndarray]:
    """The photometric draws of n samples: only the keys of the ops that are on."""
    out: dict[str, np.ndarray] = {}
    if cfg.blur_sigma is not None:
        out["blur_sigma"] = rng.uniform(*cfg.blur_sigma, size=n).astype(np.float32)
    if cfg.gamma is not None:
        out["gamma"] = rng.uniform(*cfg.gamma, size=(n, channels)).astype(np.float32)
    if cfg.illumination is not None:
        s = cfg.illumination
        out["field"] = np.stack([rng.uniform(-s, s, size=(n, channels)), rng.uniform(-s, s, size=(n, channels)),
                                 rng.uniform(-s, 0.0, size=(n, channels))], axis=1).astype(np.float32)
    if cfg.noise is not None:
        free = NOISE_BANK_SCALE * cfg.crop_size - cfg.crop_size
        out["noise_offset"] = rng.integers(0, free + 1, size=(n, 2)).astype(np.int64)
        read = rng.uniform(0.0, cfg.noise[0], size=n)
        shot = rng.uniform(0.0, cfg.noise[1], size=n)
        if max_value != 255:  # x' = k x: k n sqrt(shot x + read^2) = n sqrt(k shot x' + (k read)^2)
            read, shot = read * _range_scale(max_value), shot * _range_scale(max_value)
        out["noise_read"] = read.astype(np.float32)
        out["noise_shot"] = shot.astype(np.float32)
    return out


PARAM_BLOCK = 1024  # positions drawn per Generator: rows never depend on how many positions an epoch has


def epoch_params(cfg: AugmentConfig, seed: int, epoch: int, positions: np.ndarray, image_hw: tuple[int, int],
                 channels: int, max_value: int = 255) -> dict[str, np.ndarray]:
    """Parameters of the samples at `positions` (global positions in the epoch order), rows in that order.

    Position p is row p % PARAM_BLOCK of a block drawn vectorised from a Generator seeded with
    (seed, epoch, p // PARAM_BLOCK), so a sample's parameters do not depend on the backend, worker count, batch
    size, rank count, epoch length or resume point (and a block costs about what one per-sample Generator did).
    """
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    if len(positions) == 0:
        return make_params(cfg, np.random.default_rng(0), 0, image_hw, channels, max_value)
    blocks = np.unique(positions // PARAM_BLOCK)
    drawn = [make_params(cfg, np.random.default_rng([int(seed), int(epoch), int(b), 0xA06]), PARAM_BLOCK, image_hw,
                         channels, max_value) for b in blocks]
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


def eval_params(cfg: AugmentConfig, views: np.ndarray, image_hw: tuple[int, int], tta: str, channels: int
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
            "scale": np.ones((n, channels), np.float32), "shift": np.zeros((n, channels), np.float32)}


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
def noise_bank(size: int, channels: int) -> np.ndarray:
    """A fixed (NOISE_BANK_SCALE * size)^2 x channels standard-normal float32 bank (read-only); a sample's noise
    is the size x size window at its drawn offset."""
    side = NOISE_BANK_SCALE * int(size)
    bank = np.random.default_rng(_NOISE_SEED).standard_normal((side, side, int(channels)), dtype=np.float32)
    bank.setflags(write=False)
    return bank


def noise_windows(offsets: np.ndarray, size: int, channels: int) -> np.ndarray:
    """(B, size, size, channels) float32: each sample's noise window of the bank."""
    bank = noise_bank(size, channels)
    return np.stack([bank[y:y + size, x:x + size] for y, x in np.asarray(offsets, np.int64)])
