"""The synthetic cell-image model: what a site of a given siRNA, cell type and batch looks like.

Signal design (see docs/rxrx1.md):
- A siRNA is a random point in a morphology-parameter space (`MORPHOLOGY`): cell/nucleus size, shape and position,
  chromatin texture, ER spread, actin cortex and stress fibres, nucleoli, mitochondrial puncta, membrane width,
  Golgi, density, clustering, alignment. Cells are rendered as soft ellipses per channel, vectorised over cells.
- Cell types differ in cell size, density, elongation and clustering.
- Experiments and plates add illumination gradients, background and noise, and every channel is finally rescaled
  to a mean and std drawn from batch effects only, so the class cannot be read from per-channel mean/std
  (`pixel_stats.csv`); the data-set writer's classifier check shows it.

Every random draw comes from a generator keyed by (seed, purpose, ids), never from a shared stream; the purposes
are the `KEY_*` constants below (the writer, `writer.py`, draws the layout and site streams with them).
Also here: the texture features of that check, per-channel pixel statistics and a minimal PNG encoder.
"""
from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from ..layout import CELL_TYPES, GLOBAL_PIXEL_MEAN, GLOBAL_PIXEL_STD, N_CHANNELS, NEGATIVE_CONTROL_SIRNA

__all__ = ["MORPHOLOGY", "BatchEffects", "class_morphology", "site_batch", "render_synthetic_site",
           "texture_features", "pixel_stats", "encode_png", "N_TEXTURE"]

# Morphology-parameter space: name -> (low, high). A siRNA's phenotype is a uniform draw from this box.
MORPHOLOGY: dict[str, tuple[float, float]] = {
    "size": (0.75, 1.35),          # cell radius factor
    "elong": (0.0, 0.4),           # cell ellipse eccentricity-like factor
    "nuc_frac": (0.32, 0.62),      # nucleus radius / cell radius
    "nuc_elong": (0.0, 0.35),
    "nuc_offset": (0.0, 0.35),     # nucleus shift along the major axis, in cell radii
    "ruffle": (0.0, 0.22),         # membrane lobes amplitude
    "lobes": (2.0, 6.99),          # number of lobes (floored)
    "chromatin": (0.0, 0.9),       # nuclear texture contrast
    "chrom_period": (2.5, 8.0),    # nuclear texture period, px
    "chrom_dir": (0.0, math.pi),   # nuclear texture direction relative to the cell's major axis
    "er_decay": (0.3, 3.0),        # ER intensity decay from the nucleus
    "er_texture": (0.0, 0.8),
    "er_period": (3.0, 10.0),
    "er_dir": (0.0, math.pi),
    "cortex": (0.1, 1.5),          # actin cortex ring strength
    "fibers": (0.0, 1.5),          # stress fibre strength
    "fiber_period": (3.0, 8.0),
    "fiber_angle": (0.0, math.pi),  # fibre direction relative to the cell's major axis
    "rna_nuc": (0.2, 1.0),
    "rna_cyto": (0.05, 0.8),
    "nucleoli": (0.0, 5.0),        # mean nucleoli per nucleus
    "nucleolus_sigma": (0.7, 2.0),
    "mito_count": (4.0, 40.0),     # mean mitochondrial puncta per cell
    "mito_spread": (0.1, 1.0),     # puncta distance from the nucleus, in cell radii
    "mito_sigma": (0.6, 1.8),
    "mem_width": (0.03, 0.18),     # membrane ring width, in cell radii
    "golgi": (0.0, 1.5),
    "golgi_size": (0.12, 0.35),
    "density": (0.6, 1.4),
    "cluster": (0.0, 0.8),         # fraction of cells placed in clusters
    "align": (0.0, 1.0),           # how strongly cells align to a common direction
}


@dataclass(frozen=True)
class _CellTypeTraits:
    radius: float      # mean cell radius at size 1, px
    coverage: float    # fraction of the field covered by cells at density 1
    elong: float       # extra elongation
    cluster: float     # extra clustering


_TRAITS: dict[str, _CellTypeTraits] = {
    "HEPG2": _CellTypeTraits(radius=10.0, coverage=0.42, elong=0.0, cluster=0.35),
    "HUVEC": _CellTypeTraits(radius=14.0, coverage=0.32, elong=0.2, cluster=0.0),
    "RPE": _CellTypeTraits(radius=12.0, coverage=0.36, elong=0.08, cluster=0.1),
    "U2OS": _CellTypeTraits(radius=16.0, coverage=0.28, elong=0.04, cluster=0.05),
}

# Random-stream purposes (first key after the seed), for every stream of the generator: the layout and site
# streams are drawn by cellio.datasets.rxrx1.synth.writer.
KEY_LAYOUT, KEY_CLASS, KEY_BATCH_EXP, KEY_BATCH_PLATE, KEY_SITE, KEY_BATCH_CELL_TYPE, KEY_CLASS_CELL_TYPE = \
    1, 2, 3, 4, 5, 6, 7


@dataclass(frozen=True)
class SynthProfile:
    """How hard a synthetic set is. "default" is the original generator (every class anywhere in the morphology
    box, the same in every cell type); "hard" makes phenotypes subtle (a class sits within `strength` of the
    box around its centre) and cell-type-specific (a `cell_type_specific` share of its position is drawn per cell
    type, so one siRNA looks different in different cell types), with stronger per-plate gain, a wider spread
    of cell sizes within a well and missing wells."""

    name: str
    strength: float = 1.0
    cell_type_specific: float = 0.0
    plate_gain: float = 0.1             # log-normal sd of a plate's per-channel mean/std factor
    size_spread: float = 0.12           # log-normal sd of cell radii within a site
    missing_wells: float = 0.0          # default share of missing treatment wells


PROFILES: dict[str, SynthProfile] = {
    "default": SynthProfile("default"),
    "hard": SynthProfile("hard", strength=0.5, cell_type_specific=0.6, plate_gain=0.2, size_spread=0.3,
                         missing_wells=0.05),
}
_TEXTURE_CROP = 160  # texture statistics of the check use a central crop (speed)
N_TEXTURE = 5  # texture features per channel


def class_morphology(sirna: int, seed: int = 0, cell_type: str | None = None,
                     profile: SynthProfile = PROFILES["default"]) -> dict[str, float]:
    """The morphology point of a siRNA (treatment or control) in a cell type; the negative control sits at the box
    centre. Under the default profile the cell type plays no part."""
    if int(sirna) == NEGATIVE_CONTROL_SIRNA:
        return {k: (lo + hi) / 2 for k, (lo, hi) in MORPHOLOGY.items()}
    rng = np.random.default_rng([int(seed), KEY_CLASS, int(sirna)])
    u = rng.random(len(MORPHOLOGY))
    if profile.cell_type_specific > 0 and cell_type is not None:
        own = np.random.default_rng([int(seed), KEY_CLASS_CELL_TYPE, int(sirna), CELL_TYPES.index(cell_type)])
        u = (1 - profile.cell_type_specific) * u + profile.cell_type_specific * own.random(len(MORPHOLOGY))
    u = 0.5 + profile.strength * (u - 0.5)
    return {k: lo + float(x) * (hi - lo) for (k, (lo, hi)), x in zip(MORPHOLOGY.items(), u)}


@dataclass(frozen=True)
class BatchEffects:
    """Class-independent nuisance of one site: target per-channel mean/std, illumination, background, noise."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    grad: tuple[tuple[float, float], ...]   # per channel (dy, dx) illumination slope over the field
    background: tuple[float, ...]           # relative to the cell signal
    noise: tuple[float, ...]                 # relative to the cell signal


def _experiment_batch(seed: int, exp_index: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng([seed, KEY_BATCH_EXP, exp_index])
    return (np.exp(rng.normal(0, 0.25, N_CHANNELS)), np.exp(rng.normal(0, 0.25, N_CHANNELS)),
            rng.uniform(0.0, 0.25, N_CHANNELS), rng.uniform(0.03, 0.2, N_CHANNELS))


def site_batch(seed: int, exp_index: int, plate: int, site_rng: np.random.Generator,
               cell_type_index: int, plate_gain: float = 0.1) -> BatchEffects:
    g_mean, g_std, background, noise = _experiment_batch(seed, exp_index)
    prng = np.random.default_rng([seed, KEY_BATCH_PLATE, exp_index, plate])
    p_mean, p_std = np.exp(prng.normal(0, plate_gain, N_CHANNELS)), np.exp(prng.normal(0, plate_gain, N_CHANNELS))
    grad = prng.normal(0, 0.15, (N_CHANNELS, 2))
    ct = np.exp(np.random.default_rng([seed, KEY_BATCH_CELL_TYPE, cell_type_index]).normal(0, 0.15, 2))
    s_mean, s_std = np.exp(site_rng.normal(0, 0.05, N_CHANNELS)), np.exp(site_rng.normal(0, 0.05, N_CHANNELS))
    mean = np.asarray(GLOBAL_PIXEL_MEAN) * g_mean * p_mean * s_mean * ct[0]
    std = np.asarray(GLOBAL_PIXEL_STD) * g_std * p_std * s_std * ct[1]
    return BatchEffects(tuple(mean.tolist()), tuple(std.tolist()), tuple(map(tuple, grad.tolist())),
                  tuple(background.tolist()), tuple(noise.tolist()))


def _soft(x: np.ndarray, sharpness: float) -> np.ndarray:
    """1 inside (x < 1), 0 outside, a linear ramp of width 1/sharpness across the boundary."""
    return np.clip((1.0 - x) * sharpness, 0.0, 1.0)


def _bump(d: np.ndarray) -> np.ndarray:
    """Smooth compact bump: 1 at d=0, 0 for |d| >= 1 (a cheap stand-in for a Gaussian)."""
    t = np.clip(1.0 - d * d, 0.0, None)
    return t * t


def render_synthetic_site(height: int, width: int, morph: dict[str, float], cell_type: str, batch: BatchEffects,
                          rng: np.random.Generator, size_spread: float = 0.12) -> np.ndarray:
    """Render one site: uint8 (6, height, width), channel order w1..w6.

    Cells tile the field like a confluent culture: every pixel belongs to its nearest cell centre (one Euclidean
    distance transform), and each channel is a closed-form function of the pixel's coordinates in its cell's
    frame (soft ellipses, rings, gratings), so the work is a fixed number of vectorised passes over the image.
    """
    from scipy.ndimage import distance_transform_edt, gaussian_filter

    f32 = np.float32
    traits = _TRAITS[cell_type]
    m = morph
    r0 = traits.radius * m["size"]
    elong = min(m["elong"] + traits.elong, 0.55)
    n = max(1, int(rng.poisson(traits.coverage * m["density"] * height * width / (math.pi * r0 * r0))))

    # Positions: a mix of uniform cells and cells clustered around a few centres (spatial statistics).
    cy, cx = rng.uniform(0, height, n), rng.uniform(0, width, n)
    clustered = rng.random(n) < min(m["cluster"] + traits.cluster, 0.95)
    n_cl = int(clustered.sum())
    if n_cl:
        k = max(1, n // 12)
        centres = np.stack([rng.uniform(0, height, k), rng.uniform(0, width, k)], axis=1)
        pick = rng.integers(0, k, n_cl)
        jitter = rng.normal(0, 2.0 * r0, (n_cl, 2))
        cy[clustered] = np.mod(centres[pick, 0] + jitter[:, 0], height)
        cx[clustered] = np.mod(centres[pick, 1] + jitter[:, 1], width)
    aligned = rng.random(n) < m["align"]
    phi = np.where(aligned, rng.uniform(0, math.pi) + rng.normal(0, 0.2, n), rng.uniform(0, math.pi, n))
    radius = r0 * np.exp(rng.normal(0, size_spread, n))
    cell_side = np.where(rng.random(n) < 0.5, -1.0, 1.0)

    # Per-cell parameters, gathered to pixels in one take (the fewer, the faster). Brightness varies per cell in
    # three compartments (nucleus, cytoplasm, membrane); texture phases are random per cell, texture directions
    # are fixed relative to the cell's axis by the class.
    per_cell = np.stack([
        cy - 0.5, cx - 0.5, np.cos(phi), np.sin(phi), 1 / radius, cell_side * radius,
        *rng.uniform(0, 2 * math.pi, (3, n)), *np.exp(rng.normal(0, 0.2, (3, n))),
    ]).astype(f32)
    # Owner of each pixel = nearest cell centre. On large fields the transform runs at half resolution (5x
    # cheaper); the cut between two touching cells is then drawn on a 2-px grid.
    f = 2 if height * width >= 128 * 128 else 1
    hh, ww = -(-height // f), -(-width // f)
    label = np.full((hh, ww), -1, dtype=np.int64)
    label[np.clip((cy // f).astype(np.int64), 0, hh - 1), np.clip((cx // f).astype(np.int64), 0, ww - 1)] = np.arange(n)
    nearest = distance_transform_edt(label < 0, return_distances=False, return_indices=True)
    owner = label[nearest[0], nearest[1]]
    if f > 1:
        owner = np.repeat(np.repeat(owner, f, axis=0), f, axis=1)[:height, :width]
    del nearest, label
    (pcy, pcx, cphi, sphi, inv_r, side_r, ph_chrom, ph_er, ph_fib,
     b_nuc, b_cyto, b_mem) = np.take(per_cell, owner, axis=1)

    dy = np.arange(height, dtype=f32)[:, None] - pcy
    dx = np.arange(width, dtype=f32)[None, :] - pcx
    u = dx * cphi
    u += dy * sphi                     # along the cell's major axis
    u *= inv_r                         # in cell radii from here on
    v = dy * cphi
    v -= dx * sphi
    v *= inv_r
    del dx, dy
    t = u * f32(1 / (1 + elong))
    rho = t * t
    t = v * f32(1 / (1 - elong))
    rho += t * t
    np.sqrt(rho, out=rho)
    if m["ruffle"] > 0:
        # Lobed outline: rho /= 1 + ruffle * cos(lobes * angle), with cos(k * angle) = Re(((u + iv) / |u + iv|) ** k)
        # (integer power by repeated squaring; ~4x cheaper than arctan2 + cos).
        z = u + 1j * v
        z /= np.abs(z) + f32(1e-6)
        zk = _complex_power(z.astype(np.complex64, copy=False), int(m["lobes"]))
        t = zk.real * f32(m["ruffle"])
        t += f32(1)
        rho /= t
        del z, zk
    cell = _soft(rho, 6.0)
    side = side_r * inv_r              # +-1: which end of the major axis the nucleus is pushed to
    t = u - side * f32(m["nuc_offset"])
    t *= f32(1 / (m["nuc_frac"] * (1 + m["nuc_elong"])))
    rn = t * t
    t = v * f32(1 / (m["nuc_frac"] * (1 - m["nuc_elong"])))
    rn += t * t
    np.sqrt(rn, out=rn)
    nuc = _soft(rn, 5.0)
    del rn

    def grating(period: float, direction: float, phase: np.ndarray) -> np.ndarray:
        """Product of two orthogonal cosines (a speckle/checker texture) of `period` px, per-cell phase."""
        k = 2 * math.pi / period / inv_r  # u, v are in cell radii
        cd, sd = f32(math.cos(direction)), f32(math.sin(direction))
        a = u * cd
        a += v * sd
        a *= k
        a += phase
        np.cos(a, out=a)
        b = v * cd
        b -= u * sd
        b *= k
        b += phase * f32(1.618)
        np.cos(b, out=b)
        a *= b
        return a

    img = np.empty((N_CHANNELS, height, width), dtype=f32)
    g = grating(m["chrom_period"], m["chrom_dir"], ph_chrom)
    g *= f32(m["chromatin"])
    g += f32(1)
    np.multiply(nuc, g, out=img[0])
    g = grating(m["er_period"], m["er_dir"], ph_er)
    g *= f32(m["er_texture"])
    g += f32(1)
    t = rho * f32(-m["er_decay"])
    np.exp(t, out=t)
    t *= cell
    g *= t
    t = nuc * f32(-0.6)
    t += f32(1)
    np.multiply(g, t, out=img[1])
    beta = m["fiber_angle"]
    fib = u * f32(math.sin(beta))
    fib -= v * f32(math.cos(beta))
    fib *= f32(2 * math.pi / m["fiber_period"]) / inv_r
    fib += ph_fib
    np.cos(fib, out=fib)
    fib += f32(1)
    fib *= fib
    fib *= fib                          # ((1 + cos) ** 4) / 16: thin bright fibres
    fib *= cell
    fib *= f32(m["fibers"] / 16)
    t = rho - f32(1)
    t *= f32(1 / 0.12)
    t = _bump(t)
    t *= f32(m["cortex"])
    np.add(t, fib, out=img[2])
    t = cell * f32(m["rna_cyto"])
    t *= f32(1) - nuc
    t += nuc * f32(m["rna_nuc"])
    img[3] = t
    np.multiply(cell, f32(0.15), out=img[4])
    t = rho - f32(1)
    t *= f32(1 / m["mem_width"])
    img[5] = _bump(t)
    if m["golgi"] > 0:
        # Golgi: a blob beside the nucleus, on the side away from the nucleus shift.
        t = np.hypot(u + side * f32((m["nuc_offset"] + m["nuc_frac"] + m["golgi_size"]) * 0.8), v)
        t *= f32(1 / (2 * m["golgi_size"]))
        t = _bump(t)
        t *= f32(m["golgi"])
        img[5] += t
    img[0] *= b_nuc
    img[3] *= b_nuc
    img[1] *= b_cyto
    img[2] *= b_cyto
    img[4] *= b_cyto
    img[5] *= b_mem
    del u, v, t, g, fib, cell, nuc, side

    # Point-like organelles (nucleoli in w4, mitochondria in w5): impulses, then one blur per layer.
    def puncta(owner_: np.ndarray, du: np.ndarray, dv: np.ndarray, sigma: float) -> np.ndarray:
        layer = np.zeros((height, width), dtype=f32)
        if len(owner_):
            c, s = np.cos(phi[owner_]), np.sin(phi[owner_])
            py = np.floor(cy[owner_] + du * s + dv * c).astype(np.int64)
            px = np.floor(cx[owner_] + du * c - dv * s).astype(np.int64)
            keep = (py >= 0) & (py < height) & (px >= 0) & (px < width)
            np.add.at(layer, (py[keep], px[keep]), f32(2 * math.pi * sigma * sigma))
            layer = gaussian_filter(layer, sigma, truncate=2.5)
        return layer

    who = np.repeat(np.arange(n), rng.poisson(m["nucleoli"], n))
    rad = np.sqrt(rng.random(len(who))) * 0.6 * m["nuc_frac"] * radius[who]
    th = rng.uniform(0, 2 * math.pi, len(who))
    shift = cell_side[who] * m["nuc_offset"] * radius[who]
    img[3] += puncta(who, shift + rad * np.cos(th), rad * np.sin(th), m["nucleolus_sigma"]) * f32(1.5)
    who = np.repeat(np.arange(n), rng.poisson(m["mito_count"], n))
    rad = radius[who] * (m["nuc_frac"] + np.abs(rng.normal(0, m["mito_spread"], len(who))))
    th = rng.uniform(0, 2 * math.pi, len(who))
    img[4] += puncta(who, rad * np.cos(th), rad * np.sin(th), m["mito_sigma"])

    # Batch effects: illumination gradient, an additive background ramp, noise; then every channel is rescaled
    # to the batch's target mean/std (so pixel statistics carry no class information).
    yy = np.linspace(-0.5, 0.5, height, dtype=f32)[:, None]
    xx = np.linspace(-0.5, 0.5, width, dtype=f32)[None, :]
    # Uniform noise from random bytes (std ~1): a third of the cost of float draws, and indistinguishable from
    # Gaussian noise after the 8-bit rounding.
    noise = np.frombuffer(rng.bytes(N_CHANNELS * height * width), dtype=np.uint8).reshape(N_CHANNELS, height, width)
    out = np.empty((N_CHANNELS, height, width), dtype=np.uint8)
    for ch in range(N_CHANNELS):
        x = img[ch]
        scale = float(_probe(x).std()) or 1.0
        gy, gx = batch.grad[ch]
        x *= f32(1) + (f32(gy) * yy + f32(gx) * xx)
        x += f32(scale * batch.background[ch]) * (yy + f32(0.5))
        amp = scale * batch.noise[ch] * math.sqrt(12.0) / 256.0
        t = noise[ch] * f32(amp)
        t -= f32(amp * 127.5)
        x += t
        out[ch] = _rescale(x, batch.mean[ch], batch.std[ch])
    return out


def _complex_power(z: np.ndarray, k: int) -> np.ndarray:
    """z ** k for a small integer k >= 1, by repeated squaring (numpy's complex power goes through exp/log)."""
    result = None
    base = z
    while k:
        if k & 1:
            result = base.copy() if result is None else result * base
        k >>= 1
        if k:
            base = base * base
    return result


def _probe(x: np.ndarray) -> np.ndarray:
    """Every third pixel in each direction: a ninth of the work for statistics that only steer a rescale."""
    return x[::3, ::3] if x.size > 9000 else x


def _rescale(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Affine map of x whose clipped, rounded result has (close to) the given mean and std. Overwrites x."""
    probe = _probe(x)
    mu, sd = float(probe.mean()), float(probe.std())
    if sd <= 0:
        return np.full(x.shape, min(max(round(mean), 0), 255), dtype=np.uint8)
    z = (probe - np.float32(mu)) / np.float32(sd)
    a, b = mean, std
    for _ in range(4):  # clipping at 0 shifts mean/std by a shape-dependent amount: correct it away
        y = np.clip(z * np.float32(b) + np.float32(a), 0, 255)
        ym, ys = float(y.mean()), float(y.std())
        if ys <= 0:
            break
        b *= std / ys
        a += mean - ym
    x -= np.float32(mu)
    x *= np.float32(b / sd)
    x += np.float32(a + 0.5)  # +0.5 then truncation = rounding, for non-negative values
    np.clip(x, 0, 255, out=x)
    return x.astype(np.uint8)


def texture_features(img: np.ndarray) -> np.ndarray:
    """Affine-invariant texture statistics per channel (gradient energy, autocorrelation, skew, tail):
    float64 (6 * 5,), on a central crop of at most _TEXTURE_CROP px. Unchanged by per-channel brightness/contrast,
    so they carry morphology, not batch."""
    feats = []
    h, w = img.shape[1:]
    y0, x0 = max((h - _TEXTURE_CROP) // 2, 0), max((w - _TEXTURE_CROP) // 2, 0)
    for ch in img[:, y0:y0 + _TEXTURE_CROP, x0:x0 + _TEXTURE_CROP].astype(np.float32):
        sd = float(ch.std())
        z = (ch - float(ch.mean())) / sd if sd > 0 else np.zeros_like(ch)
        grad = float(np.abs(np.diff(z, axis=0)).mean() + np.abs(np.diff(z, axis=1)).mean()) if min(z.shape) > 1 else 0.0
        ac = []
        for lag in (2, 6):
            h = float((z[:, lag:] * z[:, :-lag]).mean()) if z.shape[1] > lag else 0.0
            vv = float((z[lag:] * z[:-lag]).mean()) if z.shape[0] > lag else 0.0
            ac.append((h + vv) / 2)
        feats += [grad, *ac, float((z ** 3).mean()), float((z > 2).mean())]
    return np.asarray(feats, dtype=np.float64)


def pixel_stats(img: np.ndarray) -> np.ndarray:
    """Per channel (mean, std, median, min, max) of a uint8 (6, H, W) site: float64 (6, 5)."""
    rows = []
    for ch in img:
        hist = np.bincount(ch.ravel(), minlength=256)
        cum = np.cumsum(hist)
        total = int(cum[-1])
        lo = int(np.searchsorted(cum, (total - 1) // 2 + 1))
        hi = int(np.searchsorted(cum, total // 2 + 1))
        vals = np.arange(256, dtype=np.float64)
        mean = float((hist * vals).sum() / total)
        std = float(math.sqrt(max((hist * (vals - mean) ** 2).sum() / total, 0.0)))
        nz = np.flatnonzero(hist)
        rows.append((mean, std, (lo + hi) / 2, float(nz[0]), float(nz[-1])))
    return np.asarray(rows, dtype=np.float64)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_png(a: np.ndarray) -> bytes:
    """8-bit grayscale PNG of a (H, W) uint8 array. A minimal writer: 'Sub' filter on every row (a vectorised
    difference) and Huffman-only deflate, ~4x faster than PIL/cv2 at a smaller size (on these noisy images
    string matching finds little); any PNG decoder reads it."""
    h, w = a.shape
    raw = np.empty((h, w + 1), dtype=np.uint8)
    raw[:, 0] = 1  # filter type 1 = Sub: each byte minus its left neighbour
    raw[:, 1] = a[:, 0]
    np.subtract(a[:, 1:], a[:, :-1], out=raw[:, 2:])
    comp = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    idat = comp.compress(raw.tobytes()) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))
