"""An RxRx1-layout data set written WITHOUT cellio: partially penetrant, per-cell discrete siRNA phenotypes.

Independent code and signal model (nothing from cellio or from the other foreign generators' signal code is
imported or copied; the CSV writer of tests/foreign_rxrx1.py and the plate layout of tests/foreign_layout.py are
the schema, shared). Kaggle layout
`{train,test}/{EXP}/Plate{p}/{well}_s{site}_w{ch}.png` (8-bit grey, size x size, 2 sites, 6 channels), the Kaggle
CSVs with their exact columns (train.csv, test.csv, train_controls.csv, test_controls.csv, pixel_stats.csv,
sample_submission.csv) plus a held-out test_truth.csv (id_code, sirna) for the test treatment wells.

Plate structure: treatments 0..classes-1 form 4 disjoint groups; each plate holds one group, each siRNA once, at
random wells (B02 is the negative control, sirna 1138; 3 positive controls 1108..1110 on every plate); experiment
rotation r (plate p holds group (p-1+r)%4): r in 0..2 for train experiments, r = 3 for test ones; treatment wells
go missing at random with probability `missing`.

Signal model: every site is a field of cells, each rendered in its own local box (cell-type-dependent count, size,
shape, clumping and alignment: HEPG2 many small clumped cells, HUVEC elongated and aligned, RPE medium, U2OS few
large flat ones), channels w1 nucleus with chromatin texture, w2 perinuclear reticular ER, w3 actin cortex + stress
fibres, w4 RNA (diffuse + nucleoli), w5 mitochondrial puncta/tubules, w6 membrane + polarised Golgi. An siRNA is a
discrete per-cell program: per (siRNA, cell type) a penetrance p ~ U(0.2, 0.6) * strength (the fraction of cells
that show it) and 2-3 motifs with signed magnitudes (U(0.6, 1) * strength) from a library of 12 (micronuclei /
nuclear fragmentation, nucleoli enlarged vs fragmented, chromatin condensed vs decondensed, mitochondria hyperfused
vs fragmented, stress fibres strong vs lost, ER vesicles vs collapse, Golgi dispersed vs compact, multinucleation,
cells enlarged vs rounded/shrunk, cytoplasmic RNA granules, membrane blebs, elongation vs rounding); about half of
a class's motifs are shared across cell types, the rest are specific to each cell type. Affected cells show their
motifs clearly, the others look like controls; every cell's integrated intensity per channel is fixed regardless
of its motifs (a condensed nucleus is brighter, not bigger), so per-channel site means carry little class signal.
Batch effects: per experiment and per plate channel gains (lognormal) and background offsets, morphology drift per
experiment, vignetting and illumination gradients, per-plate focus blur, per-well density and gain, shot + read
noise.

Output is a pure function of the arguments (every draw comes from np.random.default_rng([seed, purpose, ids...])),
the same bytes for any --workers.

    python tests/foreign_penetrance.py OUT [--classes 60] [--train 2] [--test 1] [--size 512] [--missing 0.08]
                                           [--strength 1.0] [--seed 21] [--workers 2]
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

# per-cell-type base morphology at 512 px: cell radius R, elongation (a/b = 1 + elong), nucleus radius / R, cells
# per site, fibre/cortex weight, clumping (share of cells in colonies), orientation spread around the site's flow
# (None = random), boundary roughness, mitochondrial tubules per cell
BASE = {
    "HEPG2": dict(R=15.0, elong=0.15, nuc=0.56, n=105, fibre=0.25, clump=0.85, align=None, rough=1.3, mito=22),
    "HUVEC": dict(R=21.0, elong=1.30, nuc=0.38, n=62, fibre=0.90, clump=0.10, align=0.45, rough=0.8, mito=30),
    "RPE": dict(R=21.0, elong=0.35, nuc=0.44, n=68, fibre=0.55, clump=0.30, align=1.0, rough=1.0, mito=32),
    "U2OS": dict(R=30.0, elong=0.45, nuc=0.36, n=40, fibre=1.10, clump=0.0, align=None, rough=1.0, mito=55),
}
TARGET = np.array([5.0, 8.0, 6.0, 6.5, 4.5, 5.5], F32)  # mean cell signal per channel at nominal density
SPLAT_SIGMA = {0: 1.4, 3: 0.9, 4: 0.8, 5: 1.0}  # point-rendered structures (px at 512): micronuclei, granules,
#                                                  mitochondria, Golgi
MOTIFS = ("micronuclei", "nucleoli", "chromatin", "mito", "fibres", "er", "golgi", "multinucleate", "cell_size",
          "rna_granules", "blebs", "elongation")
SIGNED = {"nucleoli", "chromatin", "mito", "fibres", "er", "golgi", "cell_size", "elongation"}

# purposes for the seeded generators
_LAYOUT, _PHENO, _EXP, _PLATE, _WELL, _SITE, _TEX = 31, 32, 33, 34, 35, 36, 37


def _rng(*ids) -> np.random.Generator:
    return np.random.default_rng([int(i) for i in ids])


# ----------------------------------------------------------------------------------------------- phenotypes
def _draw_motif(r: np.random.Generator, k: int, scale: float) -> tuple:
    sign = (1.0 if r.uniform() < 0.5 else -1.0) if MOTIFS[k] in SIGNED else 1.0
    return MOTIFS[k], sign * r.uniform(0.6, 1.0) * scale


@lru_cache(maxsize=None)
def phenotype(sirna: int, c_idx: int, seed: int, strength: float) -> tuple:
    """(penetrance, ((motif, signed magnitude), ...)) of an siRNA in a cell type; the negative control has none."""
    if sirna == NEGATIVE or strength <= 0:
        return 0.0, ()
    if sirna in POSITIVE:  # strong, fully shared, highly penetrant
        r = _rng(seed, _PHENO, sirna)
        ks = r.choice(len(MOTIFS), 2, replace=False)
        return 0.8, tuple(_draw_motif(r, int(k), 1.25) for k in ks)
    rs = _rng(seed, _PHENO, sirna)  # the part shared by all cell types
    n = int(rs.integers(2, 4))
    n_shared = 1 if n == 2 else int(rs.integers(1, 3))
    order = rs.permutation(len(MOTIFS))
    shared = [_draw_motif(rs, int(k), 1.0) for k in order[:n_shared]]
    rc = _rng(seed, _PHENO, sirna, c_idx + 1)  # this cell type's own version
    shared = [(name, mag * float(np.exp(rc.normal(0, 0.15)))) for name, mag in shared]
    specific = [_draw_motif(rc, int(k), 1.0) for k in rc.choice(order[n_shared:], n - n_shared, replace=False)]
    p = rc.uniform(0.2, 0.6)
    return min(0.95, p * strength), tuple((name, mag * strength) for name, mag in shared + specific)


# ----------------------------------------------------------------------------------------------- batch effects
@lru_cache(maxsize=64)
def batch(seed: int, e_idx: int, plate: int) -> dict:
    re = _rng(seed, _EXP, e_idx)
    exp_gain = np.exp(re.normal(0, 0.2, 6))
    exp_bg = re.uniform(1.0, 3.5, 6)
    drift = dict(size=float(np.exp(re.normal(0, 0.07))), elong=float(re.normal(0, 0.12)),
                 nuc=float(np.exp(re.normal(0, 0.05))), fibre=float(np.exp(re.normal(0, 0.2))),
                 mito=float(np.exp(re.normal(0, 0.15))), density=float(np.exp(re.normal(0, 0.12))))
    grad_dir, grad = re.uniform(0, 2 * np.pi), re.uniform(0.0, 0.25)
    conv = float(np.exp(re.normal(np.log(1.5), 0.3)))  # photoelectrons per grey level (shot noise)
    read = float(re.uniform(0.5, 1.0))
    rp = _rng(seed, _PLATE, e_idx, plate)
    return dict(gain=(exp_gain * np.exp(rp.normal(0, 0.1, 6))).astype(F32),
                bg=(exp_bg * np.exp(rp.normal(0, 0.1, 6))).astype(F32),
                vignette=float(rp.uniform(0.1, 0.4)), grad_dir=float(grad_dir + rp.normal(0, 0.3)),
                grad=float(grad * np.exp(rp.normal(0, 0.2))), focus=float(rp.uniform(0.0, 1.3)),
                drift=drift, conv=conv, read=read)


@lru_cache(maxsize=4)
def _illumination(size: int, vignette: float, grad_dir: float, grad: float) -> np.ndarray:
    c = (np.arange(size, dtype=F32) + 0.5) / size * 2 - 1
    x, y = c[None, :], c[:, None]
    return ((1 - vignette * (x * x + y * y) / 2) * (1 + grad * (np.cos(grad_dir) * x + np.sin(grad_dir) * y))
            ).astype(F32)


# ----------------------------------------------------------------------------------------------- rendering
@lru_cache(maxsize=2)
def _textures(seed: int, size: int) -> tuple:
    """Fixed texture fields (chromatin grain, medium-scale modulation, ER network) that cells sample windows of."""
    s = size / 512
    T = max(256, 2 * size)
    r = _rng(seed, _TEX, size)

    def field(sigma):
        f = gaussian_filter(r.standard_normal((T, T), dtype=F32), max(sigma * s, 0.5))
        return (f - f.mean()) / f.std()

    fine, med, net = field(0.8), field(3.0), field(1.8)
    ret = np.exp(-(net / 0.45) ** 2)  # thin bright lines along the zero crossings: a reticular network
    return T, fine.astype(F32), med.astype(F32), ret.astype(F32)


def _frame(dx, dy, a, b, ct, st, harm=()):
    """Normalised elliptic radius (1 on the boundary) of a box, with an angular boundary modulation."""
    U = dx[None, :] * ct + dy[:, None] * st
    V = dy[:, None] * ct - dx[None, :] * st
    u, v = U / a, V / b
    rr = np.sqrt(u * u + v * v)
    if harm:
        phi = np.arctan2(v, u)
        rb = 1.0
        for k, amp, ph in harm:
            rb = rb + amp * np.cos(k * phi + ph)
        rr = rr / rb
    return rr


def _norm(x: np.ndarray, total: float) -> np.ndarray:
    sm = float(x.sum())
    return x * F32(total / sm) if sm > 0 else x


def _cyto_points(r, n, a, b, ct, st, lo, hi, bias=1.0):
    """n points (relative to the cell centre) between normalised radii lo and hi, denser near lo when bias > 1."""
    phi = r.uniform(0, 2 * np.pi, n)
    rho = lo + (hi - lo) * r.uniform(0, 1, n) ** bias
    u, v = rho * a * np.cos(phi), rho * b * np.sin(phi)
    return u * ct - v * st, u * st + v * ct


def _cell(r, cx, cy, base, drift, s, motifs, I, tex, flow):
    """Render one cell: six channel patches (box offset x0, y0) and point structures [(channel, x, y, w)]."""
    T, fine_t, med_t, ret_t = tex
    q = max(s, 0.35)  # edge scale in px, floored at low resolution
    m = dict(motifs)
    g = m.get
    R = base["R"] * s * drift["size"] * np.exp(r.normal(0, 0.12))
    elong = max(0.0, base["elong"] * np.exp(r.normal(0, 0.35)) + drift["elong"])
    nucf = base["nuc"] * drift["nuc"] * np.exp(r.normal(0, 0.08))
    fibre = base["fibre"] * drift["fibre"] * np.exp(r.normal(0, 0.3))
    theta = r.uniform(0, np.pi) if base["align"] is None else flow + r.normal(0, base["align"])
    amps = r.normal(0, 1, 3) * np.array([0.07, 0.05, 0.03]) * base["rough"]
    phs = r.uniform(0, 2 * np.pi, 3)
    dna = 1.8 if r.uniform() < 0.25 else 1.0  # G2 cells carry twice the DNA
    n_nl = int(r.integers(2, 5))
    nnuc, nuc_r, tc, lobe, micro = 1, 1.0, 0.35, 0.0, 0
    rl_f, nl_frac, er_l, vesicles, gran, blebs = 0.16, 0.35, 0.35, 0, 0.0, 0
    mito_L, mito_nt, golgi_sd, golgi_disp, sharp = 4, 1.0, 0.3, 0.0, 4

    if x := g("cell_size"):
        if x > 0:  # enlarged, spread
            R *= 1 + 0.45 * x
            fibre *= 1 + 0.3 * x
        else:  # rounded and shrunk: nucleus keeps its size, no fibres, smooth outline
            f = 1 / (1 + 0.45 * -x)
            R *= f
            nucf = min(0.85, nucf / f ** 0.7)
            elong *= np.exp(-1.5 * -x)
            amps = amps * f
            fibre *= np.exp(-1.5 * -x)
    if x := g("elongation"):
        elong = elong + 0.9 * x if x > 0 else elong * np.exp(-2 * -x)
    if x := g("multinucleate"):
        nnuc = 2 + int(r.uniform() < 0.4 * x)
        R *= 1 + 0.2 * x
        dna *= 1.3
    if x := g("chromatin"):
        if x > 0:  # condensed: small bright grainy nucleus
            nuc_r, tc = 1 / (1 + 0.4 * x), tc * (1 + x)
        else:  # decondensed: large pale smooth nucleus
            nuc_r, tc = 1 + 0.22 * -x, tc / (1 + 1.5 * -x)
    if x := g("micronuclei"):
        micro, lobe = 2 + int(r.poisson(2 * x)), 0.12 * x
    if x := g("nucleoli"):
        if x > 0:  # few enlarged nucleoli
            n_nl, rl_f, nl_frac = int(r.integers(1, 3)), rl_f * (1 + 0.9 * x), min(0.7, 0.35 + 0.2 * x)
        else:  # many small ones
            n_nl, rl_f = int(r.integers(6, 10)), rl_f / (1 + 0.6 * -x)
    if x := g("mito"):
        if x > 0:  # hyperfused: few long tubules
            mito_L, mito_nt = int(round(4 * (1 + 2.5 * x))), 1 / (1 + 2 * x)
        else:  # fragmented: many isolated puncta
            mito_L, mito_nt = 1, 2.5 * (1 + 0.5 * -x)
    if x := g("fibres"):
        if x > 0:
            fibre, sharp = fibre * (1 + 2.5 * x), 6
        else:
            fibre *= np.exp(-3 * -x)
    if x := g("er"):
        if x > 0:  # swollen ER: ring-shaped vesicles
            vesicles = 3 + int(r.poisson(5 * x))
        else:  # collapsed onto the nucleus
            er_l /= 1 + 2 * -x
    if x := g("golgi"):
        if x > 0:
            golgi_disp = min(1.0, 0.5 + 0.5 * x)
        else:
            golgi_sd /= 1 + 2 * -x
    if x := g("rna_granules"):
        gran = min(0.5, 0.3 * x)
    if x := g("blebs"):
        blebs = 3 + int(r.poisson(3 * x))

    a, b = R * np.sqrt(1 + elong), R / np.sqrt(1 + elong)
    ct, st = np.cos(theta), np.sin(theta)
    harm = tuple(zip((2, 3, 5), amps, phs))
    H = int(a * (1 + np.abs(amps).sum()) * 1.15 + (0.2 * R if blebs else 0) + 4 * q)
    H = min(H, T // 2 - 2)
    w = 2 * H + 1
    x0, y0 = int(np.floor(cx)) - H, int(np.floor(cy)) - H
    dx = np.arange(x0, x0 + w, dtype=F32) - F32(cx)
    dy = np.arange(y0, y0 + w, dtype=F32) - F32(cy)
    rho = _frame(dx, dy, a, b, ct, st, harm)
    body = np.clip((1 - rho) * F32(R / (1.2 * q)) + 0.5, 0, 1)

    # nuclei
    Rn = nucf * R * nuc_r * (0.78 if nnuc > 1 else 1.0)
    side = theta + (np.pi if r.uniform() < 0.5 else 0.0)
    nuclei = []
    for j in range(nnuc):
        if nnuc == 1:
            off, ang = 0.15 * R * r.uniform(), side + r.normal(0, 0.4)
        else:
            off, ang = 0.42 * a * (1 + r.normal(0, 0.1)), theta + 2 * np.pi * j / nnuc + r.normal(0, 0.3)
        en = 0.1 + 0.3 * min(elong, 1.5) * np.exp(r.normal(0, 0.3))
        tn = theta + r.normal(0, 0.25)
        hn = ((3, r.normal(0, 0.03), r.uniform(0, 6.3)),)
        if lobe:
            hn = hn + ((4, lobe * r.uniform(0.5, 1.0), r.uniform(0, 6.3)), (5, lobe, r.uniform(0, 6.3)))
        nuclei.append((off * np.cos(ang), off * np.sin(ang), Rn * np.sqrt(1 + en), Rn / np.sqrt(1 + en), tn, hn))
    rn = None
    for nx, ny, an, bn, tn, hn in nuclei:
        rj = _frame(dx - F32(nx), dy - F32(ny), an, bn, np.cos(tn), np.sin(tn), hn)
        rn = rj if rn is None else np.minimum(rn, rj)
    nucm = np.clip((1 - rn) * F32(Rn / (0.9 * q)) + 0.5, 0, 1)
    dome = np.sqrt(np.clip(1 - rn * rn, 0, 1))

    ox, oy = r.integers(0, T - w, 2)
    fine, med, ret = (t[oy:oy + w, ox:ox + w] for t in (fine_t, med_t, ret_t))
    pts = []

    # blebs: small round protrusions on the outline, bright rims in membrane and cortex
    bleb_ring = None
    if blebs:
        rbl = max(0.13 * R, 1.2 * q)
        bleb_ring = np.zeros((w, w), F32)
        for phi in r.uniform(0, 2 * np.pi, blebs):
            u, v = a * np.cos(phi), b * np.sin(phi)
            px, py = u * ct - v * st, u * st + v * ct
            d = np.sqrt((dx[None, :] - F32(px)) ** 2 + (dy[:, None] - F32(py)) ** 2)
            bleb_ring += np.exp(-((d - F32(rbl)) / F32(0.8 * q)) ** 2)
            body = np.maximum(body, np.clip((F32(rbl) - d) / F32(q) + 0.5, 0, 1))

    out = np.empty((6, w, w), F32)
    # w1: nucleus with chromatin grain (+ micronuclei as points)
    micro_frac = min(0.3, 0.06 * micro)
    out[0] = _norm(nucm * (0.5 + 0.5 * dome) * np.maximum(1 + F32(tc) * fine, 0.05), I[0] * dna * (1 - micro_frac))
    if micro:
        ang = r.uniform(0, 2 * np.pi, micro)
        d = Rn * r.uniform(1.15, 1.8, micro)
        pts.append((0, cx + nuclei[0][0] + d * np.cos(ang), cy + nuclei[0][1] + d * np.sin(ang),
                    np.full(micro, I[0] * dna * micro_frac / micro)))
    # w2: ER, reticular, decaying away from the nuclear envelope (+ swollen vesicles)
    cyto = body * (1 - nucm)
    dist = np.maximum(rn - 1, 0) * F32(Rn)
    er = cyto * np.exp(-dist / F32(er_l * R)) * (0.3 + ret)
    ves_frac = 0.4 if vesicles else 0.0
    out[1] = _norm(er, I[1] * (1 - ves_frac))
    if vesicles:
        rv = max(0.11 * R, 1.0)
        vx, vy = _cyto_points(r, vesicles, a, b, ct, st, nucf * 1.3, 0.8)
        ring = np.zeros((w, w), F32)
        for px, py in zip(vx, vy):
            d = np.sqrt((dx[None, :] - F32(px)) ** 2 + (dy[:, None] - F32(py)) ** 2)
            ring += np.exp(-((d - F32(rv)) / F32(0.7 * q)) ** 2)
        out[1] += _norm(ring * body, I[1] * ves_frac)
    # w3: actin cortex + oriented stress fibres + diffuse
    cortex = np.exp(-((rho - 0.93) * F32(R / (1.3 * q))) ** 2)
    if bleb_ring is not None:
        cortex = cortex + bleb_ring
    tf = theta + r.normal(0, 0.15)
    qf = dy[:, None] * F32(np.cos(tf)) - dx[None, :] * F32(np.sin(tf))
    P = max(5.5 * s, 2.2)
    stripes = (0.5 + 0.5 * np.cos(qf * F32(2 * np.pi / P) + F32(r.uniform(0, 6.3)) + 1.2 * med)) ** sharp
    stripes *= np.clip((0.92 - rho) * 4, 0, 1) * np.maximum(0.6 + 0.4 * fine, 0)
    wc, wf, wd = 1.0, fibre, 0.35
    tot = wc + wf + wd
    out[2] = (_norm(cortex, I[2] * wc / tot) + _norm(stripes, I[2] * wf / tot) + _norm(body, I[2] * wd / tot))
    # w4: RNA, diffuse cytoplasm + nucleoli (+ cytoplasmic granules as points)
    nl = np.zeros((w, w), F32)
    for j in range(n_nl):
        nx, ny = nuclei[j % nnuc][:2]
        rad, ang = 0.5 * Rn * np.sqrt(r.uniform()), r.uniform(0, 2 * np.pi)
        rl = max(rl_f * Rn, 0.6 * q)
        d2 = (dx[None, :] - F32(nx + rad * np.cos(ang))) ** 2 + (dy[:, None] - F32(ny + rad * np.sin(ang))) ** 2
        nl += np.exp(-d2 / F32(2 * rl * rl))
    out[3] = (_norm(body * (1 - 0.55 * nucm) * np.maximum(1 + 0.3 * med, 0), I[3] * (1 - nl_frac - gran))
              + _norm(nl * nucm, I[3] * nl_frac))
    if gran:
        ng = 10 + int(r.poisson(20 * gran))
        gx, gy = _cyto_points(r, ng, a, b, ct, st, nucf * 1.1, 0.9)
        pts.append((3, cx + gx, cy + gy, np.full(ng, I[3] * gran / ng)))
    # w5: mitochondria, random-walk tubules seeded near the nucleus (points only)
    out[4] = 0
    nt = max(1, int(round(base["mito"] * drift["mito"] * mito_nt * (R / (base["R"] * s)) ** 2)))
    sx, sy = _cyto_points(r, nt, a, b, ct, st, nucf * 0.9, 0.92, bias=1.6)
    ang = r.uniform(0, 2 * np.pi, (nt, 1)) + np.cumsum(r.normal(0, 0.35, (nt, mito_L)), axis=1)
    step = max(1.1 * s, 0.5)
    mx = sx[:, None] + np.cumsum(np.cos(ang), axis=1) * step
    my = sy[:, None] + np.cumsum(np.sin(ang), axis=1) * step
    pts.append((4, cx + mx.ravel(), cy + my.ravel(), np.full(mx.size, I[4] / mx.size)))
    # w6: thin membrane + a polarised Golgi next to the nucleus (puncta)
    memb = np.exp(-((rho - 0.98) * F32(R / (0.9 * q))) ** 2)
    if bleb_ring is not None:
        memb = memb + bleb_ring
    out[5] = _norm(memb, I[5] * 0.55)
    ngp = 24
    psi = side + np.pi + r.normal(0, 0.5)
    gx0, gy0 = nuclei[0][0] + 1.15 * Rn * np.cos(psi), nuclei[0][1] + 1.15 * Rn * np.sin(psi)
    along, across = r.normal(0, 1.4 * golgi_sd * Rn, ngp), r.normal(0, 0.5 * golgi_sd * Rn, ngp)
    gx = gx0 - along * np.sin(psi) + across * np.cos(psi)  # a crescent-like cluster along the nuclear edge
    gy = gy0 + along * np.cos(psi) + across * np.sin(psi)
    if golgi_disp:
        k = int(round(golgi_disp * ngp))
        ex, ey = _cyto_points(r, k, a, b, ct, st, nucf * 1.1, 0.9)
        gx[:k], gy[:k] = ex, ey
    pts.append((5, cx + gx, cy + gy, np.full(ngp, I[5] * 0.45 / ngp)))
    return x0, y0, out, pts


def _positions(r, n: int, size: int, R: float, clump: float) -> np.ndarray:
    """Cell centres: a share `clump` in colonies, the rest uniform, then pushed apart to a minimum spacing."""
    pos = r.uniform(-0.5 * R, size + 0.5 * R, (n, 2))
    k = max(1, int(round(n / 8)))
    centres = r.uniform(0, size, (k, 2))
    inc = r.uniform(size=n) < clump
    which = r.integers(0, k, n)
    jitter = r.normal(0, 2.2 * R, (n, 2))
    pos[inc] = centres[which[inc]] + jitter[inc]
    dmin = (1.25 if clump > 0.5 else 1.55) * R
    for _ in range(6):
        d = pos[:, None, :] - pos[None, :, :]
        dist = np.sqrt((d * d).sum(-1)) + np.eye(n) * 1e9
        push = np.clip(dmin - dist, 0, None) / dist
        pos += 0.5 * (d * push[..., None]).sum(1)
    return pos


def render_site(size: int, ctype: str, pheno: tuple, b: dict, density: float, r: np.random.Generator):
    """The noise-free signal (6, size, size) of one site plus its point structures."""
    s = size / 512
    base = BASE[ctype]
    drift = b["drift"]
    tex = _textures(b["seed"], size)
    n = int(r.poisson(base["n"] * drift["density"] * density))
    pos = _positions(r, n, size, base["R"] * s, base["clump"])
    flow = r.uniform(0, np.pi)
    p, motifs = pheno
    affected = r.uniform(size=n) < p
    bright = np.exp(r.normal(0, 0.15, (n, 1)) + r.normal(0, 0.12, (n, 6)))  # per cell, per cell and channel
    I = TARGET * size * size / base["n"] * bright
    canvas = np.zeros((6, size, size), F32)
    pts = {ch: [] for ch in SPLAT_SIGMA}
    for i in range(n):
        cm = tuple((k, v * float(np.exp(r.normal(0, 0.2)))) for k, v in motifs) if affected[i] else ()
        x0, y0, patch, cpts = _cell(r, pos[i, 0], pos[i, 1], base, drift, s, cm, I[i], tex, flow)
        h = patch.shape[1]
        xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + h, size), min(y0 + h, size)
        if xa < xb and ya < yb:
            canvas[:, ya:yb, xa:xb] += patch[:, ya - y0:yb - y0, xa - x0:xb - x0]
        for ch, xs, ys, ws in cpts:
            pts[ch].append((xs, ys, ws))
    for ch, lst in pts.items():
        if lst:
            xs, ys, ws = (np.concatenate(v) for v in zip(*lst))
            canvas[ch] += gaussian_filter(_splat(xs, ys, ws, size), max(SPLAT_SIGMA[ch] * s, 0.5))
    return canvas


def _splat(xs, ys, ws, size):
    """Bilinear deposit of weighted points onto a size x size image."""
    xs, ys = xs - 0.5, ys - 0.5
    ix, iy = np.floor(xs).astype(np.int64), np.floor(ys).astype(np.int64)
    fx, fy = xs - ix, ys - iy
    idx, wt = [], []
    for ddx, ddy, ww in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        jx, jy = ix + ddx, iy + ddy
        ok = (jx >= 0) & (jx < size) & (jy >= 0) & (jy < size)
        idx.append(jy[ok] * size + jx[ok])
        wt.append((ws * ww)[ok])
    img = np.bincount(np.concatenate(idx), np.concatenate(wt), minlength=size * size)
    return img.reshape(size, size).astype(F32)


def acquire(canvas: np.ndarray, size: int, b: dict, well_gain: np.ndarray, r: np.random.Generator) -> np.ndarray:
    """Microscope: focus blur, background, illumination, gains, shot + read noise, 8-bit quantisation."""
    s = size / 512
    field = _illumination(size, b["vignette"], b["grad_dir"], b["grad"])
    out = np.empty((6, size, size), np.uint8)
    for ch in range(6):
        img = canvas[ch]
        if b["focus"] * s > 0.3:
            img = gaussian_filter(img, b["focus"] * s)
        sig = (img + b["bg"][ch]) * field * F32(b["gain"][ch] * well_gain[ch])
        sd = np.sqrt(np.maximum(sig, 0) / F32(b["conv"]) + F32(b["read"] ** 2))
        sig += sd * r.standard_normal((size, size), dtype=F32)
        np.rint(sig, out=sig)
        out[ch] = np.clip(sig, 0, 255)
    return out


# ----------------------------------------------------------------------------------------------- the set
def site_images(size: int, seed: int, strength: float, split_row: tuple, site: int) -> np.ndarray:
    """The (6, size, size) uint8 images of one site of a layout row (split, exp, e_idx, c_idx, ctype, plate, well,
    sirna, kind)."""
    _split, _exp, e_idx, c_idx, ctype, plate, well, sirna, _kind = split_row
    b = dict(batch(seed, e_idx, plate), seed=seed)
    wr = _rng(seed, _WELL, e_idx, plate, WELLS.index(well))
    density = float(np.exp(wr.normal(0, 0.2)))  # seeding varies from well to well
    well_gain = np.exp(wr.normal(0, 0.04, 6))
    r = _rng(seed, _SITE, e_idx, plate, WELLS.index(well), site)
    canvas = render_site(size, ctype, phenotype(sirna, c_idx, seed, strength), b, density, r)
    return acquire(canvas, size, b, well_gain, r)


def _work(task):
    out, size, seed, strength, row = task
    split, exp, _e, _c, _t, plate, well, _s, _k = row
    folder = Path(out) / split / exp / f"Plate{plate}"
    stats = []
    for site in (1, 2):
        img = site_images(size, seed, strength, row, site)
        for ch in range(6):
            Image.fromarray(img[ch]).save(folder / f"{well}_s{site}_w{ch + 1}.png", compress_level=1)
            stats.append([f"{exp}_{plate}_{well}", exp, plate, well, site, ch + 1, *pixel_stats(img[ch])])
    return stats


def generate(out, *, classes: int = 60, train: int = 2, test: int = 1, size: int = 512, missing: float = 0.08,
             strength: float = 1.0, seed: int = 21, workers: int = 2, progress: bool = True) -> Path:
    """Write the data set under `out` and return it as a Path."""
    if classes % 4 or classes <= 0:
        raise ValueError(f"classes={classes}: must be a positive multiple of 4 (4 plate groups)")
    if classes > 1108:
        raise ValueError("classes must be <= 1108 (1108.. are control siRNAs)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _groups, wells = plate_layout(classes, experiments(train, test), missing, seed, _LAYOUT)
    for split, exp, _e, _c, _t, plate, *_ in wells:
        (out / split / exp / f"Plate{plate}").mkdir(parents=True, exist_ok=True)
    _textures(seed, size)  # computed once before the workers fork
    tasks = [(str(out), size, seed, float(strength), w) for w in wells]
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(tasks), unit="well", desc="foreign_penetrance", mininterval=1.0)
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
    p.add_argument("--classes", type=int, default=60)
    p.add_argument("--train", type=int, default=2, help="train experiments per cell type")
    p.add_argument("--test", type=int, default=1, help="test experiments per cell type")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--missing", type=float, default=0.08)
    p.add_argument("--strength", type=float, default=1.0, help="scales penetrance and motif magnitudes")
    p.add_argument("--seed", type=int, default=21)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    t0 = time.time()
    out = generate(Path(a.out), classes=a.classes, train=a.train, test=a.test, size=a.size, missing=a.missing,
                   strength=a.strength, seed=a.seed, workers=a.workers)
    print(f"written to {out} in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
