"""RxRx3-core as the Hugging Face repository `recursionpharma/rxrx3-core` lays it out, written WITHOUT cellio.

Layout (docs/dataset_formats.md says where each fact comes from):

    OUT/metadata_rxrx3_core.csv          one row per well: well_id, experiment_name, plate, address, gene,
                                         treatment, SMILES, concentration, perturbation_type, cell_type
    OUT/data/train-00000-of-0000N.parquet  one row per channel image: `__key__` (string,
                                         "{experiment_name}/Plate{plate}/{address}_s1_{channel}", channel 1..6) and
                                         `jp2` (struct<bytes: binary, path: string>, the Hugging Face Image
                                         feature; path is the file name "{address}_s1_{channel}.jp2"); the six
                                         channels of a well are consecutive rows in channel order, and a well may
                                         straddle two shards (as in the real shards).

Images: 8-bit single-channel JPEG 2000 (JP2 container), encoded losslessly with imagecodecs' `jpeg2k_encode` so a
pixel round trip can be checked (the real files are lossy: their bytes differ, the container does not).
Plates are 1,536-well (rows A..Z, AA..AF; columns 01..48; address "AF48"), one site per well.

`write_rxrx3_core(out_dir, metadata, image_of)` writes any well table with any images (another generator, e.g. a
biology-driven one for phenomic maps, passes its own); the CLI writes a small default set: gene experiments
(genes with several guides, EMPTY_control wells) and a compound experiment (compounds at 8 concentrations,
EMPTY_control and CRISPR_control wells), cell-like images with per-perturbation channel shifts and per-plate gains.
Output is a pure function of the arguments.

    python tests/formats/rxrx3_core.py OUT [--size 64] [--genes 4] [--guides 3] [--compounds 3] [--plates 2]
                                           [--rows-per-shard 500] [--strength 1.0] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Callable

import imagecodecs
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cells import effect_of, parse_size, plate_gain, render_field, rng, to_uint8  # noqa: E402

N_CHANNELS = 6
ROLES = ("nucleus", "er", "actin", "rna", "mito", "membrane")  # w1..w6 as in Recursion's RxRx sets
ROWS_1536 = tuple([chr(ord("A") + i) for i in range(26)] + ["A" + chr(ord("A") + i) for i in range(6)])
COLUMNS_1536 = tuple(range(1, 49))
METADATA_COLUMNS = ("well_id", "experiment_name", "plate", "address", "gene", "treatment", "SMILES",
                    "concentration", "perturbation_type", "cell_type")
CONCENTRATIONS = (0.0025, 0.01, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0)  # the 8 levels of the compound experiments
ROW_GROUP_ROWS = 100  # rows per parquet row group, as reported for the public shards
IMAGE_FEATURES = {"info": {"features": {"__key__": {"dtype": "string", "_type": "Value"}, "jp2": {"_type": "Image"}}}}
SCHEMA = pa.schema([("__key__", pa.string()),
                    ("jp2", pa.struct([("bytes", pa.binary()), ("path", pa.string())]))],
                   metadata={"huggingface": json.dumps(IMAGE_FEATURES)})
_ADDRESS = re.compile(r"^(A[A-F]|[A-Z])(\d{2})$")
_LAYOUT, _GUIDE = 101, 102  # seeded-generator purposes (cells.py uses 1..5)


def address_1536(index: int) -> str:
    """The index-th well of a 1,536-well plate in row-major order: 0 -> 'A01', 47 -> 'A48', 48 -> 'B01'."""
    if not 0 <= index < len(ROWS_1536) * len(COLUMNS_1536):
        raise ValueError(f"well index {index} is outside a 1,536-well plate (0..1535)")
    return f"{ROWS_1536[index // 48]}{COLUMNS_1536[index % 48]:02d}"


def image_key(experiment: str, plate: int, address: str, channel: int) -> str:
    return f"{experiment}/Plate{int(plate)}/{address}_s1_{channel}"


def encode_jp2(image: np.ndarray) -> bytes:
    """One 2-D uint8 image as lossless JPEG 2000 in the JP2 container."""
    return imagecodecs.jpeg2k_encode(image, level=0, reversible=True, codecformat=imagecodecs.JPEG2K.CODEC.JP2)


def _check_metadata(metadata: pd.DataFrame) -> None:
    missing = [c for c in METADATA_COLUMNS if c not in metadata.columns]
    if missing:
        raise ValueError(f"metadata lacks column(s) {missing}; expected at least {list(METADATA_COLUMNS)}")
    for i, row in enumerate(metadata.itertuples(index=False)):
        m = _ADDRESS.match(str(row.address))
        if m is None or not 1 <= int(m.group(2)) <= 48:
            raise ValueError(f"metadata row {i}: address {row.address!r} is not a 1,536-well address (A01..AF48)")
        expected = f"{row.experiment_name}_{int(row.plate)}_{row.address}"
        if row.well_id != expected:
            raise ValueError(f"metadata row {i}: well_id {row.well_id!r}, expected {expected!r}")
    if metadata["well_id"].duplicated().any():
        dup = metadata.loc[metadata["well_id"].duplicated(), "well_id"].iloc[0]
        raise ValueError(f"metadata: well_id {dup!r} appears more than once")


def write_rxrx3_core(out_dir: str | Path, metadata: pd.DataFrame,
                     image_of: Callable[[pd.Series], np.ndarray], rows_per_shard: int = 500) -> list[Path]:
    """Write `metadata` as OUT/metadata_rxrx3_core.csv and its wells' images as parquet shards OUT/data/train-*.

    `metadata` needs at least METADATA_COLUMNS (extra columns are written too, in the frame's order); `image_of(row)`
    returns the well's (6, H, W) uint8 images (channels w1..w6). Rows are written in the frame's order, 6 parquet
    rows per well, `rows_per_shard` parquet rows per shard (a well may straddle two shards when it is not a
    multiple of 6). Returns the shard paths."""
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    _check_metadata(metadata)
    out = Path(out_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    metadata.to_csv(out / "metadata_rxrx3_core.csv", index=False)
    n_shards = max(1, math.ceil(len(metadata) * N_CHANNELS / rows_per_shard))
    paths = [out / "data" / f"train-{i:05d}-of-{n_shards:05d}.parquet" for i in range(n_shards)]
    keys: list[str] = []
    blobs: list[dict] = []
    shard = 0

    def flush() -> None:
        nonlocal shard, keys, blobs
        table = pa.Table.from_arrays([pa.array(keys, pa.string()), pa.array(blobs, SCHEMA.field("jp2").type)],
                                     schema=SCHEMA)
        pq.write_table(table, paths[shard], row_group_size=ROW_GROUP_ROWS)
        shard, keys, blobs = shard + 1, [], []

    for _, row in metadata.iterrows():
        images = np.asarray(image_of(row))
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[0] != N_CHANNELS:
            raise ValueError(f"image_of({row['well_id']}) gave {images.dtype} {images.shape}; expected uint8 "
                             f"({N_CHANNELS}, H, W)")
        for ch in range(1, N_CHANNELS + 1):
            keys.append(image_key(row["experiment_name"], row["plate"], row["address"], ch))
            blobs.append({"bytes": encode_jp2(images[ch - 1]), "path": f"{row['address']}_s1_{ch}.jp2"})
            if len(keys) == rows_per_shard:
                flush()
    if keys:
        flush()
    return paths


# ----------------------------------------------------------------------------------------------- default set
def default_metadata(genes: int = 4, guides: int = 3, compounds: int = 3, plates: int = 2,
                     gene_experiments: int = 2, seed: int = 0) -> pd.DataFrame:
    """A small well table in RxRx3-core's form: gene experiments (each guide in 2 wells a plate, 4 EMPTY_control
    wells) and one compound experiment (each compound at the 8 concentrations, 4 EMPTY_control and 4
    CRISPR_control wells), all HUVEC, wells at random 1,536-well addresses."""
    gene_names = [f"GENE{i + 1}" for i in range(genes)]
    compound_names = [f"Compound-{chr(ord('A') + i)}" for i in range(compounds)]
    rows = []

    def place(experiment: str, plate: int, wells: list[dict]) -> None:
        spots = rng(seed, _LAYOUT, experiment, plate).choice(1536, size=len(wells), replace=False)
        for spot, well in zip(spots, wells):
            address = address_1536(int(spot))
            rows.append(dict(well_id=f"{experiment}_{plate}_{address}", experiment_name=experiment, plate=plate,
                             address=address, cell_type="HUVEC", **well))

    for e in range(gene_experiments):
        experiment = f"gene-{e + 1:03d}"
        for plate in range(1, plates + 1):
            wells = [dict(gene=g, treatment=f"{g}_guide_{k + 1}", SMILES=None, concentration=None,
                          perturbation_type="CRISPR") for g in gene_names for k in range(guides) for _ in range(2)]
            wells += [dict(gene="EMPTY_control", treatment="EMPTY_control", SMILES=None, concentration=None,
                           perturbation_type="CRISPR")] * 4
            place(experiment, plate, wells)
    for plate in range(1, plates + 1):
        wells = [dict(gene=None, treatment=c, SMILES=_smiles(i), concentration=conc, perturbation_type="COMPOUND")
                 for i, c in enumerate(compound_names) for conc in CONCENTRATIONS]
        wells += [dict(gene=None, treatment=t, SMILES=None, concentration=None, perturbation_type="COMPOUND")
                  for t in ("EMPTY_control", "CRISPR_control") for _ in range(4)]
        place("compound-001", plate, wells)
    table = pd.DataFrame(rows, columns=list(METADATA_COLUMNS))
    return table.sort_values(["experiment_name", "plate", "address"], kind="stable").reset_index(drop=True)


def _smiles(i: int) -> str:
    return ("CC(=O)Oc1ccccc1C(=O)O", "CN1CCN(CC1)C1=NC2=CC=CC=C2NC2=CC=CC=C12", "OC1=CC=C(CCC(=O)C2=CC=CC=C2)C=C1",
            "CC(C)Cc1ccc(cc1)C(C)C(=O)O")[i % 4] + "C" * (i // 4)


def default_images(shape: tuple[int, int], seed: int, strength: float) -> Callable[[pd.Series], np.ndarray]:
    """image_of for the default set: a gene's guides share the gene's effect at a per-guide efficiency, a
    compound's effect grows with log concentration, controls are neutral; each (experiment, plate) has its gain."""
    def image_of(row: pd.Series) -> np.ndarray:
        treatment = str(row["treatment"])
        if treatment in ("EMPTY_control", "CRISPR_control"):
            effect = effect_of(None, 0.0, seed, N_CHANNELS, ROLES)
        elif row["perturbation_type"] == "CRISPR":
            efficiency = 0.6 + 0.4 * float(rng(seed, _GUIDE, treatment).uniform())
            effect = effect_of(row["gene"], strength * efficiency, seed, N_CHANNELS, ROLES)
        else:
            dose = math.log10(float(row["concentration"]) / CONCENTRATIONS[0]) / math.log10(
                CONCENTRATIONS[-1] / CONCENTRATIONS[0])
            effect = effect_of(treatment, strength * (0.25 + 0.75 * dose), seed, N_CHANNELS, ROLES)
        gain = plate_gain(N_CHANNELS, seed, (row["experiment_name"], int(row["plate"])))
        field = render_field(ROLES, shape, seed, (row["experiment_name"], int(row["plate"]), row["address"]),
                             effect=effect, gain=gain)
        return to_uint8(field)
    return image_of


def generate(out: str | Path, size: str = "64", genes: int = 4, guides: int = 3, compounds: int = 3,
             plates: int = 2, rows_per_shard: int = 500, strength: float = 1.0, seed: int = 0) -> Path:
    """The default set under `out` (see the module docstring)."""
    metadata = default_metadata(genes=genes, guides=guides, compounds=compounds, plates=plates, seed=seed)
    write_rxrx3_core(out, metadata, default_images(parse_size(size), seed, strength), rows_per_shard=rows_per_shard)
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--size", default="64", help="image size WxH or N (the real set: 512)")
    p.add_argument("--genes", type=int, default=4)
    p.add_argument("--guides", type=int, default=3, help="guides per gene")
    p.add_argument("--compounds", type=int, default=3)
    p.add_argument("--plates", type=int, default=2, help="plates per experiment")
    p.add_argument("--rows-per-shard", type=int, default=500)
    p.add_argument("--strength", type=float, default=1.0, help="perturbation effect strength (0: none)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    generate(a.out, size=a.size, genes=a.genes, guides=a.guides, compounds=a.compounds, plates=a.plates,
             rows_per_shard=a.rows_per_shard, strength=a.strength, seed=a.seed)


if __name__ == "__main__":
    main()
