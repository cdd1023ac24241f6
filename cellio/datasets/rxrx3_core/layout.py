"""RxRx3-core (Hugging Face `recursionpharma/rxrx3-core`): its DatasetLayout, `RXRX3_CORE`, and the facts its
reader uses as constants (file names, the 1,536-well plate, the metadata columns, the controls). Nothing here does
I/O. Where each fact comes from: docs/dataset_formats.md ("RxRx3-core"); how cellio reads it: docs/datasets.md.
"""
from __future__ import annotations

from ..layout import ControlGroup, DatasetLayout, IdFormats, Perturbations, PlateGeometry
from ..recursion import RECURSION_CHANNELS

__all__ = ["RXRX3_CORE", "METADATA_FILE", "SHARD_GLOB", "METADATA_COLUMNS", "CONTROLS", "PERTURBATION_TYPES",
           "KEY_COLUMN", "IMAGE_COLUMN", "SITE_COLUMNS", "ROW_COLUMNS"]

METADATA_FILE = "metadata_rxrx3_core.csv"
SHARD_GLOB = "data/train-*.parquet"            # data/train-00000-of-00035.parquet ... (the dataset card's data_files)
KEY_COLUMN, IMAGE_COLUMN = "__key__", "jp2"     # "{experiment}/Plate{plate}/{address}_s1_{channel}"; struct{bytes, path}
# the ten columns of the published file, in order; a later upload adds `well_type_label` (ignored, see the docs)
METADATA_COLUMNS = ("well_id", "experiment_name", "plate", "address", "gene", "treatment", "SMILES",
                    "concentration", "perturbation_type", "cell_type")
PERTURBATION_TYPES = ("CRISPR", "COMPOUND")
# treatment value -> well type of the control wells (CRISPR experiments: gene = treatment = EMPTY_control;
# compound experiments: EMPTY_control and CRISPR_control)
CONTROLS = {"EMPTY_control": "empty_control", "CRISPR_control": "crispr_control"}

RXRX3_CORE = DatasetLayout(
    name="rxrx3-core",
    version=1,
    channels=RECURSION_CHANNELS,  # cellio/datasets/recursion.py
    pixel_dtype="uint8",
    site_shape=(512, 512),
    sites_per_well=1,
    plate=PlateGeometry(rows=32, columns=48),  # 1,536 wells: rows A..Z, AA..AF; columns 01..48
    perturbations=Perturbations(
        # the class of a well: the gene for a CRISPR well (its guides are replicates), the compound for a compound
        # well (at `concentration`), the control's name for a control
        label_column="perturbation", n_treatments=735 + 1674, label_kind="str",
        controls=tuple(ControlGroup(wt, (name,)) for name, wt in CONTROLS.items()),
        well_type_column="well_type", treatment_well_type="treatment",
        columns=("perturbation_type", "gene", "treatment", "SMILES", "concentration")),
    cell_types=("HUVEC",),
    splits=("train",),
    hidden_test_labels=False,
    ids=IdFormats(well="{experiment}_{plate}_{well}", site="{experiment}_{plate}_{well}_{site}"),
    description="RxRx3-core: 735 CRISPR knockouts (guides) and 1,674 compounds x 8 concentrations in HUVEC, "
                "six-channel 512x512 8-bit JPEG 2000 centre crops, 1 site per well of 1,536-well plates",
)

ROW_COLUMNS: tuple[str, ...] = tuple(f"row_{k}" for k in RXRX3_CORE.channel_keys)
# The site table (read_sites), one row per well (= site), in this column order. path_<key> is the parquet shard
# holding that channel's image (relative to the repository root), row_<key> its row in the shard.
SITE_COLUMNS: tuple[str, ...] = (
    "id_code", "dataset", "experiment", "cell_type", "plate", "well", "site", "well_type", "perturbation",
    "perturbation_type", "gene", "treatment", "SMILES", "concentration", *RXRX3_CORE.path_columns, *ROW_COLUMNS,
)
