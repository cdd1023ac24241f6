"""Cell-like fields of view for the format generators in this folder (independent of cellio: never import it).

One home for the image content the JUMP, OME-Zarr, RxRx2 and RxRx3-core generators write: a field of cells
(nuclei blobs, a cytoplasm with texture, channel-specific structure), a per-perturbation shift of a few channels'
intensity and texture so a classifier can learn the perturbation, and per-plate/batch channel gains. Each channel
has a role that says what it shows; the generators map their channel names onto roles.

Every draw comes from `rng(seed, purpose, *ids)` (numpy's SeedSequence over integers; strings go through crc32),
so a field is a pure function of its arguments.

    field = render_field(roles, (53, 70), seed=1, ids=(plate, well, site), effect=effect_of("TP53", 1.0, seed=1),
                         gain=plate_gain(len(roles), seed=1, ids=(plate,)))   # float32 (C, H, W), ~[0, 1]
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

F32 = np.float32
ROLES = ("nucleus", "er", "rna", "actin", "mito", "membrane", "brightfield")

# purposes for the seeded generators (any generator may add its own above 100)
_CELLS, _TEXTURE, _EFFECT, _GAIN, _NOISE = 1, 2, 3, 4, 5


def as_int(value: object) -> int:
    """A stable integer for an id (int as is, anything else by the crc32 of its text)."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    return zlib.crc32(str(value).encode())


def rng(seed: int, purpose: int, *ids: object) -> np.random.Generator:
    return np.random.default_rng([as_int(seed), purpose, *(as_int(i) for i in ids)])


@dataclass(frozen=True)
class Effect:
    """What a perturbation does to the fields it is applied to: per-channel intensity factors, per-channel texture
    scale factors (>1 coarser), a nucleus size factor and a cell density factor. Neutral: all 1."""
    intensity: tuple[float, ...]
    texture: tuple[float, ...]
    nucleus: float = 1.0
    density: float = 1.0


def neutral(n_channels: int) -> Effect:
    return Effect((1.0,) * n_channels, (1.0,) * n_channels)


def effect_of(perturbation: object, strength: float, seed: int, n_channels: int,
              roles: Sequence[str] | None = None) -> Effect:
    """The effect of one perturbation: 2 of the fluorescent channels change intensity (lognormal, sd 0.35 *
    strength) and texture scale; nucleus size and density shift a little. None or strength 0 is neutral."""
    if perturbation is None or strength <= 0:
        return neutral(n_channels)
    r = rng(seed, _EFFECT, perturbation)
    fluo = [i for i in range(n_channels) if roles is None or roles[i] != "brightfield"]
    picked = r.choice(fluo, size=min(2, len(fluo)), replace=False)
    intensity = np.ones(n_channels)
    texture = np.ones(n_channels)
    for c in picked:
        sign = 1.0 if r.uniform() < 0.5 else -1.0
        intensity[c] = float(np.exp(sign * r.uniform(0.2, 0.45) * strength))
        texture[c] = float(np.exp(r.normal(0, 0.4) * strength))
    return Effect(tuple(float(v) for v in intensity), tuple(float(v) for v in texture),
                  nucleus=float(np.exp(r.normal(0, 0.15) * strength)),
                  density=float(np.exp(r.normal(0, 0.2) * strength)))


def plate_gain(n_channels: int, seed: int, ids: Sequence[object], sd: float = 0.2) -> np.ndarray:
    """Per-channel gain of one plate or batch (lognormal around 1)."""
    return np.exp(rng(seed, _GAIN, *ids).normal(0, sd, n_channels)).astype(F32)


def _smooth_noise(r: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-sd smooth random field."""
    f = gaussian_filter(r.standard_normal(shape).astype(F32), max(sigma, 0.5), mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-6)


def render_field(roles: Sequence[str], shape: tuple[int, int], seed: int, ids: Sequence[object],
                 effect: Effect | None = None, gain: np.ndarray | None = None, cell_radius: float | None = None,
                 noise: float = 0.02) -> np.ndarray:
    """A (C, H, W) float32 field of cells, values ~[0, 1] (fluorescence: dark background; brightfield: mid grey).

    `ids` name the field (e.g. plate, well, site) and fix its cell positions; `effect` is the perturbation's
    (neutral when None); `gain` multiplies each channel (a plate/batch effect). Cell size scales with the field so
    tiny test images still hold a few cells
    (radius min(H, W)/9, at most 16 px)."""
    h, w = shape
    n = len(roles)
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown channel role(s) {unknown}; expected some of {ROLES}")
    effect = effect or neutral(n)
    if len(effect.intensity) != n:
        raise ValueError(f"effect has {len(effect.intensity)} channels, the field {n}")
    gain = np.ones(n, F32) if gain is None else np.asarray(gain, F32)
    R = cell_radius or min(max(2.5, min(h, w) / 9), 16.0)
    rc = rng(seed, _CELLS, *ids)
    n_cells = max(2, int(round(h * w / (np.pi * R * R) * 0.45 * effect.density)))
    ys, xs = rc.uniform(0, h, n_cells), rc.uniform(0, w, n_cells)
    bright = rc.uniform(0.7, 1.3, n_cells)

    impulses = np.zeros((h, w), F32)
    np.add.at(impulses, (ys.astype(int).clip(0, h - 1), xs.astype(int).clip(0, w - 1)), bright.astype(F32))
    r_nuc = 0.45 * R * effect.nucleus
    nucleus = gaussian_filter(impulses, r_nuc, mode="constant") * (2 * np.pi * r_nuc ** 2)
    cytoplasm = gaussian_filter(impulses, R, mode="constant") * (2 * np.pi * R ** 2)
    nucleus = np.clip(nucleus, 0, 1.5) / 1.5
    cytoplasm = np.clip(cytoplasm, 0, 1.5) / 1.5
    rim = np.clip(cytoplasm - gaussian_filter(cytoplasm, R / 3), 0, None)
    rim = rim / (rim.max() + 1e-6)

    rt = rng(seed, _TEXTURE, *ids)
    out = np.empty((n, h, w), F32)
    for c, role in enumerate(roles):
        grain = max(0.6, R / 10) * (2.0 if role == "er" else 1.0)
        tex = _smooth_noise(rt, (h, w), grain * effect.texture[c])
        if role == "nucleus":
            img = nucleus * (1 + 0.25 * tex)
        elif role == "er":
            img = cytoplasm * (0.6 + 0.4 * np.clip(tex, -1.5, 1.5)) * (1 - 0.5 * nucleus)
        elif role == "rna":
            img = 0.5 * cytoplasm * (1 + 0.3 * tex) + 0.6 * nucleus * np.clip(tex, 0, None)
        elif role == "actin":
            img = 0.4 * cytoplasm + 0.8 * rim * (1 + 0.3 * tex)
        elif role == "mito":
            puncta = np.clip(tex - 0.8, 0, None)
            img = cytoplasm * (0.3 + 0.5 * puncta) * (1 - 0.6 * nucleus)
        elif role == "membrane":
            img = 0.9 * rim + 0.2 * cytoplasm * (1 + 0.3 * tex)
        else:  # brightfield: cells darken a mid-grey background a little
            img = 0.55 - 0.15 * cytoplasm + 0.03 * tex
        out[c] = np.clip(img, 0, None) * (effect.intensity[c] if role != "brightfield" else 1.0)
    out *= gain[:, None, None]
    out += noise * np.abs(rng(seed, _NOISE, *ids).standard_normal(out.shape)).astype(F32)
    return out


def to_uint8(field: np.ndarray, scale: float = 200.0, offset: float = 6.0) -> np.ndarray:
    """Quantise a field to uint8 (a fixed linear map: gains stay visible across plates)."""
    return np.clip(np.rint(field * scale + offset), 0, 255).astype(np.uint8)


def to_uint16(field: np.ndarray, scale: float = 12000.0, offset: float = 400.0) -> np.ndarray:
    """Quantise a field to uint16 (camera-like offset, values well below saturation)."""
    return np.clip(np.rint(field * scale + offset), 0, 65535).astype(np.uint16)


def parse_size(text: str) -> tuple[int, int]:
    """'70x53' (width x height) or '64' (square) -> (height, width): image sizes are written W x H, arrays are
    indexed [y, x]."""
    parts = text.lower().split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) not in (1, 2) or min(dims) < 8:
        raise ValueError(f"size {text!r}: expected WIDTHxHEIGHT (e.g. 70x53) or one number, each at least 8")
    width, height = (dims[0], dims[0]) if len(dims) == 1 else dims
    return height, width
