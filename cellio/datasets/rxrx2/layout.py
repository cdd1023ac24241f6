"""RxRx2 (rxrx.ai; recursionpharma/rxrx-datasets `rxrx2/README.md`): its DatasetLayout, `RXRX2`, and the facts its
reader uses as constants (file names, the metadata columns, the image path form). Nothing here does I/O. Where each
fact comes from: docs/dataset_formats.md ("RxRx2"); how cellio reads it: docs/datasets.md.
"""
from __future__ import annotations

from ..layout import ControlGroup, DatasetLayout, IdFormats, Perturbations, PlateGeometry
from ..recursion import RECURSION_CHANNELS

__all__ = ["RXRX2", "METADATA_FILES", "METADATA_COLUMNS", "UNTREATED", "SITE_COLUMNS", "image_relpath"]

# the README names the file rxrx2-metadata.csv; the rxrx.ai download holds metadata.csv (as RxRx1's does)
METADATA_FILES = ("rxrx2-metadata.csv", "metadata.csv")
METADATA_COLUMNS = ("site_id", "well_id", "cell_type", "experiment", "plate", "well", "site", "treatment",
                    "treatment_conc")
UNTREATED = "untreated"  # the well type of a well with an empty `treatment` (no soluble factor added)

RXRX2 = DatasetLayout(
    name="rxrx2",
    version=1,
    channels=RECURSION_CHANNELS,  # cellio/datasets/recursion.py
    pixel_dtype="uint8",
    site_shape=(1024, 1024),
    sites_per_well=4,
    # wells are named like AA02 (README, and real rows AA03, AA04): 1,536-well addresses, rows A..AF, columns 01..48
    plate=PlateGeometry(rows=32, columns=48),
    perturbations=Perturbations(
        # the soluble factor; its concentration (mg/mL) rides along. 434 factors: rxrx.ai's figure, not confirmed
        # from a file here (docs/datasets.md)
        label_column="treatment", n_treatments=434, label_kind="str",
        controls=(ControlGroup(UNTREATED, ("",)),),
        well_type_column="well_type", treatment_well_type="treatment", columns=("treatment_conc",)),
    cell_types=("HUVEC",),
    splits=("train",),
    hidden_test_labels=False,
    ids=IdFormats(well="{experiment}_{plate}_{well}", site="{experiment}_{plate}_{well}_{site}"),
    description="RxRx2: HUVEC treated with soluble factors at several concentrations, six-channel 1024x1024 8-bit "
                "PNG sites, up to 4 per well of 1,536-well plates",
)

# The site table (read_sites), one row per site, in this column order; path_w* relative to the raw directory.
SITE_COLUMNS: tuple[str, ...] = ("id_code", "dataset", "experiment", "cell_type", "plate", "well", "site",
                                 "well_type", "treatment", "treatment_conc", *RXRX2.path_columns)


def image_relpath(experiment: str, plate: int, well: str, site: int, channel: int) -> str:
    """images/HUVEC-1/Plate1/AA02_s2_w3.png (POSIX, relative to the raw directory)."""
    return f"images/{experiment}/Plate{int(plate)}/{well}_s{int(site)}_w{int(channel)}.png"
