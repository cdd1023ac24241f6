"""The RxRx3-core reader (cellio/datasets/rxrx3_core/) on sets written in the exact Hugging Face format by the
independent generator tests/formats/rxrx3_core.py: the site table, read_site's pixels against a direct pyarrow +
imagecodecs decode of the generator's shards (and the generator's own images), the shard-by-shard key index (never
the image column), the per-process row-group cache, object storage through fsspec, and every bad input named.
Images are 17 wide and 11 high, so an H/W mix-up fails."""
from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cellio.datasets import find_dataset, get_dataset
from cellio.datasets.rxrx3_core import RXRX3_CORE, READER
from cellio.datasets.rxrx3_core import shards as shards_mod
from cellio.datasets.rxrx3_core.layout import SITE_COLUMNS
from cellio.datasets.rxrx3_core.reader import read_site, read_sites
from cellio.errors import ImageError, MetadataError

sys.path.insert(0, str(Path(__file__).parent / "formats"))
import rxrx3_core as gen  # noqa: E402

W, H = 17, 11
SEED, STRENGTH = 5, 1.0


def _write(out: Path, rows_per_shard: int = 7, **kw) -> Path:
    return gen.generate(out, size=f"{W}x{H}", genes=2, guides=2, compounds=1, plates=1,
                        rows_per_shard=rows_per_shard, seed=SEED, strength=STRENGTH, **kw)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """40 wells; 7 parquet rows a shard: wells straddle shards (7 is not a multiple of 6)."""
    return _write(tmp_path_factory.mktemp("rxrx3") / "rxrx3-core")


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    monkeypatch.setattr(shards_mod, "_CACHE", None)


def _copy(raw: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(raw, out)
    return out


def _shard_rows(root: Path) -> dict[str, tuple[str, int, bytes | None]]:
    """key -> (shard, row, jp2 bytes), read with pyarrow directly (the whole table: fine for a test set)."""
    out = {}
    for shard in sorted((root / "data").glob("train-*.parquet")):
        for i, r in enumerate(pq.read_table(shard).to_pylist()):
            out[r["__key__"]] = (f"data/{shard.name}", i, r["jp2"]["bytes"] if r["jp2"] else None)
    return out


def _edit_shard(path: Path, edit) -> None:
    """Rewrite one shard after `edit(list of row dicts) -> list of row dicts`, keeping its schema."""
    table = pq.read_table(path)
    rows = edit(table.to_pylist())
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path, row_group_size=gen.ROW_GROUP_ROWS)


def _shard_of(root: Path, key: str) -> tuple[Path, int]:
    shard, row, _ = _shard_rows(root)[key]
    return root / shard, row


# ----------------------------------------------------------------------------------------------- the site table
def test_the_site_table_joins_metadata_and_keys(raw):
    t = read_sites(raw)
    meta = pd.read_csv(raw / "metadata_rxrx3_core.csv")
    assert list(t.columns) == list(SITE_COLUMNS) and len(t) == len(meta)
    assert sorted(t["id_code"]) == sorted(meta["well_id"]) and t.index.equals(pd.RangeIndex(len(t)))
    assert t.attrs["layout"] is RXRX3_CORE and t.attrs["raw_dir"] == str(raw.resolve()) and t.attrs["skipped"] == []
    assert (t["site"] == 1).all() and (t["dataset"] == "train").all() and t["plate"].dtype == np.int64
    by_id = t.set_index("id_code")
    for _, m in meta.iterrows():
        s = by_id.loc[m["well_id"]]
        assert (s["experiment"], s["plate"], s["well"]) == (m["experiment_name"], m["plate"], m["address"])
        if m["treatment"] in ("EMPTY_control", "CRISPR_control"):
            assert s["well_type"] == m["treatment"].lower() and s["perturbation"] == m["treatment"]
            assert np.isnan(s["concentration"])
        elif m["perturbation_type"] == "CRISPR":
            assert s["well_type"] == "treatment" and s["perturbation"] == m["gene"] and s["treatment"] == m["treatment"]
        else:
            assert s["perturbation"] == m["treatment"] and s["concentration"] == m["concentration"]
            assert s["SMILES"] == m["SMILES"] and s["gene"] == ""
    # every (path_wc, row_wc) holds that well's channel c: checked against pyarrow's own read of the shards
    keys = _shard_rows(raw)
    for _, s in t.iterrows():
        for c, k in enumerate(RXRX3_CORE.channel_keys, start=1):
            shard, row, _ = keys[f"{s['experiment']}/Plate{s['plate']}/{s['well']}_s1_{c}"]
            assert (s[f"path_{k}"], s[f"row_{k}"]) == (shard, row)
    assert (t["path_w1"] != t["path_w6"]).any()  # some wells straddle two shards, as in the real set
    # store order is shard order: consecutive sites read consecutive rows
    assert list(zip(t["path_w1"], t["row_w1"])) == sorted(zip(t["path_w1"], t["row_w1"]))


def test_the_registry_knows_rxrx3_core(raw, tmp_path):
    assert get_dataset("rxrx3-core") is READER and READER.read_site is read_site
    assert READER.layout.plate.wells[-1] == "AF48" and len(READER.layout.wells) == 1536
    assert find_dataset(raw) is READER and not READER.is_raw_dir(tmp_path)
    assert READER.layout.perturbations.control_labels == ("EMPTY_control", "CRISPR_control")


# ----------------------------------------------------------------------------------------------- pixels
def test_read_site_gives_the_pixels_pyarrow_and_imagecodecs_read(raw):
    t = read_sites(raw)
    keys = _shard_rows(raw)
    image_of = gen.default_images((H, W), SEED, STRENGTH)
    meta = pd.read_csv(raw / "metadata_rxrx3_core.csv").set_index("well_id")
    for i, s in t.iterrows():
        got = read_site(t.attrs["raw_dir"], s.to_dict())
        assert got.shape == (H, W, 6) and got.dtype == np.uint8
        want = np.stack([imagecodecs.jpeg2k_decode(keys[f"{s['experiment']}/Plate{s['plate']}/{s['well']}_s1_{c}"][2])
                         for c in range(1, 7)], axis=-1)
        np.testing.assert_array_equal(got, want)
        if i % 9 == 0:  # and what the generator encoded (lossless), channel by channel
            row = meta.loc[s["id_code"]].copy()
            row["well_id"] = s["id_code"]
            np.testing.assert_array_equal(got, np.moveaxis(image_of(row), 0, -1))


def test_consecutive_sites_share_one_row_group_read(tmp_path):
    raw = _write(tmp_path / "big", rows_per_shard=500)  # 40 wells = 240 rows: one shard, row groups of 100
    t = read_sites(raw)
    assert t["path_w1"].nunique() == 1 and len(t) * 6 <= 500
    for _, s in t.iterrows():
        read_site(str(raw), s.to_dict())
    assert shards_mod.shard_cache().group_reads == pq.ParquetFile(raw / t["path_w1"].iloc[0]).num_row_groups == 3
    shards_mod.shard_cache().pid = -1  # as after a fork: the worker opens its own files
    assert shards_mod.shard_cache().group_reads == 0


def test_read_sites_reads_only_the_key_column_shard_by_shard(raw, monkeypatch):
    asked: list[tuple[str, object]] = []

    def refuse(*a, **k):
        raise AssertionError("read_sites must not read whole tables (pq.read_table)")

    monkeypatch.setattr(pq, "read_table", refuse)
    for name in ("read", "read_row_group", "read_row_groups", "iter_batches"):
        original = getattr(pq.ParquetFile, name)

        def spy(self, *a, _name=name, _original=original, **k):
            asked.append((_name, k.get("columns")))
            return _original(self, *a, **k)
        monkeypatch.setattr(pq.ParquetFile, name, spy)
    t = read_sites(raw)
    n_shards = len(list((raw / "data").glob("*.parquet")))
    assert asked == [("read", ["__key__"])] * n_shards and len(t) > 0
    asked.clear()
    read_site(str(raw), t.iloc[0].to_dict())  # pixels come from row groups, both columns
    assert asked and all(a == ("read_row_group", ["__key__", "jp2"]) for a in asked)


def test_object_storage_through_fsspec(raw):
    import fsspec

    fs = fsspec.filesystem("memory")
    for p in raw.rglob("*"):
        if p.is_file():
            fs.pipe(f"/rx3core/{p.relative_to(raw).as_posix()}", p.read_bytes())
    try:
        local = read_sites(raw)
        remote = read_sites("memory://rx3core")
        folded = read_sites(Path("memory://rx3core"))  # pathlib folds '//': the reader restores it
        assert remote.attrs["raw_dir"] == folded.attrs["raw_dir"] == "memory://rx3core"
        cols = [c for c in SITE_COLUMNS]
        pd.testing.assert_frame_equal(remote[cols], local[cols])
        for i in (0, len(local) // 2, len(local) - 1):
            np.testing.assert_array_equal(read_site("memory://rx3core", remote.iloc[i].to_dict()),
                                          read_site(str(raw), local.iloc[i].to_dict()))
    finally:
        fs.rm("/rx3core", recursive=True)


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad_key, expected", [
    ("gene-001/Plate1/A01_s1_7", r"a channel in 1\.\.6"),
    ("gene-001/Plate1/A01_s1_0", r"a channel in 1\.\.6"),
    ("gene-001/Plate1/AG01_s1_1", "a well of the 1,536-well plate"),
    ("gene-001/Plate1/A49_s1_1", "a well of the 1,536-well plate"),
    ("gene-001/Plate1/A01_s2_1", "site 1"),
    ("gene-001_1_A01_1", r"a key of the form '\{experiment\}/Plate\{plate\}/\{address\}_s1_\{channel\}'"),
])
def test_a_bad_key_is_named_with_its_shard_and_row(raw, tmp_path, bad_key, expected):
    root = _copy(raw, tmp_path)
    shard = sorted((root / "data").glob("*.parquet"))[2]

    def edit(rows):
        rows[3]["__key__"] = bad_key
        return rows
    _edit_shard(shard, edit)
    with pytest.raises(MetadataError, match=rf"data/{shard.name} row 3: key '{bad_key}': expected {expected}"):
        read_sites(root)


def test_a_well_with_a_missing_channel_is_named(raw, tmp_path):
    root = _copy(raw, tmp_path)
    t = read_sites(raw)
    s = t.iloc[5]
    key = f"{s['experiment']}/Plate{s['plate']}/{s['well']}_s1_3"
    shard, row = _shard_of(root, key)
    _edit_shard(shard, lambda rows: [r for r in rows if r["__key__"] != key])
    with pytest.raises(MetadataError, match=rf"{s['id_code']}: channel\(s\) \[3\] missing; found channel\(s\) 1 "
                                            r"\(data/train-\d+-of-\d+\.parquet row \d+\)"):
        read_sites(root)


def test_a_metadata_row_without_images_is_named_when_every_shard_is_there(raw, tmp_path):
    root = _copy(raw, tmp_path)
    meta = pd.read_csv(root / "metadata_rxrx3_core.csv")
    extra = meta.iloc[[0]].assign(address="AF48", well_id=lambda d: d["experiment_name"] + "_" + d["plate"].astype(str)
                                  + "_AF48")
    pd.concat([meta, extra]).to_csv(root / "metadata_rxrx3_core.csv", index=False)
    with pytest.raises(MetadataError, match=rf"{extra['well_id'].iloc[0]}: no image in the shards present"):
        read_sites(root)


def test_a_partial_download_skips_and_records_the_wells_it_lacks(raw, tmp_path, caplog):
    root = _copy(raw, tmp_path)
    gone = sorted((root / "data").glob("*.parquet"))[1]
    gone_keys = [r["__key__"] for r in pq.read_table(gone).to_pylist()]
    gone.unlink()
    with caplog.at_level(logging.WARNING, logger="cellio.datasets.rxrx3_core"):
        t = read_sites(root)
    lost = {k.split("/")[0] + "_" + k.split("/")[1].removeprefix("Plate") + "_" + k.split("/")[2].split("_")[0]
            for k in gone_keys}
    skipped = {s["id_code"]: s["reason"] for s in t.attrs["skipped"]}
    assert set(skipped) == lost and not set(t["id_code"]) & lost
    assert len(t) + len(lost) == len(read_sites(raw))
    assert any("missing" in r for r in skipped.values())  # a straddling well: some channels in the absent shard
    assert f"data/{gone.name}" in caplog.text and "skipped" in caplog.text


def test_an_image_of_a_well_not_in_the_metadata_is_named(raw, tmp_path):
    root = _copy(raw, tmp_path)
    meta = pd.read_csv(root / "metadata_rxrx3_core.csv")
    dropped = meta.iloc[4]
    meta.drop(index=4).to_csv(root / "metadata_rxrx3_core.csv", index=False)
    key = f"{dropped['experiment_name']}/Plate{dropped['plate']}/{dropped['address']}_s1_1"
    with pytest.raises(MetadataError, match=rf"row \d+: key '{key}' names a well that is not in "
                                            r"metadata_rxrx3_core\.csv"):
        read_sites(root)


def test_a_repeated_image_is_named_in_both_places(raw, tmp_path):
    root = _copy(raw, tmp_path)
    shard = sorted((root / "data").glob("*.parquet"))[0]

    def edit(rows):
        rows[1]["__key__"] = rows[0]["__key__"]
        return rows
    _edit_shard(shard, edit)
    with pytest.raises(MetadataError, match=rf"is in data/{shard.name} row 0 and again in data/{shard.name} row 1"):
        read_sites(root)


def test_bad_metadata_rows_are_all_listed(raw, tmp_path):
    root = _copy(raw, tmp_path)
    meta = pd.read_csv(root / "metadata_rxrx3_core.csv")
    meta.loc[0, "address"] = "AG01"
    meta.loc[1, "well_id"] = "nonsense"
    meta.loc[2, "perturbation_type"] = "ORF"
    compound = meta.index[(meta["perturbation_type"] == "COMPOUND") & ~meta["treatment"].str.endswith("_control")][0]
    meta.loc[compound, "concentration"] = np.nan
    meta.to_csv(root / "metadata_rxrx3_core.csv", index=False)
    with pytest.raises(MetadataError) as err:
        read_sites(root)
    msg = str(err.value)
    assert "5 problem(s) in the RxRx3-core metadata" in msg  # row 1: its address, and so its well_id
    assert "row 1 (line 2), column 'address': found 'AG01', expected a 1,536-well address" in msg
    assert "row 2 (line 3), column 'well_id': found 'nonsense'" in msg
    assert "column 'perturbation_type': found 'ORF', expected one of ['CRISPR', 'COMPOUND']" in msg
    assert f"row {compound + 1} (line {compound + 2}), column 'concentration': found '', expected a positive" in msg


def test_a_missing_metadata_file_or_shard_folder_is_named(raw, tmp_path):
    root = _copy(raw, tmp_path)
    shutil.rmtree(root / "data")
    with pytest.raises(MetadataError, match=r"no parquet shards data/train-\*\.parquet"):
        read_sites(root)
    (root / "metadata_rxrx3_core.csv").unlink()
    with pytest.raises(MetadataError, match="metadata_rxrx3_core.csv not found"):
        read_sites(root)


def test_a_shard_without_the_image_column_is_named(raw, tmp_path):
    root = _copy(raw, tmp_path)
    shard = sorted((root / "data").glob("*.parquet"))[0]
    pq.write_table(pq.read_table(shard).drop_columns(["jp2"]), shard)
    with pytest.raises(MetadataError, match=rf"data/{shard.name}: expected the columns '__key__' \(string\) and 'jp2'"):
        read_sites(root)


def _site_with_channel_in(t: pd.DataFrame, shard_name: str) -> pd.Series:
    return t[t["path_w2"] == f"data/{shard_name}"].iloc[0]


@pytest.mark.parametrize("blob, expected", [
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"garbage" * 10, "the JPEG 2000 image does not decode"),
    (imagecodecs.jpeg2k_encode(np.zeros((H, W), np.uint16) + 300, level=0, reversible=True,
                               codecformat=imagecodecs.JPEG2K.CODEC.JP2), "decoded to uint16"),
    (gen.encode_jp2(np.zeros((H + 2, W), np.uint8)), r"13x17 \(HxW\) pixels, but channel 1 of the site has 11x17"),
])
def test_an_image_that_does_not_decode_is_named_with_shard_row_and_key(raw, tmp_path, blob, expected):
    root = _copy(raw, tmp_path)
    shard = sorted((root / "data").glob("*.parquet"))[3]
    t = read_sites(root)
    s = _site_with_channel_in(t, shard.name)
    key = f"{s['experiment']}/Plate{s['plate']}/{s['well']}_s1_2"

    def edit(rows):
        for r in rows:
            if r["__key__"] == key:
                r["jp2"] = {"bytes": blob, "path": r["jp2"]["path"]}
        return rows
    _edit_shard(shard, edit)
    with pytest.raises(ImageError, match=rf"^{root}/data/{shard.name}: row {s['row_w2']} \(key '{key}'\): {expected}"):
        read_site(str(root), s.to_dict())


def test_a_shard_changed_since_the_site_table_was_read_is_named(raw, tmp_path):
    root = _copy(raw, tmp_path)
    t = read_sites(root)
    shard = sorted((root / "data").glob("*.parquet"))[0]
    _edit_shard(shard, lambda rows: rows[::-1])
    s = t.iloc[0]
    with pytest.raises(ImageError, match=rf"data/{shard.name}: row 0 holds key '.*', expected "
                                         rf"'{s['experiment']}/Plate1/{s['well']}_s1_1'; the shard changed"):
        read_site(str(root), s.to_dict())
    _edit_shard(shard, lambda rows: pq.read_table(raw / "data" / shard.name).to_pylist()[:2])
    shards_mod.shard_cache().files.clear()
    shards_mod.shard_cache().groups.clear()
    with pytest.raises(ImageError, match=rf"row 2 \(key '.*_s1_3'\) is beyond the shard's 2 rows"):
        read_site(str(root), s.to_dict())
