"""RxRx2 as recursionpharma/rxrx-datasets' rxrx2/README.md describes it, written WITHOUT cellio.

Layout (docs/dataset_formats.md says where each fact comes from):

    OUT/rxrx2-metadata.csv     one row per site: site_id, well_id, cell_type, experiment, plate, well, site,
                               treatment, treatment_conc  (site_id "HUVEC-1_1_AA02_2", well_id "HUVEC-1_1_AA02")
    OUT/images/{experiment}/Plate{plate}/{well}_s{site}_w{channel}.png
                               e.g. images/HUVEC-1/Plate1/AA02_s2_w3.png: 8-bit greyscale PNG (1024 x 1024 in the
                               real set), channels w1..w6, sites 1..4, 1,536-well addresses (rows A..AF, 01..48)

Treatments are soluble factors at concentrations (treatment_conc, mg/mL per the README); control wells have an
empty treatment and treatment_conc (what the real file writes there is not confirmed, see the docs). Images are
cell-like with per-(treatment, concentration) channel shifts and per-plate gains. PNGs are written with Pillow.
Output is a pure function of the arguments.

    python tests/formats/rxrx2.py OUT [--size 1024] [--experiments 2] [--plates 1] [--factors 3]
                                      [--concentrations 3] [--replicates 2] [--controls 4] [--sites 4]
                                      [--strength 1.0] [--seed 0]
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cells import effect_of, parse_size, plate_gain, render_field, rng, to_uint8  # noqa: E402

N_CHANNELS = 6
ROLES = ("nucleus", "er", "actin", "rna", "mito", "membrane")
METADATA_COLUMNS = ("site_id", "well_id", "cell_type", "experiment", "plate", "well", "site", "treatment",
                    "treatment_conc")
ROWS_1536 = tuple([chr(ord("A") + i) for i in range(26)] + ["A" + chr(ord("A") + i) for i in range(6)])
FACTORS = ("IL-1 beta", "TNF-alpha", "IFN-gamma", "IL-6", "TGF-beta 1", "IL-4", "IL-13", "VEGF-A")
_LAYOUT = 201


def image_path(root: str | Path, experiment: str, plate: int, well: str, site: int, channel: int) -> Path:
    return Path(root) / "images" / experiment / f"Plate{plate}" / f"{well}_s{site}_w{channel}.png"


def plan(experiments: int = 2, plates: int = 1, factors: int = 3, concentrations: int = 3, replicates: int = 2,
         controls: int = 4, sites: int = 4, seed: int = 0) -> pd.DataFrame:
    """The site table: each factor at `concentrations` levels (log-spaced, mg/mL) in `replicates` wells a plate,
    `controls` untreated wells a plate, `sites` sites a well, wells at random 1,536-well addresses."""
    if not 1 <= sites <= 4:
        raise ValueError(f"sites must be 1..4 (RxRx2 images up to 4 sites a well), got {sites}")
    if factors > len(FACTORS):
        raise ValueError(f"at most {len(FACTORS)} factors, got {factors}")
    levels = [round(1e-4 * 10 ** (k * 3 / max(1, concentrations - 1)), 6) for k in range(concentrations)]
    rows = []
    for e in range(1, experiments + 1):
        experiment = f"HUVEC-{e}"
        for plate in range(1, plates + 1):
            wells = [(f, c) for f in FACTORS[:factors] for c in levels for _ in range(replicates)]
            wells += [(None, None)] * controls
            spots = rng(seed, _LAYOUT, experiment, plate).choice(32 * 48, size=len(wells), replace=False)
            for spot, (factor, conc) in zip(spots, wells):
                well = f"{ROWS_1536[spot // 48]}{spot % 48 + 1:02d}"
                well_id = f"{experiment}_{plate}_{well}"
                for site in range(1, sites + 1):
                    rows.append(dict(site_id=f"{well_id}_{site}", well_id=well_id, cell_type="HUVEC",
                                     experiment=experiment, plate=plate, well=well, site=site, treatment=factor,
                                     treatment_conc=conc))
    table = pd.DataFrame(rows, columns=list(METADATA_COLUMNS))
    return table.sort_values(["experiment", "plate", "well", "site"], kind="stable").reset_index(drop=True)


def site_images(row: pd.Series, shape: tuple[int, int], seed: int, strength: float, max_conc: float) -> np.ndarray:
    """The (6, H, W) uint8 images of one site."""
    if pd.isna(row["treatment"]):
        effect = effect_of(None, 0.0, seed, N_CHANNELS, ROLES)
    else:
        dose = 1.0 + math.log10(float(row["treatment_conc"]) / max_conc) / 3  # 1 at the top level, 0 three logs down
        effect = effect_of(row["treatment"], strength * max(0.2, dose), seed, N_CHANNELS, ROLES)
    gain = plate_gain(N_CHANNELS, seed, (row["experiment"], int(row["plate"])))
    ids = (row["experiment"], int(row["plate"]), row["well"], int(row["site"]))
    return to_uint8(render_field(ROLES, shape, seed, ids, effect=effect, gain=gain))


def generate(out: str | Path, size: str = "1024", experiments: int = 2, plates: int = 1, factors: int = 3,
             concentrations: int = 3, replicates: int = 2, controls: int = 4, sites: int = 4,
             strength: float = 1.0, seed: int = 0) -> Path:
    """Write the set under `out` (see the module docstring); returns `out`."""
    out = Path(out)
    shape = parse_size(size)
    table = plan(experiments, plates, factors, concentrations, replicates, controls, sites, seed)
    max_conc = float(table["treatment_conc"].max()) if table["treatment_conc"].notna().any() else 1.0
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "rxrx2-metadata.csv", index=False)
    for _, row in table.iterrows():
        images = site_images(row, shape, seed, strength, max_conc)
        for ch in range(1, N_CHANNELS + 1):
            path = image_path(out, row["experiment"], int(row["plate"]), row["well"], int(row["site"]), ch)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[ch - 1]).save(path)  # 2-D uint8: mode "L"
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--size", default="1024", help="image size WxH or N (the real set: 1024)")
    p.add_argument("--experiments", type=int, default=2)
    p.add_argument("--plates", type=int, default=1, help="plates per experiment")
    p.add_argument("--factors", type=int, default=3, help="soluble factors")
    p.add_argument("--concentrations", type=int, default=3, help="concentrations per factor")
    p.add_argument("--replicates", type=int, default=2, help="wells per (factor, concentration) a plate")
    p.add_argument("--controls", type=int, default=4, help="untreated wells a plate")
    p.add_argument("--sites", type=int, default=4, help="sites per well (1..4)")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    generate(a.out, size=a.size, experiments=a.experiments, plates=a.plates, factors=a.factors,
             concentrations=a.concentrations, replicates=a.replicates, controls=a.controls, sites=a.sites,
             strength=a.strength, seed=a.seed)


if __name__ == "__main__":
    main()
