"""An RxRx1-layout data set written WITHOUT cellio whose plates carry a strong style: weak, partially penetrant
siRNA phenotypes under the batch effects of real screens (issue 20: plate style is confounded with the siRNA group).

Independent code and signal model (nothing from cellio or from the other foreign generators' signal code is imported
or copied; the plate layout and the CSV writer of tests/foreign_layout.py are the schema, shared). Kaggle layout
`{train,test}/{EXP}/Plate{p}/{well}_s{site}_w{ch}.png` (8-bit grey, size x size, 2 sites, 6 channels), the Kaggle
CSVs with their exact columns (train.csv, test.csv, train_controls.csv, test_controls.csv, pixel_stats.csv,
sample_submission.csv) plus a held-out test_truth.csv (id_code, sirna) for the test treatment wells. Plate
structure as in RxRx1: 4 disjoint siRNA groups, each plate holds one group, each siRNA once (B02 the negative
control 1138, positive controls 1108..1110 on every plate); experiment rotation r puts group (p-1+r)%4 on plate p,
r = 0..2 for train experiments, 3 for test ones; treatment wells go missing with probability `--missing`.

Signal model. A site is a field of cells placed on a jittered hexagonal lattice (HEPG2 thinned into colonies, HUVEC
elongated and aligned with the site's flow direction, RPE cobblestones, U2OS few large ones). Every pixel belongs to
the cell whose normalised elliptic radius there is smallest (a z-buffer over per-cell boxes), so touching cells
share a border. Channels: w1 nucleus (DNA content fixed per cell, chromatin grain), w2 ER (reticular texture fading
away from the nucleus), w3 actin (cortex ring, stress fibres along the long axis, diffuse), w4 RNA (cytoplasm,
nucleus, point-like nucleoli), w5 mitochondria (short segments of points), w6 membrane (outline, cell-cell borders,
a Golgi cluster beside the nucleus). Each cell carries a 14-feature vector z (FEATURES; natural per-cell sd 1, mapped
to the rendering through exp(SCALE * z)). An siRNA is, per cell type, a penetrance p ~ Beta(2, 2.5) clipped to
[0.1, 0.9] and an effect vector of norm A = strength * 0.5 * exp(0.8 N(0, 1)) (capped at 4: heavy-tailed, most
weak, a few strong) along 0.75 * a direction shared by the cell types (2-3 features) + 0.66 * a cell-type-specific
one (1-2 features); a cell is affected with probability p and then gets z += effect * exp(N(0, 0.2)). Positive
controls: A = 4, p = 0.9, the same in every cell type. The negative control has no effect.

Batch model (one knob, --confound c, scales every per-plate term; c = 0 makes the plates of an experiment
identically distributed). Per experiment: channel gains exp(N(0, 0.2)), background U(1, 3) grey levels, a smooth
multiplicative illumination field per channel (exp of low-order cosines with N(0, 0.07) coefficients) times a
radial vignette, a drift of the morphology mean (N(0, 0.15) per feature), shot-noise conversion and read noise.
Per plate: a defocus blur whose sigma takes the levels FOCUS (0.3, 1.0, 1.7, 2.4 px at 512, +- 0.15) in a random
order per experiment (the four plates always differ visibly), times c, on top of the in-focus PSF (0.8 px); channel
gains exp(c * (0.12 * a part shared by plate p of every experiment, imaging order, + 0.22 * the plate's own part),
each N(0, 1)); channel offsets c * U(0, 4) grey levels; cell density exp(c * DENSITY level, random order). The
per-plate style is strong next to the phenotypes on purpose: a model can tell the plates (and so the siRNA groups)
apart by focus and colour balance alone. Per well: density exp(N(0, 0.1)) and channel gains exp(N(0, 0.03)). Per
pixel: shot + read noise, 8-bit quantisation.

Output is a pure function of the arguments (every draw comes from np.random.default_rng([seed, purpose, ids...])),
the same bytes for any --workers.

    python tests/foreign_confound.py OUT [--classes 120] [--train 2] [--test 1] [--size 512] [--missing 0.08]
                                         [--strength 1.0] [--confound 1.0] [--seed 41] [--workers 2]
    nice -n 10 python tests/foreign_confound.py /work/data/confound --workers 2    # the full default set

The default set: 3,068 sites (2,042 train, 1,026 test; 18,408 PNGs), 2.6 GB, 10 min wall with --workers 2 on the
2-core machine under a load of ~6 (322 CPU s: ~105 ms per 512 px site with its PNGs, ~60 ms without them).
"""
from __future__ import annotations

import argparse
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from foreign_layout import (NEGATIVE, POSITIVE, WELLS, experiments, pixel_stats, plate_layout,  # noqa: E402
                            write_layout_csvs)  # the plate layout and CSVs, not signal

F32 = np.float32
FEATURES = ("nucleus_size", "chromatin", "cell_size", "elongation", "er_spread", "stress_fibres", "cortex",
            "nucleoli", "mito_fragmentation", "mito_perinuclear", "golgi_dispersal", "membrane_ruffling",
            "rna_content", "mito_content")
K = len(FEATURES)
FX = {name: i for i, name in enumerate(FEATURES)}
# log-scale change of each rendering parameter per natural per-cell sd of its feature
SCALE = np.array([0.10, 0.35, 0.10, 0.30, 0.25, 0.40, 0.30, 0.30, 0.35, 0.30, 0.35, 0.35, 0.12, 0.12])

# per cell type (px at 512): cells per site, cell radius, elongation (axis ratio - 1), nucleus / cell radius,
# stress-fibre weight, share of lattice places left empty between colonies, aligned with a flow, mitochondria
CELL_TYPE = {
    "HEPG2": dict(cells=110, radius=19.0, elong=0.25, nucleus=0.52, fibres=0.3, colonies=0.45, aligned=False,
                  mito=16),
    "HUVEC": dict(cells=62, radius=27.0, elong=1.2, nucleus=0.36, fibres=1.0, colonies=0.0, aligned=True, mito=24),
    "RPE": dict(cells=72, radius=25.0, elong=0.3, nucleus=0.42, fibres=0.6, colonies=0.1, aligned=False, mito=24),
    "U2OS": dict(cells=42, radius=34.0, elong=0.5, nucleus=0.35, fibres=1.3, colonies=0.0, aligned=False, mito=40),
}
FOCUS = (0.3, 1.0, 1.7, 2.4)  # per-plate defocus sigma levels (px at 512) at confound 1
DENSITY = (-0.3, -0.1, 0.1, 0.3)  # per-plate log cell-density levels at confound 1
PSF = 0.8  # in-focus optical blur (px at 512)
# grey levels per unit of rendered signal, per channel (calibrated so channel means sit near RxRx1's global means)
CALIBRATION = np.array([34.0, 100.0, 18.0, 17.5, 21.0, 28.0], F32)

# purposes of the seeded generators
_LAYOUT, _PHENO, _EXP, _STYLE, _ORDER, _WELL, _SITE, _NOISE, _TEX, _IMAGING = 41, 42, 43, 44, 45, 46, 47, 48, 49, 50


def _rng(*ids) -> np.random.Generator:
    return np.random.default_rng([int(i) for i in ids])


# ----------------------------------------------------------------------------------------------- phenotypes
def _direction(r: np.random.Generator, n: int) -> np.ndarray:
    d = np.zeros(K)
    d[r.choice(K, n, replace=False)] = r.standard_normal(n)
    return d / np.linalg.norm(d)


@lru_cache(maxsize=None)
def phenotype(sirna: int, c_idx: int, seed: int, strength: float) -> tuple[float, tuple[float, ...]]:
    """(penetrance, effect on the feature vector z in natural sds) of an siRNA in cell type `c_idx`."""
    if sirna == NEGATIVE or strength <= 0:
        return 0.0, (0.0,) * K
    if sirna in POSITIVE:  # strong, nearly fully penetrant, the same in every cell type
        r = _rng(seed, _PHENO, sirna)
        return 0.9, tuple(float(x) for x in 4.0 * _direction(r, 3))
    rs = _rng(seed, _PHENO, sirna)  # shared by the cell types
    amp = strength * min(4.0, 0.5 * float(np.exp(0.8 * rs.standard_normal())))
    shared = _direction(rs, int(rs.integers(2, 4)))
    rc = _rng(seed, _PHENO, sirna, c_idx + 1)  # this cell type's own part
    own = _direction(rc, int(rc.integers(1, 3)))
    d = 0.75 * shared + 0.66 * own
    amp *= float(np.exp(rc.normal(0, 0.3)))
    pen = float(np.clip(rc.beta(2.0, 2.5), 0.1, 0.9))
    return pen, tuple(float(x) for x in amp * d / np.linalg.norm(d))


# ----------------------------------------------------------------------------------------------- batch effects
@lru_cache(maxsize=64)
def experiment_batch(seed: int, e_idx: int) -> dict:
    """Per-experiment acquisition: gains, background, illumination coefficients, noise, morphology drift."""
    r = _rng(seed, _EXP, e_idx)
    return dict(gain=np.exp(r.normal(0, 0.2, 6)).astype(F32), bg=r.uniform(1.0, 3.0, 6).astype(F32),
                field=r.normal(0, 0.07, (6, 3, 3)), vignette=float(r.uniform(0.1, 0.25)),
                conv=float(r.uniform(1.2, 3.0)), read=float(r.uniform(0.6, 1.2)), drift=r.normal(0, 0.15, K))


@lru_cache(maxsize=64)
def plate_style(seed: int, e_idx: int, plate: int, confound: float) -> dict:
    """Per-plate style, every term scaled by `confound`: focus sigma (px at 512), channel gains and offsets, density.
    Focus and density take the levels FOCUS / DENSITY in a random order per experiment; the gains have a part shared
    by plate `plate` of every experiment (imaging order) and a part of this plate's own."""
    order = _rng(seed, _ORDER, e_idx)
    focus_level, density_level = order.permutation(4)[plate - 1], order.permutation(4)[plate - 1]
    r = _rng(seed, _STYLE, e_idx, plate)
    imaging_order = _rng(seed, _IMAGING, plate).standard_normal(6)
    return dict(focus=confound * (FOCUS[focus_level] + float(r.uniform(-0.15, 0.15))),
                gain=np.exp(confound * (0.12 * imaging_order + 0.22 * r.standard_normal(6))).astype(F32),
                offset=(confound * r.uniform(0, 4, 6)).astype(F32),
                density=float(np.exp(confound * (DENSITY[density_level] + r.normal(0, 0.03)))))


@lru_cache(maxsize=2)
def illumination(seed: int, e_idx: int, size: int) -> np.ndarray:
    """(6, size, size) smooth multiplicative illumination of an experiment: per-channel low-order cosine fields in
    the log domain times a radial vignette shared by the channels."""
    b = experiment_batch(seed, e_idx)
    t = (np.arange(size) + 0.5) / size
    basis = np.stack([np.cos(np.pi * k * t) for k in range(3)], 1)  # (size, 3)
    log_field = np.stack([basis @ coef @ basis.T for coef in b["field"]])
    r2 = (t[:, None] - 0.5) ** 2 + (t[None, :] - 0.5) ** 2
    return (np.exp(log_field) * (1 - b["vignette"] * 2 * r2)[None]).astype(F32)


# ----------------------------------------------------------------------------------------------- cells
@lru_cache(maxsize=2)
def _textures(seed: int, size: int) -> np.ndarray:
    """(3, 2 size, 2 size) fixed unit-variance texture fields (fine grain, reticulum lines, medium mottling); each
    site reads a random window of them."""
    s = size / 512
    r = _rng(seed, _TEX, size)
    out = []
    for sigma in (0.9, 1.6, 4.0):
        f = gaussian_filter(r.standard_normal((2 * size, 2 * size)), max(sigma * s, 0.4))
        out.append((f - f.mean()) / f.std())
    out[1] = np.exp(-(out[1] / 0.5) ** 2)  # bright thin lines along the zero crossings: a network
    return np.stack(out).astype(F32)


def _centres(r: np.random.Generator, n: float, size: int, margin: float, colonies: float) -> np.ndarray:
    """About n centres per size x size field on a randomly rotated, jittered hexagonal lattice (thinned into
    colonies by a smooth random field when `colonies` > 0), covering the field plus `margin`."""
    side = size + 2 * margin
    per_area = n / (1 - colonies) / (size * size)
    d = np.sqrt(2 / (np.sqrt(3) * per_area))  # lattice spacing
    half = side * 0.75 + d
    m = int(half / d) + 1
    j, i = np.mgrid[-m:m + 1, -m:m + 1]
    x, y = (i + 0.5 * (j % 2)) * d, j * d * np.sqrt(3) / 2
    ang = r.uniform(0, np.pi)
    p = np.stack([x * np.cos(ang) - y * np.sin(ang), x * np.sin(ang) + y * np.cos(ang)], -1).reshape(-1, 2)
    p += size / 2 + r.normal(0, 0.2 * d, p.shape)
    p = p[(p >= -margin).all(1) & (p < size + margin).all(1)]
    p = p[r.uniform(size=len(p)) > 0.06]  # a few gaps everywhere
    if colonies > 0 and len(p):
        seeds = r.uniform(-margin, size + margin, (max(1, int(n / 10)), 2))
        d2 = ((p[:, None, :] - seeds[None]) ** 2).sum(-1)
        near = np.exp(-d2 / (2 * (1.6 * d) ** 2)).sum(1) + 0.15 * r.uniform(size=len(p))
        p = p[near >= np.quantile(near, colonies)]
    return p


def site_cells(size: int, seed: int, strength: float, confound: float, row: tuple, site: int) -> dict:
    """The cells of one site of a layout row (split, exp, e_idx, c_idx, ctype, plate, well, sirna, kind): centres,
    shapes, the feature matrix z (n, K), exp(SCALE * z) (`f`), which cells show the siRNA's phenotype (`affected`),
    and the site's generator `r`, which `render` goes on drawing from."""
    _split, _exp, e_idx, c_idx, ctype, plate, well, sirna, _kind = row
    ct = CELL_TYPE[ctype]
    s = size / 512
    eb, st = experiment_batch(seed, e_idx), plate_style(seed, e_idx, plate, confound)
    wr = _rng(seed, _WELL, e_idx, plate, WELLS.index(well))
    density = st["density"] * float(np.exp(wr.normal(0, 0.1)))
    r = _rng(seed, _SITE, e_idx, plate, WELLS.index(well), site)
    R0 = ct["radius"] * s
    xy = _centres(r, ct["cells"] * density, size, 1.3 * R0 * np.sqrt(1 + ct["elong"]), ct["colonies"])
    n = len(xy)
    pen, effect = phenotype(sirna, c_idx, seed, strength)
    affected = r.uniform(size=n) < pen
    z = r.standard_normal((n, K)) + eb["drift"]
    z += affected[:, None] * np.asarray(effect) * np.exp(r.normal(0, 0.2, (n, 1)))
    f = np.exp(SCALE * z)
    R = R0 * f[:, FX["cell_size"]]
    elong = ct["elong"] * f[:, FX["elongation"]]
    if ct["aligned"]:
        theta = r.uniform(0, np.pi) + r.normal(0, 0.35, n)
    else:
        theta = r.uniform(0, np.pi, n)
    return dict(x=xy[:, 0], y=xy[:, 1], a=R * np.sqrt(1 + elong), b=R / np.sqrt(1 + elong), theta=theta, z=z, f=f,
                affected=affected, penetrance=pen, ctype=ctype, r=r)


def _points_in_cells(r, cells, idx, lo, hi, power):
    """Points in the cells `idx` (one per entry) at normalised elliptic radius between lo and hi (per entry),
    concentrated towards lo by `power` > 1; returns image coordinates."""
    rho = lo + (hi - lo) * r.uniform(size=len(idx)) ** power
    phi = r.uniform(0, 2 * np.pi, len(idx))
    u, v = rho * cells["a"][idx] * np.cos(phi), rho * cells["b"][idx] * np.sin(phi)
    c, s = np.cos(cells["theta"][idx]), np.sin(cells["theta"][idx])
    return cells["x"][idx] + u * c - v * s, cells["y"][idx] + u * s + v * c


def render(size: int, seed: int, cells: dict) -> np.ndarray:
    """The noise-free, in-focus signal (6, size, size) float32 of a site's cells, before the PSF blur."""
    s = size / 512
    r = cells["r"]
    f = cells["f"]
    n = len(cells["x"])
    x, y, a, b, th = cells["x"], cells["y"], cells["a"], cells["b"], cells["theta"]
    ct = CELL_TYPE[cells["ctype"]]
    tex = _textures(seed, size)
    oy, ox = r.integers(0, size, 2)
    fine, net, mottle = tex[:, oy:oy + size, ox:ox + size]
    ruffle = 0.05 * f[:, FX["membrane_ruffling"]]

    # z-buffer: each pixel goes to the cell with the smallest (ruffled) normalised elliptic radius there
    D = np.full((size, size), 9.0, F32)
    U = np.zeros((size, size), F32)
    V = np.zeros((size, size), F32)
    L = np.full((size, size), n, np.int32)
    grid = np.arange(size, dtype=F32) + F32(0.5)
    cos_t, sin_t = np.cos(th), np.sin(th)
    for i in range(n):
        h = a[i] * (1.25 + 2 * ruffle[i]) + 1
        x0, x1 = max(int(x[i] - h), 0), min(int(x[i] + h) + 1, size)
        y0, y1 = max(int(y[i] - h), 0), min(int(y[i] + h) + 1, size)
        if x0 >= x1 or y0 >= y1:
            continue
        dx, dy = grid[x0:x1] - F32(x[i]), grid[y0:y1, None] - F32(y[i])
        u = dx * F32(cos_t[i]) + dy * F32(sin_t[i])
        v = dy * F32(cos_t[i]) - dx * F32(sin_t[i])
        rho = np.sqrt((u / F32(a[i])) ** 2 + (v / F32(b[i])) ** 2) * (1 + F32(ruffle[i]) * mottle[y0:y1, x0:x1])
        win = rho < D[y0:y1, x0:x1]
        np.copyto(D[y0:y1, x0:x1], rho, where=win)
        np.copyto(U[y0:y1, x0:x1], u, where=win)
        np.copyto(V[y0:y1, x0:x1], v, where=win)
        np.copyto(L[y0:y1, x0:x1], i, where=win)

    # per-cell rendering parameters, looked up per pixel through the label map (row n: background)
    Rm = np.sqrt(a * b)
    Rn = ct["nucleus"] * Rm * f[:, FX["nucleus_size"]]
    en = 1 + 0.3 * (a / b - 1)
    an, bn = Rn * np.sqrt(en), Rn / np.sqrt(en)
    nu, nv = r.uniform(-0.15, 0.15, n) * a, r.uniform(-0.1, 0.1, n) * b
    dna = np.where(r.uniform(size=n) < 0.25, 1.9, 1.0)  # G2 cells carry twice the DNA
    P = np.zeros((10, n + 1), F32)
    P[0, :n], P[1, :n], P[2, :n], P[3, :n] = nu, nv, 1 / an, 1 / bn
    P[4, :n] = dna * (ct["nucleus"] * ct["radius"] * s) ** 2 / (an * bn)  # fixed DNA: a small nucleus is brighter
    P[5, :n] = 0.35 * f[:, FX["chromatin"]]
    P[6, :n] = Rn / (0.35 * Rm * f[:, FX["er_spread"]])
    P[7, :n] = ct["fibres"] * f[:, FX["stress_fibres"]]
    P[8, :n] = r.uniform(0, 2 * np.pi, n)
    P[9, :n] = f[:, FX["cortex"]]
    G = np.take(P, L, axis=1)
    rn = np.sqrt(((U - G[0]) * G[2]) ** 2 + ((V - G[1]) * G[3]) ** 2)
    edge = F32(max(ct["radius"] * s, 1.0))
    body = np.clip((1 - D) * edge + F32(0.5), 0, 1)
    nuc = np.clip((1 - rn) * F32(max(ct["nucleus"] * ct["radius"] * s, 1.0)) + F32(0.5), 0, 1) * body
    cyto = body - nuc

    out = np.empty((6, size, size), F32)
    dome = np.sqrt(np.clip(1 - rn * rn, 0, 1))
    out[0] = nuc * (0.55 + 0.45 * dome) * np.maximum(1 + G[5] * fine, 0.1) * G[4]
    out[1] = cyto * np.exp(-np.maximum(rn - 1, 0) * G[6]) * (0.3 + net)
    # borders between touching cells: where the label changes inside both bodies
    inside = D < 1
    border = np.zeros((size, size), bool)
    hb = (L[:, 1:] != L[:, :-1]) & inside[:, 1:] & inside[:, :-1]
    vb = (L[1:] != L[:-1]) & inside[1:] & inside[:-1]
    border[:, 1:] |= hb
    border[:, :-1] |= hb
    border[1:] |= vb
    border[:-1] |= vb
    ring_w = F32(max(ct["radius"] * s / 1.5, 1.0))
    cortex = np.exp(-((D - F32(0.93)) * ring_w) ** 2) + 0.6 * border
    period = F32(2 * np.pi / max(6.0 * s, 2.2))
    stripes = (0.5 + 0.5 * np.cos(V * period + G[8] + 2 * mottle)) ** 6
    stripes *= np.clip((0.9 - D) * 4, 0, 1) * np.clip(0.7 + 0.5 * fine, 0, None)
    out[2] = cortex * G[9] + stripes * G[7] + 0.25 * body
    rna = np.append(f[:, FX["rna_content"]], 0).astype(F32)[L]
    out[3] = (0.8 * cyto + 0.3 * nuc) * (1 + 0.25 * mottle) * rna
    out[4] = 0.08 * cyto
    out[5] = np.exp(-((D - F32(0.98)) * F32(1.6) * ring_w) ** 2) * (1 + 3 * np.append(ruffle, 0)[L]) + 0.7 * border
    out[5] += 0.1 * cyto

    # point structures: nucleoli (w4), mitochondria (w5), Golgi (w6)
    pts_x, pts_y, pts_w, pts_c = [], [], [], []
    nl_size = f[:, FX["nucleoli"]]
    n_nl = np.clip(np.rint(3.5 / nl_size), 1, 8).astype(int)
    cell = np.repeat(np.arange(n), n_nl)
    nuclei = dict(x=x + nu * cos_t - nv * sin_t, y=y + nu * sin_t + nv * cos_t, a=an, b=bn, theta=th)
    nl_x, nl_y = _points_in_cells(r, nuclei, cell, np.zeros(len(cell)), np.full(len(cell), 0.6), 1.0)
    blob = np.repeat(np.arange(len(cell)), 6)  # each nucleolus a small cloud of 6 points
    spread = (0.12 * Rn * nl_size)[cell][blob]
    pts_x.append(nl_x[blob] + r.normal(0, 1, len(blob)) * spread)
    pts_y.append(nl_y[blob] + r.normal(0, 1, len(blob)) * spread)
    pts_w.append((1.2 * (ct["nucleus"] * ct["radius"] * s) ** 2 * f[:, FX["rna_content"]] / (6 * n_nl))[cell][blob])
    pts_c.append(np.full(len(blob), 3))

    frag = f[:, FX["mito_fragmentation"]]
    n_mito = np.maximum(1, np.rint(ct["mito"] * frag * (Rm / (ct["radius"] * s)) ** 2)).astype(int)
    cell = np.repeat(np.arange(n), n_mito)
    lo = (ct["nucleus"] * f[:, FX["nucleus_size"]])[cell] * 1.05
    mx, my = _points_in_cells(r, cells, cell, lo, np.full(len(cell), 0.92),
                              1.5 * f[:, FX["mito_perinuclear"]][cell])
    length = 7.0 * s / frag[cell] ** 2
    ang = r.uniform(0, np.pi, len(cell))
    steps = np.linspace(-0.5, 0.5, 5)
    seg_x = (mx[:, None] + np.cos(ang)[:, None] * length[:, None] * steps).ravel()
    seg_y = (my[:, None] + np.sin(ang)[:, None] * length[:, None] * steps).ravel()
    content = (Rm ** 2 * f[:, FX["mito_content"]] / (5 * n_mito))[cell]
    pts_x.append(seg_x)
    pts_y.append(seg_y)
    pts_w.append(np.repeat(0.5 * content, 5))
    pts_c.append(np.full(len(seg_x), 4))

    side = th + np.where(r.uniform(size=n) < 0.5, 0, np.pi)
    gx = x + nu * cos_t - nv * sin_t + 1.1 * Rn * np.cos(side)
    gy = y + nu * sin_t + nv * cos_t + 1.1 * Rn * np.sin(side)
    cell = np.repeat(np.arange(n), 12)
    gsd = (0.4 * Rn * f[:, FX["golgi_dispersal"]])[cell]
    pts_x.append(gx[cell] + r.normal(0, 1, len(cell)) * gsd)
    pts_y.append(gy[cell] + r.normal(0, 1, len(cell)) * gsd)
    pts_w.append(np.full(len(cell), 0.35 * (ct["radius"] * s) ** 2 / 12))
    pts_c.append(np.full(len(cell), 5))

    px, py = np.rint(np.concatenate(pts_x) - 0.5), np.rint(np.concatenate(pts_y) - 0.5)
    ch = np.concatenate(pts_c)
    ok = (px >= 0) & (px < size) & (py >= 0) & (py < size)
    flat = (ch[ok] * size + py[ok].astype(np.int64)) * size + px[ok].astype(np.int64)
    out += np.bincount(flat, np.concatenate(pts_w)[ok], minlength=6 * size * size).reshape(6, size, size
                                                                                           ).astype(F32)
    return out * CALIBRATION[:, None, None]


def acquire(signal: np.ndarray, size: int, seed: int, e_idx: int, style: dict, well_gain: np.ndarray,
            r: np.random.Generator) -> np.ndarray:
    """Microscope: PSF + the plate's defocus, background, illumination, gains, offsets, shot + read noise, 8 bits."""
    s = size / 512
    eb = experiment_batch(seed, e_idx)
    sigma = s * float(np.hypot(PSF, style["focus"]))
    img = gaussian_filter(signal, (0, sigma, sigma), truncate=3.0)
    img += eb["bg"][:, None, None]
    img *= illumination(seed, e_idx, size)
    img *= (eb["gain"] * style["gain"] * well_gain)[:, None, None]
    img += style["offset"][:, None, None]
    sd = np.maximum(img, 0)
    sd *= F32(1 / eb["conv"])
    sd += F32(eb["read"] ** 2)
    np.sqrt(sd, out=sd)
    sd *= r.standard_normal(img.shape, dtype=F32)
    img += sd
    np.rint(img, out=img)
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


# ----------------------------------------------------------------------------------------------- the set
def site_images(size: int, seed: int, strength: float, confound: float, row: tuple, site: int) -> np.ndarray:
    """The (6, size, size) uint8 images of one site of a layout row (split, exp, e_idx, c_idx, ctype, plate, well,
    sirna, kind)."""
    e_idx, plate, well = row[2], row[5], row[6]
    cells = site_cells(size, seed, strength, confound, row, site)
    signal = render(size, seed, cells)
    style = plate_style(seed, e_idx, plate, confound)
    well_gain = np.exp(_rng(seed, _WELL, e_idx, plate, WELLS.index(well), 1).normal(0, 0.03, 6)).astype(F32)
    return acquire(signal, size, seed, e_idx, style, well_gain, _rng(seed, _NOISE, e_idx, plate,
                                                                     WELLS.index(well), site))


def _work(task):
    out, size, seed, strength, confound, row = task
    split, exp, _e, _c, _t, plate, well, _s, _k = row
    folder = Path(out) / split / exp / f"Plate{plate}"
    stats = []
    for site in (1, 2):
        img = site_images(size, seed, strength, confound, row, site)
        for ch in range(6):
            Image.fromarray(img[ch]).save(folder / f"{well}_s{site}_w{ch + 1}.png", compress_level=1)
            stats.append([f"{exp}_{plate}_{well}", exp, plate, well, site, ch + 1, *pixel_stats(img[ch])])
    return stats


def generate(out, *, classes: int = 120, train: int = 2, test: int = 1, size: int = 512, missing: float = 0.08,
             strength: float = 1.0, confound: float = 1.0, seed: int = 41, workers: int = 2,
             progress: bool = True) -> Path:
    """Write the data set under `out` and return it as a Path."""
    if classes % 4 or classes <= 0 or classes > 1108:
        raise ValueError(f"classes={classes}: expected a positive multiple of 4 (4 plate groups), at most 1108")
    if size < 16:
        raise ValueError(f"size={size}: expected at least 16 px")
    if not 0 <= missing < 1:
        raise ValueError(f"missing={missing}: expected a probability in [0, 1)")
    if strength < 0 or confound < 0:
        raise ValueError(f"strength={strength}, confound={confound}: expected values >= 0")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _groups, wells = plate_layout(classes, experiments(train, test), missing, seed, _LAYOUT)
    for split, exp, _e, _c, _t, plate, *_ in wells:
        (out / split / exp / f"Plate{plate}").mkdir(parents=True, exist_ok=True)
    _textures(seed, size)  # computed once before the workers fork
    tasks = [(str(out), size, seed, float(strength), float(confound), w) for w in wells]
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(tasks), unit="well", desc="foreign_confound", mininterval=1.0)
        except ImportError:
            pass
    stats = []
    if workers > 1:
        import multiprocessing as mp
        with mp.get_context("fork").Pool(workers) as pool:
            for st in pool.imap(_work, tasks, chunksize=4):
                stats.append(st)
                if bar is not None:
                    bar.update()
    else:
        for t in tasks:
            stats.append(_work(t))
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    write_layout_csvs(out, wells, stats)
    return out


write = generate  # the name the other foreign generators use


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--classes", type=int, default=120, help="treatment siRNAs, a multiple of 4")
    p.add_argument("--train", type=int, default=2, help="train experiments per cell type")
    p.add_argument("--test", type=int, default=1, help="test experiments per cell type")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--missing", type=float, default=0.08)
    p.add_argument("--strength", type=float, default=1.0, help="scales the phenotype effect sizes")
    p.add_argument("--confound", type=float, default=1.0, help="scales the per-plate style; 0 disables it")
    p.add_argument("--seed", type=int, default=41)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    t0 = time.time()
    out = generate(Path(a.out), classes=a.classes, train=a.train, test=a.test, size=a.size, missing=a.missing,
                   strength=a.strength, confound=a.confound, seed=a.seed, workers=a.workers)
    print(f"written to {out} in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
