"""A raw data set of tests/test_other_layouts.py's three-channel layout (`TRI`: channels DNA/RNA/Mito, one site per
well, a 96-well plate, splits fit/holdout with no hidden labels, integer compound labels in `compound`, the well
type in `kind`, cell types U2OS and A549), big enough for the trainer: several experiments, two plates each, every
compound on every plate, and a learnable signal (each compound brightens its own channel in a blob).

    register_tri(monkeypatch)                   # the TRI reader registered for this test only
    raw = write_tri_raw(tmp_path / "raw")       # sites.csv + one PNG per channel, read by test_other_layouts.READER
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from test_other_layouts import READER, TRI, save_plane

__all__ = ["TRI", "READER", "EXPERIMENTS", "COMPOUNDS", "NEGCON", "register_tri", "write_tri_raw"]

# (split, experiment, cell type)
EXPERIMENTS = (("fit", "EXP-1", "U2OS"), ("fit", "EXP-2", "A549"), ("fit", "EXP-3", "U2OS"),
               ("holdout", "EXP-4", "A549"))
COMPOUNDS = (0, 1, 2)
NEGCON = 99
_WELLS = ("A01", "A05", "B03", "C07", "D02", "E11", "F06", "G09", "H12", "H01")  # 96-well names


def register_tri(monkeypatch) -> None:
    """The TRI data set registered in cellio's registry until the test ends."""
    import cellio
    from cellio.datasets import registry

    monkeypatch.setattr(registry, "_READERS", dict(registry._READERS))
    cellio.datasets.register_dataset(READER)


def write_tri_raw(root: Path, *, size: tuple[int, int] = (21, 17), replicates: int = 2, seed: int = 0) -> Path:
    """Every experiment of EXPERIMENTS with plates 1 and 2, each plate holding `replicates` wells of every compound
    and 2 negative-control wells, at random well positions; H x W = `size` (odd, non-square)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    rows = []
    for split, exp, cell_type in EXPERIMENTS:
        for plate in (1, 2):
            content = [(NEGCON, "negcon")] * 2 + [(c, "trt") for c in COMPOUNDS for _ in range(replicates)]
            wells = rng.permutation(_WELLS)[:len(content)]
            for well, (compound, kind) in zip(wells, content):
                row = {"id_code": f"{exp}_{plate}_{well}", "dataset": split, "experiment": exp,
                       "cell_type": cell_type, "plate": plate, "well": str(well), "site": 1, "kind": kind,
                       "compound": compound}
                cy, cx = rng.uniform(4, h - 4), rng.uniform(4, w - 4)
                blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 12.0)
                for i, key in enumerate(TRI.channel_keys):
                    plane = rng.normal(40 + 5 * plate, 8, size)  # plates differ in brightness (a batch effect)
                    if compound != NEGCON and i == compound:
                        plane += 150 * blob
                    save_plane(root, f"{exp}/P{plate}/{well}_{key}.png", np.clip(plane, 0, 255).astype(np.uint8),
                               row, key)
                rows.append(row)
    pd.DataFrame(rows).to_csv(root / "sites.csv", index=False)
    return root
