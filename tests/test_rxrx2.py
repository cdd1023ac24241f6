"""The RxRx2 reader (cellio/datasets/rxrx2/) on sets written in the README's layout by the independent generator
tests/formats/rxrx2.py: the site table (its path columns name each channel's PNG: pixels checked with Pillow against
the generator's own images), the registry telling RxRx2 from RxRx1, bad metadata rows listed, and missing files
and wells with fewer than four sites recorded. Images are 17 wide and 11 high, so an H/W mix-up fails."""
from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cellio.datasets import find_dataset, get_dataset
from cellio.datasets.rxrx2 import READER, RXRX2
from cellio.datasets.rxrx2.layout import SITE_COLUMNS
from cellio.datasets.rxrx2.reader import read_sites
from cellio.errors import ImageError, MetadataError

sys.path.insert(0, str(Path(__file__).parent / "formats"))
import rxrx2 as gen  # noqa: E402

W, H = 17, 11
KW = dict(size=f"{W}x{H}", experiments=2, plates=1, factors=2, concentrations=2, replicates=1, controls=2, sites=4,
          strength=1.0, seed=4)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return gen.generate(tmp_path_factory.mktemp("rxrx2") / "rxrx2", **KW)


def _copy(raw: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(raw, out)
    return out


def test_the_site_table_names_each_channel_png(raw):
    t = read_sites(raw)
    meta = pd.read_csv(raw / "rxrx2-metadata.csv")
    assert list(t.columns) == list(SITE_COLUMNS) and len(t) == len(meta) == 2 * (2 * 2 + 2) * 4
    assert t.attrs["layout"] is RXRX2 and t.attrs["raw_dir"] == str(raw.resolve())
    assert t.attrs["missing_files"] == [] and t.attrs["incomplete_wells"] == []
    assert list(zip(t["experiment"], t["plate"], t["well"], t["site"])) == \
        sorted(zip(t["experiment"], t["plate"], t["well"], t["site"]))
    assert t["plate"].dtype == np.int64 and t["site"].dtype == np.int64 and t["treatment_conc"].dtype == np.float64
    by_site = t.set_index(t["id_code"] + "_" + t["site"].astype(str))
    for _, m in meta.iterrows():
        s = by_site.loc[m["site_id"]]
        assert (s["experiment"], s["plate"], s["well"], s["site"]) == (m["experiment"], m["plate"], m["well"],
                                                                          m["site"])
        if pd.isna(m["treatment"]):
            assert s["well_type"] == "untreated" and s["treatment"] == "" and np.isnan(s["treatment_conc"])
        else:
            assert s["well_type"] == "treatment" and s["treatment"] == m["treatment"]
            assert s["treatment_conc"] == m["treatment_conc"]
    # the path columns point at the generator's files, channel by channel: Pillow reads what the generator drew
    max_conc = float(meta["treatment_conc"].max())
    for i in (0, 13, len(t) - 1):
        s = t.iloc[i]
        m = meta[meta["site_id"] == f"{s['id_code']}_{s['site']}"].iloc[0]
        want = gen.site_images(m, (H, W), KW["seed"], KW["strength"], max_conc)
        for c, col in enumerate(RXRX2.path_columns):
            assert s[col] == f"images/{s['experiment']}/Plate{s['plate']}/{s['well']}_s{s['site']}_w{c + 1}.png"
            with Image.open(raw / s[col]) as im:
                assert im.mode == "L" and im.size == (W, H)
                np.testing.assert_array_equal(np.asarray(im), want[c])


def test_the_registry_tells_rxrx2_from_rxrx1(raw, tmp_path):
    assert get_dataset("rxrx2") is READER and READER.read_site is None  # the ingest's PNG route
    assert READER.layout.sites_per_well == 4 and READER.layout.site_shape == (1024, 1024)
    assert find_dataset(raw) is READER
    root = _copy(raw, tmp_path)
    (root / "rxrx2-metadata.csv").rename(root / "metadata.csv")  # the rxrx.ai download's name
    assert find_dataset(root) is READER and len(read_sites(root)) == len(read_sites(raw))
    rxrx1 = tmp_path / "rxrx1"
    rxrx1.mkdir()
    (rxrx1 / "metadata.csv").write_text("site_id,well_id,cell_type,dataset,experiment,plate,well,site,well_type,"
                                        "sirna,sirna_id\n")
    assert find_dataset(rxrx1).name == "rxrx1"


def test_bad_metadata_rows_are_all_listed(raw, tmp_path):
    root = _copy(raw, tmp_path)
    meta = pd.read_csv(root / "rxrx2-metadata.csv", dtype=str, keep_default_na=False)
    meta.loc[0, "experiment"] = "HUVEC1"
    meta.loc[1, "site"] = "5"
    meta.loc[2, "site_id"] = "x"
    meta.loc[4, "well"] = "AG01"
    meta.loc[5, "treatment_conc"] = "lots"
    meta.loc[9, ["treatment", "treatment_conc"]] = ["TNF-alpha", "0.5"]  # site 2 of a well whose other sites differ
    meta.loc[12, "cell_type"] = "HEPG2"
    meta.to_csv(root / "rxrx2-metadata.csv", index=False)
    with pytest.raises(MetadataError) as err:
        read_sites(root)
    msg = str(err.value)
    for part in ("row 1 (line 2), column 'experiment': found 'HUVEC1', expected '{cell_type}-{number}'",
                 "row 2 (line 3), column 'site': found '5', expected an integer in 1..4",
                 "row 3 (line 4), column 'site_id': found 'x', expected '{well_id}_{site}'",
                 "row 5 (line 6), column 'well': found 'AG01', expected a 1,536-well address",
                 "row 5 (line 6), column 'well_id'",
                 "row 6 (line 7), column 'treatment_conc': found 'lots', expected a positive number",
                 "row 10 (line 11), column 'treatment': found 'TNF-alpha', expected the same treatment and "
                 "treatment_conc on every site of the well",
                 "row 13 (line 14), column 'cell_type': found 'HEPG2', expected the text before '-' in experiment"):
        assert part in msg, (part, msg)


def test_missing_metadata_or_columns_are_named(raw, tmp_path):
    root = _copy(raw, tmp_path)
    meta = pd.read_csv(root / "rxrx2-metadata.csv")
    meta.drop(columns="treatment_conc").to_csv(root / "rxrx2-metadata.csv", index=False)
    with pytest.raises(MetadataError, match=r"rxrx2-metadata.csv \(header, line 1\): missing column\(s\) "
                                            r"\['treatment_conc'\]"):
        read_sites(root)
    (root / "rxrx2-metadata.csv").unlink()
    with pytest.raises(MetadataError, match=r"no RxRx2 metadata file; expected one of \['rxrx2-metadata.csv', "
                                            r"'metadata.csv'\]"):
        read_sites(root)


def test_a_site_missing_channel_files_is_recorded_and_ingest_names_the_file(raw, tmp_path, caplog):
    from cellio.ingestion.png import decode_png

    root = _copy(raw, tmp_path)
    t = read_sites(root)
    one = t.iloc[5]
    (root / one["path_w3"]).unlink()  # one channel of one site
    whole = t.iloc[9]
    for col in RXRX2.path_columns:  # every channel of another site
        (root / whole[col]).unlink()
    with caplog.at_level(logging.WARNING, logger="cellio.datasets.rxrx2"):
        t2 = read_sites(root)
    assert len(t2) == len(t)  # kept: the ingest records them (or stops) per on_error, and a rerun resumes
    assert t2.attrs["missing_files"] == [
        {"id_code": one["id_code"], "site": int(one["site"]), "missing": [one["path_w3"]]},
        {"id_code": whole["id_code"], "site": int(whole["site"]), "missing": [whole[c] for c in RXRX2.path_columns]}]
    assert "2 site(s) of the metadata lack channel files" in caplog.text and one["path_w3"] in caplog.text
    with pytest.raises(ImageError, match=rf"{one['path_w3']}: channel file is missing"):
        decode_png(os.path.join(t2.attrs["raw_dir"], one["path_w3"]), (H, W))


def test_a_well_with_fewer_than_four_sites_is_kept_and_recorded(raw, tmp_path, caplog):
    root = _copy(raw, tmp_path)
    meta = pd.read_csv(root / "rxrx2-metadata.csv")
    dropped = meta.iloc[2]  # site 3 of the first well: its images stay on disk, unlisted
    meta.drop(index=2).to_csv(root / "rxrx2-metadata.csv", index=False)
    with caplog.at_level(logging.INFO, logger="cellio.datasets.rxrx2"):
        t = read_sites(root)
    assert len(t) == len(meta) - 1
    assert t.attrs["incomplete_wells"] == [{"id_code": dropped["well_id"], "sites": [1, 2, 4]}]
    assert "6 image file(s) under images/ belong to no site of the metadata" in caplog.text
    assert "1 well(s) have fewer than 4 sites" in caplog.text
