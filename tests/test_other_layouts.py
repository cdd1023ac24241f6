"""A data set that is not RxRx1 goes through the library on its layout alone: three channels with other names, one
site per well, a 96-well plate, named splits and cell types, compound labels. Its reader (written here, registered
for the test) gives the site table; ingest, the store, verify/repair, the loader (torch and DALI CPU) and the
composite then take every fact from the layout, and nothing of RxRx1's shape leaks in."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import cellio
from cellio.datasets import (Channel, ControlGroup, DatasetLayout, DatasetReader, PlateGeometry, Perturbations,
                             registry)
from cellio.errors import PipelineConfigError

H, W = 13, 19
TRI = DatasetLayout(
    name="tri", version=1,
    channels=(Channel("DNA", "dna", (0, 0, 255), (0, 120)), Channel("RNA", "rna", (0, 255, 0), (10, 200)),
              Channel("Mito", "mito", None, None)),
    pixel_dtype="uint8", site_shape=(64, 64), sites_per_well=1, plate=PlateGeometry(8, 12),
    perturbations=Perturbations("compound", 3, controls=(ControlGroup("negcon", (99,)),),
                                well_type_column="kind", treatment_well_type="trt"),
    cell_types=("U2OS", "A549"), splits=("fit", "holdout"))


def read_sites(raw: Path) -> pd.DataFrame:
    table = pd.read_csv(Path(raw) / "sites.csv", dtype={"compound": "Int64"})
    return table.astype({"plate": np.int64, "site": np.int64})


def is_raw_dir(path: Path) -> bool:
    return (Path(path) / "sites.csv").is_file()


READER = DatasetReader(TRI, "tri-png", read_sites, is_raw_dir, "a directory with sites.csv and PNGs",
                       stats_source="sites.csv")


@pytest.fixture()
def tri(monkeypatch):
    monkeypatch.setattr(registry, "_READERS", dict(registry._READERS))  # the registration ends with the test
    cellio.datasets.register_dataset(READER)
    return READER


def save_plane(root: Path, rel: str, plane: np.ndarray, row: dict, key: str) -> None:
    """One channel's PNG at root/rel, and its path and pixel statistics in the site's `row` (sites.csv's columns)."""
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(plane).save(root / rel)
    row[f"path_{key}"] = rel
    row[f"pixel_mean_{key}"] = float(plane.mean())
    row[f"pixel_std_{key}"] = float(plane.std())


def _write_raw(root: Path) -> Path:
    """12 sites: 2 plates x 3 wells x 2 splits, one site per well; a PNG per channel named by the layout's keys."""
    rng = np.random.default_rng(5)
    rows = []
    for split, exp in (("fit", "EXP-1"), ("holdout", "EXP-2")):
        for plate in (1, 2):
            for k, well in enumerate(("A01", "C07", "H12")):
                kind = "negcon" if k == 0 else "trt"
                row = {"id_code": f"{exp}_{plate}_{well}", "dataset": split, "experiment": exp,
                       "cell_type": "U2OS" if plate == 1 else "A549", "plate": plate, "well": well, "site": 1,
                       "kind": kind, "compound": 99 if kind == "negcon" else k}
                for key in TRI.channel_keys:
                    save_plane(root, f"{exp}/P{plate}/{well}_{key}.png", rng.integers(0, 256, (H, W), dtype=np.uint8),
                               row, key)
                rows.append(row)
    pd.DataFrame(rows).to_csv(root / "sites.csv", index=False)
    return root


def _planes(raw: Path, row: pd.Series) -> np.ndarray:
    return np.stack([np.asarray(Image.open(raw / row[c])) for c in TRI.path_columns], -1)


def test_another_layout_ingests_reads_verifies_and_repairs(tmp_path, tri):
    raw = _write_raw(tmp_path / "raw")
    report = cellio.ingest(raw, tmp_path / "tri.zarr", reader="tri", workers=1, progress=False, codec="lz4",
                           sites_per_shard=4, tile=8)
    assert report.n_ok == 12 and report.n_failed == 0
    store = cellio.open_store(tmp_path / "tri.zarr")
    assert store.layout == TRI.replace(site_shape=(H, W)) and store.image_shape == (H, W, 3)
    attrs = json.loads((tmp_path / "tri.zarr" / "zarr.json").read_text())["attributes"]
    assert attrs["channel_names"] == ["DNA", "RNA", "Mito"] and attrs["channels"] == [1, 2, 3]
    assert attrs["source"]["kind"] == "tri-png" and attrs["ingest"]["datasets"] == ["fit", "holdout"]
    for i in (0, 7, 11):
        np.testing.assert_array_equal(store.read_one(i), _planes(raw, store.sites.iloc[i]))
    mean, _ = store.channel_stats("plate")
    assert mean.shape == (12, 3)
    # the layout's statistics columns are checked: a swapped file is named, with the reader's stats source
    assert cellio.verify_store(tmp_path / "tri.zarr", progress=False).ok
    shard = tmp_path / "tri.zarr" / "images" / "c" / "0" / "0" / "0" / "0"  # sites 0..3
    shard.write_bytes(shard.read_bytes()[:-9] + b"garbage!!")  # the last tile of site 3
    damaged = cellio.verify_store(tmp_path / "tri.zarr", progress=False, record=False)
    assert damaged.damaged_indices == [3]
    repaired = cellio.repair_store(raw, tmp_path / "tri.zarr", workers=1, progress=False)  # the recorded reader
    assert repaired.after.ok and repaired.repaired == (0, 1, 2, 3)  # the shard, rewritten whole
    np.testing.assert_array_equal(cellio.open_store(tmp_path / "tri.zarr").read_one(3), _planes(raw, store.sites.iloc[3]))


def test_a_site_that_does_not_match_the_data_sets_statistics_is_named(tmp_path, tri):
    raw = _write_raw(tmp_path / "raw")
    table = pd.read_csv(raw / "sites.csv")
    table.loc[3, "pixel_mean_rna"] += 5.0
    table.to_csv(raw / "sites.csv", index=False)
    with pytest.raises(cellio.ImageError, match=r"_rna.png: pixel mean .* differs from sites.csv"):
        cellio.ingest(raw, tmp_path / "bad.zarr", reader="tri", workers=1, progress=False)


@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=pytest.mark.skipif(
    not __import__("cellio").dali_available(), reason="needs nvidia-dali"))])
def test_the_loader_reads_the_layouts_channels_labels_and_cell_types(tmp_path, tri, backend):
    raw = _write_raw(tmp_path / "raw")
    cellio.ingest(raw, tmp_path / "tri.zarr", reader=tri, workers=1, progress=False, codec="none")
    store = cellio.open_store(tmp_path / "tri.zarr")
    loader = cellio.create_loader(store, 3, train=True, augment="d4_photometric", crop_size=8, datasets=["fit"],
                                  backend=backend, device="cpu", num_workers=0, seed=1)
    batches = list(loader)
    assert len(batches) == 2
    for b in batches:
        assert tuple(b["image"].shape) == (3, 3, 8, 8) and b["image"].isfinite().all()
        rows = b["index"].numpy()
        sel = store.sites.iloc[rows]
        assert (b["label"].numpy() == sel["compound"].to_numpy()).all()
        assert (b["cell_type"].numpy() == sel["cell_type"].map({"U2OS": 0, "A549": 1}).to_numpy()).all()
    loader.close()
    treat = cellio.select_sites(store.sites, datasets=["fit", "holdout"], controls=False)
    assert (store.sites.iloc[treat]["kind"] == "trt").all() and len(treat) == 8
    with pytest.raises(PipelineConfigError, match=r"cell_types: expected values in \('U2OS', 'A549'\)"):
        cellio.create_loader(store, 2, crop_size=8, datasets=["fit"], cell_types=["HUVEC"], backend="torch",
                             device="cpu")
    with pytest.raises(PipelineConfigError, match=r"datasets: expected values in \('fit', 'holdout'\)"):
        cellio.select_sites(store.sites, datasets=["train"])


def test_show_renders_the_layouts_composite_and_grid(tmp_path, tri):
    from cellio.render import load_site, render_site

    raw = _write_raw(tmp_path / "raw")
    cellio.ingest(raw, tmp_path / "tri.zarr", reader="tri", workers=1, progress=False)
    image, row, layout = load_site(tmp_path / "tri.zarr", "EXP-1_2_C07", 1)
    raw_image, _, raw_layout = load_site(raw, "EXP-1_2_C07", 1)
    np.testing.assert_array_equal(image, raw_image)
    assert layout == raw_layout and row["compound"] == 1
    picture = render_site(image, layout)
    assert picture.shape == (2 * H, 2 * W + 4 + 3 * W + 4, 3)  # one row of three channels beside the composite
