"""A harder RxRx1-layout data set written WITHOUT cellio: subtle, cell-type-specific siRNA phenotypes.

Independent code and signal model (nothing from cellio is imported or copied). Kaggle layout
`{train,test}/{EXP}/Plate{p}/{well}_s{site}_w{ch}.png` (8-bit grey, size x size, 2 sites, 6 channels), the Kaggle
CSVs with their exact columns (train.csv, test.csv, train_controls.csv, test_controls.csv, pixel_stats.csv,
sample_submission.csv) plus a held-out test_truth.csv (id_code, sirna) for the test treatment wells.

Plate structure: treatments 0..classes-1 form 4 disjoint groups; each plate holds one group, each siRNA once, at
random wells (B02 is the negative control, sirna 1138; 3 positive controls 1108..1110 on every plate); experiment
rotation r (plate p holds group (p-1+r)%4): r in 0..2 for train experiments, r = 3 for test ones; treatment wells
go missing at random with probability `missing`.

Signal model: every site is a field of rendered cells (each in its own local box) with per-channel structure:
w1 nuclei with chromatin texture and cell-cycle-like DNA content, w2 perinuclear ER with reticular texture, w3 actin
cortex plus oriented stress fibres, w4 RNA (diffuse + nucleoli), w5 mitochondrial puncta/tubules, w6 membrane ring
plus a polarised Golgi. Each cell draws a morphology vector (16 standardized parameters, per-cell sd 1); an siRNA
shifts its mean by a small amount (STRENGTH * (sqrt(.4) * shared + sqrt(.6) * cell-type-specific), each N(0, 1)),
so a class is visible only by averaging over many cells. Per-cell integrated intensities do not depend on the
class (a larger nucleus is dimmer, not brighter), so per-channel means carry next to no class signal.
Batch effects: per experiment and per plate channel gains/offsets, morphology drift, vignetting and gradients,
background, shot + read noise, per-plate blur; per-cell-type base morphology (size, density, elongation, clumping).

Output is a pure function of the arguments (every draw comes from np.random.default_rng([seed, purpose, ids...])),
the same bytes for any --workers.

    python tests/foreign_subtle.py OUT [--classes 60] [--train 2] [--test 1] [--size 512] [--missing 0.08]
                                       [--seed 5] [--workers 2]
"""
from __future__ import annotations

import argparse
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.special import expit

from foreign_layout import (CELL_TYPES, NEGATIVE, POSITIVE, WELLS, experiments, pixel_stats, plate_layout,
                            write_layout_csvs)  # the plate layout, not signal

CAP = 0.5  # largest physical shift of one parameter (log units), approached softly
STRENGTH = 4.5  # size of an siRNA's mean shift, in units of the per-cell standard deviation (calibrated)

# standardized morphology parameters and the physical (log) scale of one per-cell standard deviation
PARAMS = ("cell_size", "cell_elong", "nuc_size", "nuc_elong", "nuc_texture", "nuc_grain", "er_spread", "er_texture",
          "fibre_strength", "fibre_coherence", "nucleoli_count", "nucleoli_size", "mito_count", "mito_size",
          "membrane_width", "golgi_size", "density", "rna_nuclear", "er_rim", "golgi_frac", "mito_perinuclear")
P = len(PARAMS)
IX = {p: i for i, p in enumerate(PARAMS)}
SCALE = np.array([0.25, 0.44, 0.20, 0.50, 0.50, 1.25, 0.44, 0.50, 0.56, 1.00, 0.50, 0.38, 0.44, 0.44, 0.50, 0.50,
                  0.08, 0.50, 0.50, 0.50, 0.40], np.float32)

# per-cell-type base morphology (at 512 px): cell radius, elongation-1, nucleus/cell radius, cells per site,
# fibre/cortex ratio, fibre coherence (logit), clumping (0 = even, 1 = clustered colonies)
BASE = {
    "HEPG2": dict(R=17.0, elong=0.20, nuc=0.56, n=100, fibre=0.25, coh=-0.5, clump=0.8, er=0.30),
    "HUVEC": dict(R=24.0, elong=1.10, nuc=0.40, n=65, fibre=0.90, coh=1.2, clump=0.1, er=0.38),
    "RPE": dict(R=22.0, elong=0.30, nuc=0.44, n=75, fibre=0.55, coh=0.3, clump=0.3, er=0.34),
    "U2OS": dict(R=31.0, elong=0.45, nuc=0.38, n=45, fibre=1.20, coh=0.6, clump=0.0, er=0.45),
}
# mean signal per channel (before gain) aimed at RxRx1's global pixel means; intensity per cell is fixed by this
TARGET = np.array([4.5, 11.0, 7.0, 7.5, 3.8, 7.0], np.float32)
CONTRAST = (0.55, 0.7, 0.6, 0.6, 0.8, 0.7)  # tone target: CV relative to the raw reference (flatter, as in RxRx1)
MITO_SIGMA = (0.8, 1.3, 2.0)  # splat blur bins for mitochondrial puncta (px at 512)

# purposes for the seeded generators
_LAYOUT, _PHENO, _EXP, _PLATE, _WELL, _SITE, _SPLIT = 1, 2, 3, 4, 5, 6, 7


def _rng(*ids) -> np.random.Generator:
    return np.random.default_rng([int(i) for i in ids])


# ----------------------------------------------------------------------------------------------- phenotypes
def phenotype(sirna: int, ctype: int, seed: int, strength: float) -> np.ndarray:
    """Mean shift of the standardized morphology vector for one siRNA in one cell type."""
    if sirna == NEGATIVE:
        return np.zeros(P, np.float32)
    if sirna in POSITIVE:  # strong-ish, mostly shared across cell types
        shared = _rng(seed, _PHENO, 9000 + sirna).normal(0, 1, P)
        own = _rng(seed, _PHENO, 9000 + sirna, ctype + 1).normal(0, 1, P)
        d = 0.8 * shared + 0.6 * own
        return (1.3 * d / np.sqrt((d ** 2).mean())).astype(np.float32)
    shared = _rng(seed, _PHENO, sirna).normal(0, 1, P)
    own = _rng(seed, _PHENO, sirna, ctype + 1).normal(0, 1, P)
    d = strength * (np.sqrt(0.4) * shared + np.sqrt(0.6) * own)
    # soft cap: no parameter moves by more than ~CAP in its physical (log / logit) units
    return (CAP / SCALE * np.tanh(SCALE * d / CAP)).astype(np.float32)


def batch(seed: int, e_idx: int, plate: int) -> dict:
    """Experiment- and plate-level acquisition and biology effects."""
    er = _rng(seed, _EXP, e_idx)
    pr = _rng(seed, _PLATE, e_idx, plate)
    return dict(
        gain=(er.uniform(0.65, 1.5, 6) * pr.uniform(0.85, 1.15, 6)).astype(np.float32),
        offset=(er.uniform(1.0, 5.0, 6) + pr.uniform(-0.5, 0.5, 6)).astype(np.float32),
        vig=float(er.uniform(0.10, 0.35)) * pr.uniform(0.85, 1.15, 6),
        grad=pr.uniform(-0.10, 0.10, 2),
        blur=float(pr.uniform(0.35, 1.05)),
        shot=float(er.uniform(0.25, 0.8)),
        read=float(er.uniform(0.7, 1.6)),
        morph=(er.normal(0, 0.15, P) + pr.normal(0, 0.08, P)).astype(np.float32),
        density=float(np.exp(er.normal(0, 0.12) + pr.normal(0, 0.05))),
    )


# ----------------------------------------------------------------------------------------------- rendering
def _positions(r, n: int, lo: float, hi: float, dmin: float, clump: float) -> np.ndarray:
    """Centres in [lo, hi)^2 with a soft minimum distance; clustered colonies when clump > 0."""
    m = 4 * n + 20
    if clump > 0:
        k = max(1, int(n / 12))
        cen = r.uniform(lo, hi, (k, 2))
        pick = r.integers(0, k, m)
        spread = (hi - lo) * (0.06 + 0.3 * (1 - clump))
        cand = cen[pick] + r.normal(0, spread, (m, 2))
        uni = r.uniform(lo, hi, (m, 2))
        cand = np.where((r.uniform(size=m) < 0.5 * (1 - clump) + 0.15)[:, None], uni, cand)
        cand = cand[(cand >= lo).all(1) & (cand < hi).all(1)]
    else:
        cand = r.uniform(lo, hi, (m, 2))
    out = np.empty((n, 2))
    got = 0
    for c in cand:
        if got and (((out[:got] - c) ** 2).sum(1) < dmin * dmin).any():
            continue
        out[got] = c
        got += 1
        if got == n:
            break
    return out[:got]


def render_site(size: int, ctype: str, z_mean: np.ndarray, b: dict, r: np.random.Generator, tone: bool = True):
    """One site, uint8 (6, size, size) (tone=False: the untoned signal and the number of visible cells)."""
    s = max(size / 512.0, 0.25)  # px per 512-px unit; small sites show a smaller field of view instead
    fov = (size / 512.0 / s) ** 2
    base = BASE[ctype]
    Rb = base["R"] * s
    pad = int(np.ceil(2.2 * Rb * np.sqrt(1 + base["elong"]) + 6))
    W = size + 2 * pad
    canvas = np.zeros((6, W, W), np.float32)
    # site-level texture fields (unit std), sampled by each cell's box
    tex = []
    for sg in (0.8, 2.0):
        t = gaussian_filter(r.standard_normal((W, W), dtype=np.float32), max(sg * s, 0.5), truncate=3.0)
        tex.append(t / (t.std() + 1e-6))
    tf, tm = tex
    te = np.roll(tm, (W // 2, W // 3), (0, 1))  # ER texture: the same field elsewhere (independent of tm here)

    # the cells: positions, then every per-cell draw at once
    expand = 0.9 * Rb
    area_frac = ((size + 2 * expand) / size) ** 2
    n = r.poisson(base["n"] * fov * b["density"] * np.exp(SCALE[IX["density"]] * z_mean[IX["density"]])
                  * area_frac)
    cen = _positions(r, max(int(n), 1), pad - expand, pad + size + expand, 1.05 * Rb, base["clump"])
    n = len(cen)
    zc = r.standard_normal((n, P)).astype(np.float32)  # cell-level variation (sd 1 per parameter)
    Z = z_mean[None, :] + zc
    G = np.exp(SCALE[None, :] * Z).astype(np.float64)
    col = {p: G[:, i] for p, i in IX.items()}
    phase = r.choice(4, n, p=[0.5, 0.3, 0.15, 0.05])  # G1, S, G2, M
    mit = phase == 3
    dna = np.where(phase == 0, 1.0, np.where(phase == 1, 1.0 + r.uniform(0, 1, n), 2.0))
    uptake = np.exp(r.normal(0, 0.15, (n, 1)) + r.normal(0, 0.12, (n, 6)))
    area = np.exp(2 * SCALE[0] * zc[:, 0])  # cytoplasmic content follows the size noise, not the class
    content = np.stack([dna * uptake[:, 0], area * uptake[:, 1], area * uptake[:, 2], area * uptake[:, 3],
                        area * uptake[:, 4] * 0.15, area * uptake[:, 5]], 1)
    R = Rb * col["cell_size"] * np.where(mit, 0.75, 1.0)
    e = 1.0 + np.where(mit, 0.05, base["elong"] * col["cell_elong"])
    rn = R * np.minimum(base["nuc"] * col["nuc_size"] * dna ** 0.25, 0.78) * np.where(mit, 0.6, 1.0)
    en = 1.0 + 0.22 * col["nuc_elong"]
    th = r.uniform(0, np.pi, n)
    thn = th + r.normal(0, 0.35, n)
    harm = r.normal(0, 0.07, (n, 3))
    hph = r.uniform(0, 2 * np.pi, (n, 3))
    A, B = R * np.sqrt(e), R / np.sqrt(e)
    CT, ST = np.cos(th), np.sin(th)
    HY = np.ceil(1.3 * np.sqrt((A * ST) ** 2 + (B * CT) ** 2) + 4 * s + 3).astype(int)  # box half-extents
    HX = np.ceil(1.3 * np.sqrt((A * CT) ** 2 + (B * ST) ** 2) + 4 * s + 3).astype(int)
    off = r.normal(0, 0.12, (n, 2)) * (R - rn)[:, None]
    OY, OX = off[:, 0] * ST + off[:, 1] * CT, off[:, 0] * CT - off[:, 1] * ST
    WG = expit(2 * SCALE[IX["nuc_grain"]] * Z[:, IX["nuc_grain"]])
    TX = 0.32 * col["nuc_texture"] * np.where(mit, 1.8, 1.0)
    LAM = base["er"] * R * col["er_spread"]
    ERT = 0.45 * col["er_texture"]
    COH = expit(base["coh"] + 2 * SCALE[IX["fibre_coherence"]] * Z[:, IX["fibre_coherence"]])
    AL1 = th + r.normal(0, 1, n) * (1 - COH) * 0.9
    AL2 = AL1 + np.pi / 2 + r.normal(0, 0.4, n)
    FPH = r.uniform(0, 2 * np.pi, (n, 2))
    PER = np.maximum(4.5 * s * np.exp(r.normal(0, 0.15, n)), 1.5)
    FS = base["fibre"] * col["fibre_strength"]
    K = np.minimum(1 + r.poisson(2.0 * col["nucleoli_count"]), 8)
    NSIG = np.maximum(0.13 * rn * col["nucleoli_size"], 0.4)
    NPR = np.sqrt(r.uniform(0, 1, (n, 8))) * 0.55
    NPA = r.uniform(0, 2 * np.pi, (n, 8))
    MW = 1.3 * s * col["membrane_width"] + 0.3
    GD = r.uniform(0, 2 * np.pi, n)
    GS = np.maximum(0.2 * R * col["golgi_size"], 0.5)
    GJ = r.normal(0, 1, (n, 3, 3))
    FNUC = expit(-0.2 + 2 * SCALE[IX["rna_nuclear"]] * Z[:, IX["rna_nuclear"]])  # share of RNA in the nucleus
    FRIM = expit(-1.1 + 2 * SCALE[IX["er_rim"]] * Z[:, IX["er_rim"]])  # share of ER at the nuclear envelope
    FGOL = expit(-0.85 + 2 * SCALE[IX["golgi_frac"]] * Z[:, IX["golgi_frac"]])  # share of WGA in the Golgi
    edge, nedge = max(0.8 * s, 0.35), max(0.6 * s, 0.3)
    rim = 2 * (1.1 * s + 0.3) ** 2
    cw = 2 * (1.4 * s + 0.3) ** 2

    for i in range(n):
        R_, rn_, a, bb, hy, hx = float(R[i]), float(rn[i]), float(A[i]), float(B[i]), int(HY[i]), int(HX[i])
        cy, cx = float(cen[i, 0]), float(cen[i, 1])
        iy, ix = int(cy), int(cx)
        y0, y1, x0, x1 = max(iy - hy, 0), min(iy + hy + 1, W), max(ix - hx, 0), min(ix + hx + 1, W)
        dy = (np.arange(y0, y1, dtype=np.float32) + np.float32(0.5 - cy))[:, None]
        dx = (np.arange(x0, x1, dtype=np.float32) + np.float32(0.5 - cx))[None, :]
        ct, st = float(CT[i]), float(ST[i])
        un = (dx * ct + dy * st) * (1 / a)
        vn = (dy * ct - dx * st) * (1 / bb)
        phi = np.arctan2(vn, un)
        rr = 1 + float(harm[i, 0]) * np.cos(2 * phi + float(hph[i, 0])) \
            + float(harm[i, 1]) * np.cos(3 * phi + float(hph[i, 1])) \
            + float(harm[i, 2]) * np.cos(4 * phi + float(hph[i, 2]))
        dist_c = (np.sqrt(un * un + vn * vn) / rr - 1) * R_
        mc = expit(dist_c * (-1 / edge))
        # nucleus, offset from the cell centre
        oy, ox = float(OY[i]), float(OX[i])
        ddy, ddx = dy - oy, dx - ox
        cn, sn = float(np.cos(thn[i])), float(np.sin(thn[i]))
        sen = float(np.sqrt(en[i]))
        nu = (ddx * cn + ddy * sn) * (1 / (rn_ * sen))
        nv = (ddy * cn - ddx * sn) * (sen / rn_)
        rho_n = np.sqrt(nu * nu + nv * nv)
        dist_n = (rho_n - 1) * rn_
        mn = expit(dist_n * (-1 / nedge))
        box = (slice(y0, y1), slice(x0, x1))

        # w1 nuclei: chromatin texture; integrated DNA fixed by the cell cycle, so bigger nuclei are dimmer
        wg, tx = float(WG[i]), float(TX[i])
        w1 = mn * np.maximum(1 + (tx * wg) * tf[box] + (tx * (1 - wg)) * tm[box], 0.05) \
            * (1 - 0.15 * np.minimum(rho_n, 1) ** 2)
        # w2 ER: bright rim at the envelope, decaying into the cytoplasm, reticular
        out_n = np.maximum(dist_n, 0)
        ret = mc * (0.22 * mn + (1 - mn) * np.exp(out_n * (-1 / float(LAM[i])))) \
            * np.maximum(1 + float(ERT[i]) * te[box], 0)
        env = mc * np.exp(dist_n * dist_n * (-1 / rim))
        w2 = float(1 - FRIM[i]) * ret / (ret.sum() + 1e-6) + float(FRIM[i]) * env / (env.sum() + 1e-6)
        # w3 actin: cortex ring and one or two families of stress fibres
        cortex = mc * np.exp((dist_c + 1.2 * s) ** 2 * (-1 / cw))
        fib = np.zeros_like(mc)
        w2nd = 1 - float(COH[i])
        for j, (wgt, ang) in enumerate(((1.0, float(AL1[i])), (w2nd, float(AL2[i])))):
            if wgt < 0.05:
                continue
            q = dy * float(np.cos(ang) * 2 * np.pi / PER[i]) - dx * float(np.sin(ang) * 2 * np.pi / PER[i])
            f = (1 + np.cos(q + float(FPH[i, j]))) * 0.5
            f *= f
            fib += wgt * (f * f * f)
        fib *= mc * (1 - 0.6 * mn) * np.maximum(0.6 + 0.5 * tm[box], 0)
        w3 = cortex / (cortex.sum() + 1e-6) + float(FS[i]) * fib / (fib.sum() + 1e-6)
        # w4 RNA: diffuse cytoplasm + nucleoplasm, bright nucleoli
        nuc = np.zeros_like(mc)
        g2 = -0.5 / float(NSIG[i]) ** 2
        for j in range(int(K[i])):
            py = oy + rn_ * float(NPR[i, j] * np.sin(NPA[i, j]))
            px = ox + rn_ * float(NPR[i, j] * np.cos(NPA[i, j]))
            nuc += np.exp((dy - py) ** 2 * g2) * np.exp((dx - px) ** 2 * g2)
        cyto = mc * (1 - mn) * np.maximum(1 + 0.3 * tm[box], 0)
        fnu = float(FNUC[i])
        w4 = (1 - fnu) * cyto / (cyto.sum() + 1e-6) + fnu * (0.45 * mn / (mn.sum() + 1e-6)
                                                             + 0.55 * nuc / (nuc.sum() + 1e-6))
        # w5 diffuse part (the puncta are splatted below)
        w5 = mc * (1 - mn)
        # w6 membrane ring + Golgi next to the nucleus
        memb = np.exp(dist_c * dist_c * (-0.5 / float(MW[i]) ** 2))
        gs = float(GS[i])
        gol = np.zeros_like(mc)
        g2 = -0.5 / gs ** 2
        for j in range(3):
            gang = float(GD[i] + 0.35 * GJ[i, j, 0])
            gy = oy + (rn_ + gs) * np.sin(gang) + gs * 0.6 * float(GJ[i, j, 1])
            gx = ox + (rn_ + gs) * np.cos(gang) + gs * 0.6 * float(GJ[i, j, 2])
            gol += np.exp((dy - gy) ** 2 * g2) * np.exp((dx - gx) ** 2 * g2)
        cyt = mc * (1 - 0.5 * mn)
        fg = float(FGOL[i])
        w6 = 0.85 * ((1 - fg) * memb / (memb.sum() + 1e-6) + fg * gol / (gol.sum() + 1e-6)) \
            + 0.15 * cyt / (cyt.sum() + 1e-6)

        for ch, img in enumerate((w1, w2, w3, w4, w5, w6)):
            canvas[ch][box] += img * float(content[i, ch] / (img.sum() + 1e-6))

    # w5 mitochondria: puncta / short tubules, denser near the nucleus, splatted and blurred per size bin
    nm = r.poisson(45 * col["mito_count"] * area) + 1
    cid = np.repeat(np.arange(n), nm)
    T = len(cid)
    ang = r.uniform(0, 2 * np.pi, T)
    ca, sa = np.cos(ang), np.sin(ang)
    Rpsi = 1 / np.sqrt((ca / A[cid]) ** 2 + (sa / B[cid]) ** 2)  # boundary distance in the cell frame
    dist = rn[cid] * 0.9 + r.beta(1.3, 2.4 * col["mito_perinuclear"][cid]) * np.maximum(Rpsi - rn[cid] * 0.9, 0.5) \
        * 0.95
    my = cen[cid, 0] + OY[cid] + dist * (ca * ST[cid] + sa * CT[cid])
    mx = cen[cid, 1] + OX[cid] + dist * (ca * CT[cid] - sa * ST[cid])
    chain = 1 + r.poisson(1.0, T)
    msz = np.log(MITO_SIGMA[1]) + SCALE[IX["mito_size"]] * Z[cid, IX["mito_size"]] + r.normal(0, 0.25, T)
    mbin = np.digitize(msz, [np.log(1.0), np.log(1.6)])
    tang = r.uniform(0, np.pi, T)
    per_cell = np.bincount(cid, chain, n)
    amp = content[cid, 4] / 0.15 * 0.85 / per_cell[cid]
    ys, xs, bs, ws = [my], [mx], [mbin], [amp]
    for c_ in range(1, int(chain.max())):
        sel = chain > c_
        ys.append(my[sel] + 1.4 * s * c_ * np.sin(tang[sel]))
        xs.append(mx[sel] + 1.4 * s * c_ * np.cos(tang[sel]))
        bs.append(mbin[sel])
        ws.append(amp[sel])
    mito_pts = np.concatenate(ys), np.concatenate(xs), np.concatenate(bs), np.concatenate(ws)

    # splat mitochondria (bilinear) and blur per size bin
    y, x, mb, w = mito_pts
    y, x = y - 0.5, x - 0.5
    ok = (y >= 0) & (y < W - 1) & (x >= 0) & (x < W - 1)
    y, x, mb, w = y[ok], x[ok], mb[ok], w[ok]
    iy0, ix0 = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    fy, fx = y - iy0, x - ix0
    for bi in range(len(MITO_SIGMA)):
        sel = mb == bi
        if not sel.any():
            continue
        sp = np.zeros(W * W)
        for oy_, ox_, ww in ((0, 0, (1 - fy) * (1 - fx)), (1, 0, fy * (1 - fx)), (0, 1, (1 - fy) * fx),
                             (1, 1, fy * fx)):
            sp += np.bincount(((iy0 + oy_) * W + ix0 + ox_)[sel], (w * ww)[sel], W * W)
        sp = sp.reshape(W, W).astype(np.float32)
        extra = np.sqrt(max((MITO_SIGMA[bi] * s) ** 2 - (0.5 * s) ** 2, 0))  # the optics add the rest
        canvas[4] += gaussian_filter(sp, extra, truncate=3.0) if extra > 0.5 else sp

    sig = canvas[:, pad:pad + size, pad:pad + size]
    for ch in range(6):  # optics: per-plate blur
        sig[ch] = gaussian_filter(sig[ch], b["blur"] * s + 0.3)
    vis = int(((cen >= pad) & (cen < pad + size)).all(1).sum())
    if not tone:
        return sig, vis
    # stain response: a per-site tone curve holds each channel's contrast (CV) at the cell type's reference, so the
    # class cannot be read from per-channel mean/std: only from where the intensity is, not how much or how spread
    ref = _reference_cv(size, ctype)
    sub = (slice(None, None, max(1, size // 128)),) * 2
    for ch in range(6):
        x = sig[ch]
        m = float(x.mean())
        if vis == 0 or m <= 0:
            continue
        y = x / m
        ys = y[sub]
        target = CONTRAST[ch] * ref[ch] / np.sqrt(vis)
        lo, hi = np.log(0.2), np.log(2.8)
        for _ in range(11):  # bisection on log(gamma): CV(y ** gamma) grows with gamma
            mid = 0.5 * (lo + hi)
            p = ys ** np.float32(np.exp(mid))
            if p.std(dtype=np.float64) / p.mean(dtype=np.float64) < target:
                lo = mid
            else:
                hi = mid
        yg = np.power(y, np.float32(np.exp(0.5 * (lo + hi))))
        sig[ch] = yg * np.float32(m / float(yg.mean()))
    return acquire(sig, size, b, r)


@lru_cache(maxsize=None)
def _reference_cv(size: int, ctype: str) -> tuple:
    """CV * sqrt(visible cells) per channel of neutral sites of one cell type (untoned), the tone curve's target."""
    b = dict(density=1.0, morph=np.zeros(P, np.float32), blur=0.7)
    acc = np.zeros(6)
    for k in range(3):
        sig, vis = render_site(size, ctype, np.zeros(P, np.float32), b, _rng(12345, k, size), tone=False)
        acc += sig.std((1, 2)) / np.maximum(sig.mean((1, 2)), 1e-12) * np.sqrt(max(vis, 1))
    return tuple(acc / 3)


def acquire(sig: np.ndarray, size: int, b: dict, r: np.random.Generator) -> np.ndarray:
    """Camera: intensity scale, vignetting/gradient, gain, background, shot + read noise -> uint8."""
    s = max(size / 512.0, 0.25)
    fov = (size / 512.0 / s) ** 2
    kscale = TARGET * (size * size) / (60.0 * 1.3 * fov)  # content units -> grey levels, independent of size
    yy = (np.arange(size, dtype=np.float32)[:, None] + 0.5) / size - 0.5
    xx = (np.arange(size, dtype=np.float32)[None, :] + 0.5) / size - 0.5
    r2 = (yy * yy + xx * xx) / 0.5
    out = np.empty((6, size, size), np.uint8)
    noise = r.standard_normal((6, size, size), dtype=np.float32)
    gy, gx = float(b["grad"][0]), float(b["grad"][1])
    grad = 1 + gy * yy + gx * xx
    for ch in range(6):
        vig = (1 - float(b["vig"][ch]) * r2) * grad
        lam = sig[ch] * vig
        lam *= float(kscale[ch] * b["gain"][ch])
        lam += float(b["offset"][ch]) * (1 + 0.3 * gy * yy)
        np.maximum(lam, 0, out=lam)
        lam += np.sqrt(lam * float(b["shot"]) + float(b["read"]) ** 2) * noise[ch]  # shot + read noise
        np.rint(lam, out=lam)
        out[ch] = np.clip(lam, 0, 255)
    return out


# ----------------------------------------------------------------------------------------------- the set
def _work(task):
    out, size, seed, strength, (split, exp, e_idx, c_idx, ctype, plate, well, sirna, kind) = task
    b = batch(seed, e_idx, plate)
    wr = _rng(seed, _WELL, e_idx, plate, WELLS.index(well))
    z_mean = phenotype(sirna, c_idx, seed, strength) + b["morph"] + wr.normal(0, 0.08, P).astype(np.float32)
    b = dict(b, density=b["density"] * float(np.exp(wr.normal(0, 0.2))))  # seeding varies from well to well
    folder = Path(out) / split / exp / f"Plate{plate}"
    stats = []
    for site in (1, 2):
        img = render_site(size, ctype, z_mean, b, _rng(seed, _SITE, e_idx, plate, WELLS.index(well), site))
        for ch in range(6):
            a = img[ch]
            Image.fromarray(a, mode="L").save(folder / f"{well}_s{site}_w{ch + 1}.png", compress_level=1)
            stats.append([f"{exp}_{plate}_{well}", exp, plate, well, site, ch + 1, *pixel_stats(a)])
    return stats


def write(out, *, classes: int = 60, train: int = 2, test: int = 1, size: int = 512, missing: float = 0.08,
          seed: int = 5, workers: int = 2, strength: float = STRENGTH) -> Path:
    if classes % 4 or classes <= 0:
        raise ValueError(f"classes={classes}: must be a positive multiple of 4 (4 plate groups)")
    if classes > 1108:
        raise ValueError("classes must be <= 1108 (1108.. are control siRNAs)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    groups, wells = plate_layout(classes, experiments(train, test), missing, seed, _LAYOUT)
    for split, exp, *_rest in wells:
        plate = _rest[3]
        (out / split / exp / f"Plate{plate}").mkdir(parents=True, exist_ok=True)
    for ctype in CELL_TYPES:  # the tone curve's reference, computed once before the workers fork
        _reference_cv(size, ctype)
    tasks = [(str(out), size, seed, strength, w) for w in wells]
    if workers > 1:
        import multiprocessing as mp
        with mp.get_context("fork").Pool(workers) as pool:
            stats = pool.map(_work, tasks, chunksize=4)
    else:
        stats = [_work(t) for t in tasks]

    write_layout_csvs(out, wells, stats)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--classes", type=int, default=60)
    p.add_argument("--train", type=int, default=2, help="train experiments per cell type")
    p.add_argument("--test", type=int, default=1, help="test experiments per cell type")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--missing", type=float, default=0.08)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--strength", type=float, default=STRENGTH, help="siRNA shift in per-cell sd units")
    a = p.parse_args()
    t0 = time.time()
    out = write(Path(a.out), classes=a.classes, train=a.train, test=a.test, size=a.size, missing=a.missing,
                seed=a.seed, workers=a.workers, strength=a.strength)
    print(f"written to {out} in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
