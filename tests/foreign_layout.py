"""The RxRx1 plate layout, the per-image pixel statistics and the CSVs shared by the foreign generators
(`foreign_subtle.py`, `foreign_penetrance.py`): the data set's schema, not its signal, so one home for both.

Treatments 0..classes-1 form 4 disjoint groups; each plate holds one group, each siRNA once, at random wells (B02
is the negative control, sirna 1138; 3 positive controls 1108..1110 on every plate); an experiment with rotation r
puts group (p-1+r)%4 on plate p; treatment wells go missing at random with probability `missing`.
"""
from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from foreign_rxrx1 import write_kaggle_csvs

CELL_TYPES = ("HEPG2", "HUVEC", "RPE", "U2OS")
WELLS = [f"{r}{c:02d}" for r in "BCDEFGHIJKLMNO" for c in range(2, 24)]
NEGATIVE = 1138
POSITIVE = (1108, 1109, 1110)


def experiments(train: int, test: int):
    """(c_idx, cell type, split, experiment, rotation) per experiment: `train` then `test` experiments per cell
    type (HEPG2-01 ...); train rotations cycle 0..2, test experiments have rotation 3."""
    for c_idx, ctype in enumerate(CELL_TYPES):
        for k in range(train + test):
            split = "train" if k < train else "test"
            yield c_idx, ctype, split, f"{ctype}-{k + 1:02d}", (k % 3 if split == "train" else 3)


def plate_layout(classes: int, experiments: Iterable[tuple[int, str, str, str, int]], missing: float, seed: int,
                 purpose: int) -> tuple[list[list[int]], list[tuple]]:
    """(the 4 plate groups, one row per well: (split, exp, e_idx, c_idx, ctype, plate, well, sirna, kind)) for
    `experiments` rows (c_idx, ctype, split, exp, rotation); every draw from default_rng([seed, purpose, ...])."""
    perm = np.random.default_rng([seed, purpose]).permutation(classes)
    groups = [sorted(int(x) for x in perm[g::4]) for g in range(4)]
    wells = []
    for e_idx, (c_idx, ctype, split, exp, rot) in enumerate(experiments):
        for plate in (1, 2, 3, 4):
            pr = np.random.default_rng([seed, purpose, e_idx, plate])
            free = [w for w in WELLS if w != "B02"]
            pr.shuffle(free)
            treat = [s for s in groups[(plate - 1 + rot) % 4] if pr.uniform() >= missing]
            lay = [("B02", NEGATIVE, "negative_control")]
            lay += [(free[i], s, "positive_control") for i, s in enumerate(POSITIVE)]
            lay += [(free[len(POSITIVE) + i], s, "treatment") for i, s in enumerate(treat)]
            for well, sirna, kind in sorted(lay):
                wells.append((split, exp, e_idx, c_idx, ctype, plate, well, sirna, kind))
    return groups, wells


def pixel_stats(a: np.ndarray) -> list:
    """mean, std (ddof=0), median, min, max of a uint8 image, exactly, from its histogram (pixel_stats.csv)."""
    h = np.bincount(a.ravel(), minlength=256).astype(np.int64)
    v = np.arange(256, dtype=np.int64)
    n = int(h.sum())
    s1, s2 = int((h * v).sum()), int((h * v * v).sum())
    mean = s1 / n
    var = max((s2 - s1 * s1 / n) / n, 0.0)
    c = np.cumsum(h)
    lo, hi = int(np.searchsorted(c, (n - 1) // 2 + 1)), int(np.searchsorted(c, n // 2 + 1))
    nz = np.nonzero(h)[0]
    return [f"{mean:.6f}", f"{np.sqrt(var):.6f}", f"{(lo + hi) / 2:g}", int(nz[0]), int(nz[-1])]


def write_layout_csvs(out: Path, wells: list[tuple], stats: Iterable[list]) -> None:
    """The Kaggle CSVs of `plate_layout`'s wells (test_truth.csv for the test treatments) and pixel_stats.csv from
    per-well lists of `[id_code, experiment, plate, well, site, channel, *pixel_stats(image)]` rows."""
    rows: dict[str, list] = {"train": [], "test": [], "train_controls": [], "test_controls": [], "truth": []}
    for split, exp, _e_idx, _c_idx, _ctype, plate, well, sirna, kind in wells:
        idc = f"{exp}_{plate}_{well}"
        if kind == "treatment":
            rows[split].append([idc, exp, plate, well] + ([sirna] if split == "train" else []))
            if split == "test":
                rows["truth"].append([idc, sirna])
        else:
            rows[f"{split}_controls"].append([idc, exp, plate, well, sirna, kind])
    write_kaggle_csvs(out, rows)
    with open(Path(out) / "pixel_stats.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id_code", "experiment", "plate", "well", "site", "channel", "mean", "std", "median", "min",
                    "max"])
        for st in stats:
            w.writerows(st)
