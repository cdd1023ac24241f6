"""An OME-Zarr high-content-screening plate (OME-NGFF 0.4 or 0.5) written with ome-zarr-py, WITHOUT cellio.

Layout (the NGFF spec's HCS layout; docs/dataset_formats.md has the details and sources):

    OUT/{name}.ome.zarr/                plate group: "plate" metadata (rows, columns, wells, field_count, name)
        {row}/{column}/                 well group ("A/1"): "well" metadata (images: field paths "0", "1", ...)
            {field}/                    image group: "multiscales" (axes c,y,x or t,c,z,y,x; one dataset per
                                        resolution level, paths as ome-zarr-py names them) and "omero" (channel
                                        labels)
    OUT/{name}.perturbations.csv        the table a user gives with such a plate: plate, well (A01), perturbation,
                                        perturbation_type, concentration

NGFF 0.4 is Zarr v2 (metadata in .zattrs), NGFF 0.5 is Zarr v3 (metadata in zarr.json under "ome"); ome-zarr-py
(`ome_zarr.writer.write_plate_metadata`, `write_well_metadata`, `write_image`) writes both, so both are written with
it. One well position of the grid is left empty (the spec: no group for a well without images). Images are
cell-like with per-perturbation channel shifts and a per-plate gain. Output is a pure function of the arguments.

    python tests/formats/ome_zarr_plate.py OUT [--version 0.5] [--dtype uint16] [--axes cyx] [--size 70x53]
                                           [--rows 2] [--columns 3] [--fields 2] [--levels 2] [--name plate1]
                                           [--strength 1.0] [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.scale import Methods

with warnings.catch_warnings():  # ome-zarr-py 0.18's own module builds a deprecated Scaler as a default argument
    warnings.filterwarnings("ignore", "Call to deprecated class Scaler", DeprecationWarning)
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cells import effect_of, parse_size, plate_gain, render_field, to_uint8, to_uint16  # noqa: E402

CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")
ROLES = ("nucleus", "er", "rna", "actin", "mito")
COLORS = ("0000FF", "00FF00", "FFFF00", "FF0000", "FF00FF")
FORMATS = {"0.4": FormatV04(), "0.5": FormatV05()}
AXES = {"cyx": ("c", "y", "x"), "tczyx": ("t", "c", "z", "y", "x")}
TIMEPOINTS, PLANES = 2, 3  # the tczyx variant's t and z sizes
PERTURBATION_COLUMNS = ("plate", "well", "perturbation", "perturbation_type", "concentration")
COMPOUNDS = ("cmpd-A", "cmpd-B", "cmpd-C")
CONCENTRATIONS = (0.1, 1.0, 10.0)


def well_names(rows: int, columns: int) -> list[tuple[str, str]]:
    """(row, column) names of the wells written: the whole grid but its last position (left empty)."""
    if not 1 <= rows <= 26 or not 1 <= columns <= 48:
        raise ValueError(f"rows must be 1..26 and columns 1..48, got {rows} x {columns}")
    grid = [(chr(ord("A") + r), str(c + 1)) for r in range(rows) for c in range(columns)]
    return grid[:-1] if len(grid) > 1 else grid


def perturbation_table(name: str, wells: list[tuple[str, str]]) -> pd.DataFrame:
    """Well -> perturbation: the first well of each row is the DMSO control, the others cycle through compounds
    at concentrations."""
    rows, k = [], 0
    for row, col in wells:
        if col == "1":
            rows.append((name, f"{row}{int(col):02d}", "DMSO", "control", None))
        else:
            rows.append((name, f"{row}{int(col):02d}", COMPOUNDS[k % len(COMPOUNDS)], "compound",
                         CONCENTRATIONS[(k // len(COMPOUNDS)) % len(CONCENTRATIONS)]))
            k += 1
    return pd.DataFrame(rows, columns=list(PERTURBATION_COLUMNS))


def field_image(name: str, well: str, field: int, perturbation: str | None, shape: tuple[int, int], axes: str,
                dtype: str, seed: int, strength: float) -> np.ndarray:
    """One field of view in the axes' order (c, y, x) or (t, c, z, y, x), in `dtype`."""
    effect = effect_of(perturbation, strength, seed, len(CHANNELS), ROLES)
    gain = plate_gain(len(CHANNELS), seed, (name,))
    quantise = to_uint8 if dtype == "uint8" else to_uint16
    if axes == "cyx":
        return quantise(render_field(ROLES, shape, seed, (name, well, field), effect=effect, gain=gain))
    stack = np.empty((TIMEPOINTS, len(CHANNELS), PLANES) + shape, dtype)
    for t in range(TIMEPOINTS):
        flat = render_field(ROLES, shape, seed, (name, well, field, t), effect=effect, gain=gain)
        for z in range(PLANES):  # planes away from focus are blurred
            sigma = abs(z - PLANES // 2)
            stack[t, :, z] = quantise(gaussian_filter(flat, (0, sigma, sigma)) if sigma else flat)
    return stack


def write_ome_zarr_plate(out: str | Path, version: str = "0.5", dtype: str = "uint16", axes: str = "cyx",
                         size: str = "70x53", rows: int = 2, columns: int = 3, fields: int = 2, levels: int = 2,
                         name: str = "plate1", strength: float = 1.0, seed: int = 0) -> Path:
    """Write OUT/{name}.ome.zarr and OUT/{name}.perturbations.csv; returns the plate group's path."""
    if version not in FORMATS:
        raise ValueError(f"version must be one of {sorted(FORMATS)}, got {version!r}")
    if dtype not in ("uint8", "uint16"):
        raise ValueError(f"dtype must be uint8 or uint16, got {dtype!r}")
    if axes not in AXES:
        raise ValueError(f"axes must be one of {sorted(AXES)}, got {axes!r}")
    if not 1 <= fields <= 16 or not 1 <= levels <= 4:
        raise ValueError(f"fields must be 1..16 and levels 1..4, got {fields} and {levels}")
    fmt = FORMATS[version]
    shape = parse_size(size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wells = well_names(rows, columns)
    table = perturbation_table(name, wells)
    table.to_csv(out / f"{name}.perturbations.csv", index=False)
    path = out / f"{name}.ome.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    write_plate_metadata(root, [chr(ord("A") + r) for r in range(rows)], [str(c + 1) for c in range(columns)],
                         [f"{r}/{c}" for r, c in wells], fmt=fmt, field_count=fields, name=name)
    top = 255 if dtype == "uint8" else 65535
    omero = {"channels": [{"label": ch, "color": color, "active": True,
                           "window": {"min": 0, "max": top, "start": 0, "end": top // 2}}
                          for ch, color in zip(CHANNELS, COLORS)]}
    chunks = (1,) + shape if axes == "cyx" else (1, 1, 1) + shape
    perturbation_of = dict(zip(table["well"], table["perturbation"]))
    for row, col in wells:
        well_group = root.require_group(row).require_group(col)
        write_well_metadata(well_group, [{"path": str(f)} for f in range(fields)], fmt=fmt)
        well = f"{row}{int(col):02d}"
        perturbation = None if perturbation_of[well] == "DMSO" else perturbation_of[well]
        for f in range(fields):
            image = field_image(name, well, f, perturbation, shape, axes, dtype, seed, strength)
            write_image(image, well_group.require_group(str(f)), scale_factors=[2 ** k for k in range(1, levels)],
                        method=Methods.NEAREST, fmt=fmt, axes=list(AXES[axes]),
                        storage_options={"chunks": chunks}, omero=omero)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--version", choices=sorted(FORMATS), default="0.5", help="OME-NGFF version")
    p.add_argument("--dtype", choices=("uint8", "uint16"), default="uint16")
    p.add_argument("--axes", choices=sorted(AXES), default="cyx")
    p.add_argument("--size", default="70x53", help="field size WxH or N")
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--columns", type=int, default=3)
    p.add_argument("--fields", type=int, default=2, help="fields of view per well")
    p.add_argument("--levels", type=int, default=2, help="resolution levels (1 = full resolution only)")
    p.add_argument("--name", default="plate1")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    write_ome_zarr_plate(a.out, version=a.version, dtype=a.dtype, axes=a.axes, size=a.size, rows=a.rows,
                         columns=a.columns, fields=a.fields, levels=a.levels, name=a.name, strength=a.strength,
                         seed=a.seed)


if __name__ == "__main__":
    main()
