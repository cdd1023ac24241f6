"""A local mirror of the Cell Painting Gallery prefix `cpg0016-jump/` (JUMP Cell Painting), written WITHOUT cellio.

Layout (source_4's, an Opera Phenix site; docs/dataset_formats.md says where each fact comes from):

    OUT/cpg0016-jump/source_4/images/{batch}/images/{plate}__{date}T{time}-Measurement1/Images/
        r{row:02d}c{col:02d}f{field:02d}p01-ch{n}sk1fk1fl1.tiff     one 16-bit greyscale TIFF per channel and field
        (ch1 Mito, ch2 AGP, ch3 RNA, ch4 ER, ch5 DNA; ch6 Brightfield_H, ch7 Brightfield_L, ch8 Brightfield)
    OUT/cpg0016-jump/source_4/images/{batch}/illum/{plate}/{plate}_Illum{Channel}.npy
        one 2-D float array (H, W) per channel; corrected = raw / illum (CellProfiler's divide)
    OUT/cpg0016-jump/source_4/workspace/load_data_csv/{batch}/{plate}/
        load_data.csv, load_data_with_illum.csv   (.csv.gz with --gzip) one row per field
        load_data_with_illum.parquet              the five fluorescence channels, every column a string
    OUT/metadata/plate.csv.gz, well.csv.gz, compound.csv.gz, crispr.csv.gz, orf.csv.gz, perturbation_control.csv
        the consortium tables (jump-cellpainting/datasets metadata/) for these plates only

load_data columns, `--columns pathname` (default): Metadata_Source, Metadata_Batch, Metadata_Plate, Metadata_Well,
Metadata_Site, FileName_Orig<Ch>, PathName_Orig<Ch> (PathName: "s3://cellpainting-gallery/cpg0016-jump/.../Images/"),
and in the _with_illum files FileName_Illum<Ch>, PathName_Illum<Ch>; `--columns url`: the Metadata columns,
Metadata_ImageSizeX/Y and URL_Orig<Ch> (+ URL_Illum<Ch>) holding full s3:// URLs. The real bucket has both forms
(see the docs); a reader maps the s3://cellpainting-gallery/ prefix onto OUT.

Images are cell-like (nuclei, cytoplasm, per-perturbation channel shifts, per-batch and per-plate gains) times the
plate's illumination function, so dividing by it recovers the flat field. Plates cycle through the COMPOUND, CRISPR
and ORF plate types; each plate holds its type's negative control and perturbations shared across plates of that
type. Written with tifffile, numpy, pandas and pyarrow. Output is a pure function of the arguments.

    python tests/formats/jump.py OUT [--plates 2] [--size 1080] [--wells 4] [--fields 9] [--columns pathname]
                                     [--gzip] [--no-brightfield] [--illum-dtype float64] [--strength 1.0]
                                     [--seed 0]
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import tifffile
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cells import effect_of, parse_size, plate_gain, render_field, rng, to_uint16  # noqa: E402

BUCKET = "s3://cellpainting-gallery/"
PROJECT = "cpg0016-jump"
SOURCE = "source_4"
FLUORESCENCE = ("DNA", "ER", "RNA", "AGP", "Mito")
BRIGHTFIELD = ("Brightfield", "Brightfield_H", "Brightfield_L")
ROLE = {"DNA": "nucleus", "ER": "er", "RNA": "rna", "AGP": "actin", "Mito": "mito", "Brightfield": "brightfield",
        "Brightfield_H": "brightfield", "Brightfield_L": "brightfield"}
PHENIX_CHANNEL = {"Mito": 1, "AGP": 2, "RNA": 3, "ER": 4, "DNA": 5, "Brightfield_H": 6, "Brightfield_L": 7,
                  "Brightfield": 8}
PLATE_TYPES = ("COMPOUND", "CRISPR", "ORF")
# the negative controls: DMSO, non-targeting guide, LacZ
NEGCON = {"COMPOUND": "JCP2022_033924", "CRISPR": "JCP2022_800002", "ORF": "JCP2022_915131"}
ROWS_384 = "ABCDEFGHIJKLMNOP"
GENES = (("TP53", "7157"), ("MTOR", "2475"), ("PLK1", "5347"), ("KRAS", "3845"), ("AKT1", "207"), ("MYC", "4609"),
         ("RAF1", "5894"), ("CDK2", "1017"))
SMILES = ("CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
          "OC1=CC=C(CCC(=O)C2=CC=CC=C2)C=C1", "CN1CCN(CC1)C1=NC2=CC=CC=C2NC2=CC=CC=C12", "Clc1ccc(cc1)C(=O)O")
PLATE_COLUMNS = ("Metadata_Source", "Metadata_Batch", "Metadata_Plate", "Metadata_PlateType")
WELL_COLUMNS = ("Metadata_Source", "Metadata_Plate", "Metadata_Well", "Metadata_JCP2022")
COMPOUND_COLUMNS = ("Metadata_JCP2022", "Metadata_InChIKey", "Metadata_InChI", "Metadata_SMILES")
CRISPR_COLUMNS = ("Metadata_JCP2022", "Metadata_NCBI_Gene_ID", "Metadata_Symbol")
ORF_COLUMNS = ("Metadata_JCP2022", "Metadata_broad_sample", "Metadata_Name", "Metadata_Vector", "Metadata_Transcript",
               "Metadata_Symbol", "Metadata_NCBI_Gene_ID", "Metadata_Taxon_ID", "Metadata_Gene_Description",
               "Metadata_Prot_Match", "Metadata_Insert_Length", "Metadata_pert_type")
CONTROL_COLUMNS = ("Metadata_JCP2022", "Metadata_pert_type", "Metadata_Name", "Metadata_modality")
GZIP = {"method": "gzip", "mtime": 0}  # no timestamp in the gzip header: the same bytes on every run
_LAYOUT, _ILLUM = 301, 302


# ----------------------------------------------------------------------------------------------- names and paths
def plate_name(i: int) -> str:
    return f"BR00{117035 + i}"


def batch_name(i: int) -> str:
    """Two plates a batch, a week apart: plates 0 and 1 in 2021_04_26_Batch1, 2 and 3 in 2021_05_03_Batch2, ..."""
    b = i // 2
    return f"{dt.date(2021, 4, 26) + dt.timedelta(weeks=b):%Y_%m_%d}_Batch{b + 1}"


def full_plate_name(i: int) -> str:
    """The plate folder as the Phenix names it: plate, acquisition start, measurement."""
    start = dt.datetime(2021, 5, 2, 16, 2, 51) + dt.timedelta(weeks=i // 2, hours=2 * (i % 2))
    return f"{plate_name(i)}__{start:%Y-%m-%dT%H_%M_%S}-Measurement1"


def phenix_file(well: str, field: int, channel: str) -> str:
    row, col = ROWS_384.index(well[0]) + 1, int(well[1:])
    return f"r{row:02d}c{col:02d}f{field:02d}p01-ch{PHENIX_CHANNEL[channel]}sk1fk1fl1.tiff"


def source_root(out: Path) -> Path:
    return out / PROJECT / SOURCE


def images_dir(out: Path, i: int) -> Path:
    return source_root(out) / "images" / batch_name(i) / "images" / full_plate_name(i) / "Images"


def illum_dir(out: Path, i: int) -> Path:
    return source_root(out) / "images" / batch_name(i) / "illum" / plate_name(i)


def load_data_dir(out: Path, i: int) -> Path:
    return source_root(out) / "workspace" / "load_data_csv" / batch_name(i) / plate_name(i)


def s3_url(out: Path, local: Path, trailing_slash: bool = False) -> str:
    """The bucket URL of a path under OUT (OUT stands for s3://cellpainting-gallery/)."""
    return BUCKET + local.relative_to(out).as_posix() + ("/" if trailing_slash else "")


# ----------------------------------------------------------------------------------------------- perturbations
def _inchikey(r: np.random.Generator) -> str:
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    return "".join(r.choice(letters, 14)) + "-" + "".join(r.choice(letters, 8)) + "SA-N"


def perturbation_tables(n_per_type: int, seed: int) -> dict[str, pd.DataFrame]:
    """compound / crispr / orf / perturbation_control tables holding the negative controls and `n_per_type`
    perturbations of each modality (JCP2022 ids in the consortium's ranges)."""
    r = rng(seed, _LAYOUT, "tables")
    compound = [("JCP2022_033924", "IAZDPXIOMUYVGZ-UHFFFAOYSA-N", "InChI=1S/C2H6OS/c1-4(2)3/h1-2H3", "CS(C)=O")]
    for k in range(n_per_type):
        compound.append((f"JCP2022_{k + 1:06d}", _inchikey(r), f"InChI=1S/C{6 + k}H{8 + k}O2/c1-2-3",
                         SMILES[k % len(SMILES)]))
    crispr = [("JCP2022_800001", None, "no-guide"), ("JCP2022_800002", None, "non-targeting")]
    orf = [("JCP2022_915131", "ccsbBroad304_99994", "LacZ", "pLX_304", None, "LacZ", None, None, None, None, None,
            "negcon")]
    for k in range(n_per_type):
        symbol, gene_id = GENES[k % len(GENES)]
        crispr.append((f"JCP2022_{800003 + k}", gene_id, symbol))
        orf.append((f"JCP2022_{900002 + k}", f"ccsbBroad304_{k + 1:05d}", f"ORF{8415 + k:06d}.1_TRC304.1", "pLX_304",
                    f"NM_{1160173 + k:09d}.3", symbol, gene_id, "9606", f"{symbol} gene product", 100.0,
                    870 + 3 * k, "trt"))
    control = [("JCP2022_033924", "negcon", "DMSO", "compound"), ("JCP2022_800001", "negcon", "no-guide", "crispr"),
               ("JCP2022_800002", "negcon", "non-targeting", "crispr"), ("JCP2022_915131", "negcon", "LacZ", "orf")]
    orf_table = pd.DataFrame(orf, columns=list(ORF_COLUMNS))
    orf_table["Metadata_Insert_Length"] = orf_table["Metadata_Insert_Length"].astype("Int64")
    return {"compound": pd.DataFrame(compound, columns=list(COMPOUND_COLUMNS)),
            "crispr": pd.DataFrame(crispr, columns=list(CRISPR_COLUMNS)),
            "orf": orf_table,
            "perturbation_control": pd.DataFrame(control, columns=list(CONTROL_COLUMNS))}


def plate_layout(i: int, n_wells: int, seed: int) -> list[tuple[str, str]]:
    """(well, JCP2022) of plate i: the negative control in one well, its type's perturbations in the others."""
    kind = PLATE_TYPES[i % len(PLATE_TYPES)]
    wells = sorted(f"{ROWS_384[s // 24]}{s % 24 + 1:02d}"
                   for s in rng(seed, _LAYOUT, plate_name(i)).choice(384, size=n_wells, replace=False))
    first = {"COMPOUND": 1, "CRISPR": 800003, "ORF": 900002}[kind]
    ids = [NEGCON[kind]] + [f"JCP2022_{first + k:06d}" for k in range(n_wells - 1)]
    return list(zip(wells, ids))


# ----------------------------------------------------------------------------------------------- pixels
def illumination(channel: str, i: int, shape: tuple[int, int], seed: int, dtype: str) -> np.ndarray:
    """A smooth illumination function, robust minimum (2nd percentile) 1, as CellProfiler rescales it."""
    h, w = shape
    r = rng(seed, _ILLUM, plate_name(i), channel)
    y = (np.arange(h) + 0.5)[:, None] / h * 2 - 1
    x = (np.arange(w) + 0.5)[None, :] / w * 2 - 1
    cy, cx = r.uniform(-0.15, 0.15, 2)
    f = np.exp(-r.uniform(0.05, 0.15) * ((x - cx) ** 2 + (y - cy) ** 2)) * (1 + r.uniform(-0.1, 0.1) * x)
    return (f / np.percentile(f, 2)).astype(dtype)


def field_images(i: int, well: str, jcp: str, field: int, channels: tuple[str, ...], shape: tuple[int, int],
                 illum: dict[str, np.ndarray], seed: int, strength: float) -> dict[str, np.ndarray]:
    """channel -> uint16 (H, W) raw image of one field: flat-field signal times the illumination function."""
    roles = tuple(ROLE[c] for c in channels)
    negcon = jcp in NEGCON.values()
    effect = effect_of(None if negcon else jcp, strength, seed, len(channels), roles)
    gain = (plate_gain(len(channels), seed, (batch_name(i),)) *
            plate_gain(len(channels), seed, (plate_name(i),), sd=0.1))
    flat = render_field(roles, shape, seed, (plate_name(i), well, field), effect=effect, gain=gain)
    out = {}
    for c, name in enumerate(channels):
        plane = flat[c]
        if name in ("Brightfield_H", "Brightfield_L"):  # the two defocused brightfield planes
            plane = gaussian_filter(plane, 1.0 + 0.5 * (name == "Brightfield_L"))
        out[name] = to_uint16(plane * illum[name])
    return out


# ----------------------------------------------------------------------------------------------- load_data
def load_data_rows(out: Path, i: int, layout: list[tuple[str, str]], fields: int, channels: tuple[str, ...],
                   shape: tuple[int, int], style: str, with_illum: bool) -> pd.DataFrame:
    rows = []
    names = sorted(channels)  # the real files list channels alphabetically
    for well, _ in layout:
        for field in range(1, fields + 1):
            row = dict(Metadata_Source=SOURCE, Metadata_Batch=batch_name(i), Metadata_Plate=plate_name(i),
                       Metadata_Well=well, Metadata_Site=field)
            if style == "pathname":
                kinds = ["Illum", "Orig"] if with_illum else ["Orig"]
                for part in ("FileName", "PathName"):
                    for kind in kinds:
                        for ch in names:
                            if kind == "Orig":
                                row[f"{part}_Orig{ch}"] = (phenix_file(well, field, ch) if part == "FileName"
                                                           else s3_url(out, images_dir(out, i), trailing_slash=True))
                            else:
                                row[f"{part}_Illum{ch}"] = (f"{plate_name(i)}_Illum{ch}.npy" if part == "FileName"
                                                            else s3_url(out, illum_dir(out, i)))
            elif style == "url":
                row["Metadata_ImageSizeX"], row["Metadata_ImageSizeY"] = shape[1], shape[0]
                for ch in names:
                    row[f"URL_Orig{ch}"] = s3_url(out, images_dir(out, i) / phenix_file(well, field, ch))
                if with_illum:
                    for ch in names:
                        row[f"URL_Illum{ch}"] = s3_url(out, illum_dir(out, i) / f"{plate_name(i)}_Illum{ch}.npy")
            else:
                raise ValueError(f"columns style {style!r}: expected 'pathname' or 'url'")
            rows.append(row)
    return pd.DataFrame(rows)


def write_plate(out: Path, i: int, layout: list[tuple[str, str]], fields: int, channels: tuple[str, ...],
                shape: tuple[int, int], style: str, gzip: bool, illum_dtype: str, seed: int, strength: float) -> None:
    illum = {ch: illumination(ch, i, shape, seed, illum_dtype) for ch in channels}
    idir = illum_dir(out, i)
    idir.mkdir(parents=True, exist_ok=True)
    for ch, f in illum.items():
        np.save(idir / f"{plate_name(i)}_Illum{ch}.npy", f)
    imdir = images_dir(out, i)
    imdir.mkdir(parents=True, exist_ok=True)
    for well, jcp in layout:
        for field in range(1, fields + 1):
            for ch, img in field_images(i, well, jcp, field, channels, shape, illum, seed, strength).items():
                tifffile.imwrite(imdir / phenix_file(well, field, ch), img, photometric="minisblack")
    ldir = load_data_dir(out, i)
    ldir.mkdir(parents=True, exist_ok=True)
    suffix, compression = (".csv.gz", GZIP) if gzip else (".csv", None)
    for stem, with_illum in (("load_data", False), ("load_data_with_illum", True)):
        load_data_rows(out, i, layout, fields, channels, shape, style, with_illum).to_csv(
            ldir / f"{stem}{suffix}", index=False, compression=compression)
    fluo = tuple(c for c in channels if c in FLUORESCENCE)
    table = load_data_rows(out, i, layout, fields, fluo, shape, "pathname", True).astype(str)
    schema = pa.schema([(c, pa.string()) for c in table.columns])  # every column a string, as in the bucket
    pq.write_table(pa.Table.from_pandas(table, schema=schema, preserve_index=False),
                   ldir / "load_data_with_illum.parquet")


def write_jump(out: str | Path, plates: int = 2, size: str = "1080", wells: int = 4, fields: int = 9,
               columns: str = "pathname", gzip: bool = False, brightfield: bool = True,
               illum_dtype: str = "float64", strength: float = 1.0, seed: int = 0) -> Path:
    """Write the mirror under `out` (see the module docstring); returns `out`."""
    if not 1 <= plates <= 20:
        raise ValueError(f"plates must be 1..20, got {plates}")
    if not 2 <= wells <= 384:
        raise ValueError(f"wells must be 2..384 (a negative control and at least one perturbation), got {wells}")
    if not 1 <= fields <= 99:
        raise ValueError(f"fields must be 1..99, got {fields}")
    if illum_dtype not in ("float32", "float64"):
        raise ValueError(f"illum_dtype must be float32 or float64, got {illum_dtype!r}")
    out = Path(out)
    shape = parse_size(size)
    channels = FLUORESCENCE + (BRIGHTFIELD if brightfield else ())
    tables = perturbation_tables(wells - 1, seed)
    plate_rows, well_rows = [], []
    for i in range(plates):
        layout = plate_layout(i, wells, seed)
        write_plate(out, i, layout, fields, channels, shape, columns, gzip, illum_dtype, seed, strength)
        plate_rows.append((SOURCE, batch_name(i), plate_name(i), PLATE_TYPES[i % len(PLATE_TYPES)]))
        well_rows += [(SOURCE, plate_name(i), well, jcp) for well, jcp in layout]
    meta = out / "metadata"
    meta.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(plate_rows, columns=list(PLATE_COLUMNS)).to_csv(meta / "plate.csv.gz", index=False,
                                                                  compression=GZIP)
    pd.DataFrame(well_rows, columns=list(WELL_COLUMNS)).to_csv(meta / "well.csv.gz", index=False, compression=GZIP)
    for name in ("compound", "crispr", "orf"):
        tables[name].to_csv(meta / f"{name}.csv.gz", index=False, compression=GZIP)
    tables["perturbation_control"].to_csv(meta / "perturbation_control.csv", index=False)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--plates", type=int, default=2)
    p.add_argument("--size", default="1080", help="image size WxH or N (source_4: 1080)")
    p.add_argument("--wells", type=int, default=4, help="wells per plate (one is the negative control)")
    p.add_argument("--fields", type=int, default=9, help="fields (sites) per well")
    p.add_argument("--columns", choices=("pathname", "url"), default="pathname",
                   help="load_data CSV columns: FileName_/PathName_ pairs or URL_")
    p.add_argument("--gzip", action="store_true", help="write load_data*.csv.gz instead of .csv")
    p.add_argument("--no-brightfield", action="store_true", help="only the five fluorescence channels")
    p.add_argument("--illum-dtype", choices=("float32", "float64"), default="float64")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    write_jump(a.out, plates=a.plates, size=a.size, wells=a.wells, fields=a.fields, columns=a.columns,
               gzip=a.gzip, brightfield=not a.no_brightfield, illum_dtype=a.illum_dtype, strength=a.strength,
               seed=a.seed)


if __name__ == "__main__":
    main()
