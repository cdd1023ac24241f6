"""An RxRx1-layout data set written WITHOUT cellio, so the tests see data the project did not generate.

Independent code and signal model (Gaussian blobs via PIL, not cellio.synth): Kaggle layout
`{train,test}/{EXP}/Plate{p}/{well}_s{site}_w{ch}.png` (8-bit grey), the Kaggle CSVs with their exact columns
(train.csv, test.csv, train_controls.csv, test_controls.csv, sample_submission.csv; no pixel_stats.csv), plus a
held-out test_truth.csv. Treatments form 4 plate groups, each siRNA once per plate; each experiment has a cyclic
group rotation (train uses 0..2, test uses 3); B02 is the negative control; some treatment wells can be missing.

    python tests/foreign_rxrx1.py OUT [--classes 16] [--size 40] [--train 2] [--test 1]
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

CELL = {"HEPG2": (9, 0.10), "HUVEC": (7, 0.13), "RPE": (6, 0.15), "U2OS": (5, 0.17)}  # cells, radius/size
WELLS = [f"{r}{c:02d}" for r in "BCDEFGHIJKLMNO" for c in range(2, 24)]
POSITIVE = (1108, 1109)


def phenotype(sirna: int, seed: int) -> dict:
    r = np.random.default_rng([seed, 77, sirna])
    return {"size": r.uniform(0.7, 1.4), "nuc": r.uniform(0.3, 0.65), "theta": r.uniform(0, np.pi),
            "aspect": r.uniform(1.0, 2.5), "puncta": r.uniform(0.5, 6), "ring": r.uniform(0.04, 0.2)}


def render(size: int, cell_type: str, ph: dict, gain: np.ndarray, offset: np.ndarray, rng) -> np.ndarray:
    n, rel = CELL[cell_type]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.zeros((6, size, size), np.float32)
    for _ in range(rng.poisson(n) + 2):
        cy, cx = rng.uniform(0, size, 2)
        rad = size * rel * ph["size"] * rng.uniform(0.85, 1.15)
        dy, dx = yy - cy, xx - cx
        d2 = dy * dy + dx * dx
        nuc = np.exp(-d2 / (2 * (rad * ph["nuc"]) ** 2))
        img[0] += nuc
        img[1] += np.exp(-d2 / (2 * rad ** 2)) * (1 - 0.7 * nuc)
        u = dx * np.cos(ph["theta"]) + dy * np.sin(ph["theta"])
        v = -dx * np.sin(ph["theta"]) + dy * np.cos(ph["theta"])
        img[2] += np.exp(-(u * u / (2 * (rad * ph["aspect"]) ** 2) + v * v / (2 * (rad / ph["aspect"]) ** 2)))
        img[3] += np.exp(-d2 / (2 * (0.8 * rad) ** 2))
        for _ in range(rng.poisson(ph["puncta"])):
            py, px = cy + rng.normal(0, rad * 0.6), cx + rng.normal(0, rad * 0.6)
            img[4] += np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / 2.0)
        img[5] += np.exp(-((np.sqrt(d2) - rad) ** 2) / (2 * (rad * ph["ring"]) ** 2))
    img = img * gain[:, None, None] * 60 + offset[:, None, None] + rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write(out: Path, *, classes: int = 16, train: int = 2, test: int = 1, size: int = 40, missing: float = 0.1,
          seed: int = 11) -> Path:
    if classes % 4:
        raise ValueError(f"classes={classes}: must be divisible by 4 (4 plate groups)")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(classes)
    groups = [sorted(perm[g::4].tolist()) for g in range(4)]
    rows: dict[str, list] = {"train": [], "test": [], "train_controls": [], "test_controls": [], "truth": []}
    for e_idx, (ctype, k) in enumerate((c, k) for c in CELL for k in range(train + test)):
        dataset = "train" if k < train else "test"
        exp = f"{ctype}-{k + 1:02d}"
        rot = k % 3 if dataset == "train" else 3
        er = np.random.default_rng([seed, 6, e_idx])
        for plate in (1, 2, 3, 4):
            pr = np.random.default_rng([seed, 9, e_idx, plate])
            gain = er.uniform(0.6, 1.6, 6) * pr.uniform(0.85, 1.15, 6)
            offset = er.uniform(2, 15, 6)
            wells = [w for w in WELLS if w != "B02"]
            pr.shuffle(wells)
            treat = [s for s in groups[(plate - 1 + rot) % 4] if pr.uniform() >= missing]
            layout = [("B02", 1138, "negative_control")]
            layout += [(wells[i], s, "positive_control") for i, s in enumerate(POSITIVE)]
            layout += [(wells[len(POSITIVE) + i], s, "treatment") for i, s in enumerate(treat)]
            for well, sirna, kind in sorted(layout):
                idc = f"{exp}_{plate}_{well}"
                if kind == "treatment":
                    rows[dataset].append([idc, exp, plate, well] + ([sirna] if dataset == "train" else []))
                    if dataset == "test":
                        rows["truth"].append([idc, sirna])
                else:
                    rows[f"{dataset}_controls"].append([idc, exp, plate, well, sirna, kind])
                folder = out / dataset / exp / f"Plate{plate}"
                folder.mkdir(parents=True, exist_ok=True)
                for site in (1, 2):
                    srng = np.random.default_rng([seed, e_idx, plate, WELLS.index(well), site])
                    img = render(size, ctype, phenotype(sirna, seed), gain, offset, srng)
                    for ch in range(6):
                        Image.fromarray(img[ch], mode="L").save(folder / f"{well}_s{site}_w{ch + 1}.png")
    write_kaggle_csvs(out, rows)
    return out



def write_kaggle_csvs(out: Path, rows: dict[str, list]) -> None:
    """The Kaggle CSVs (their exact columns) from rows keyed train/test/train_controls/test_controls/truth; the
    test truth goes to test_truth.csv and sample_submission.csv lists every test treatment well."""
    heads = {"train": ["id_code", "experiment", "plate", "well", "sirna"],
             "test": ["id_code", "experiment", "plate", "well"],
             "train_controls": ["id_code", "experiment", "plate", "well", "sirna", "well_type"],
             "test_controls": ["id_code", "experiment", "plate", "well", "sirna", "well_type"],
             "truth": ["id_code", "sirna"]}
    files = {"truth": "test_truth.csv"}
    for name, data in rows.items():
        with open(out / files.get(name, f"{name}.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(heads[name])
            w.writerows(data)
    with open(out / "sample_submission.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id_code", "sirna"])
        w.writerows([r[0], 0] for r in rows["test"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--classes", type=int, default=16)
    p.add_argument("--train", type=int, default=2)
    p.add_argument("--test", type=int, default=1)
    p.add_argument("--size", type=int, default=40)
    p.add_argument("--missing", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=11)
    a = p.parse_args()
    out = write(Path(a.out), classes=a.classes, train=a.train, test=a.test, size=a.size, missing=a.missing,
                seed=a.seed)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
