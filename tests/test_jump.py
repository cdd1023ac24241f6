"""The JUMP Cell Painting (cpg0016) reader on mirrors written by tests/formats/jump.py (tifffile, independent of
cellio): the site table, each site's pixels against tifffile's own read divided by the illumination function, the
intensity rules, the consortium tables, bad input (named errors), and an s3:// mirror on a local moto server."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from cellio.datasets import DatasetLayout, find_dataset, get_dataset
from cellio.datasets.intensity import Intensity
from cellio.datasets.jump import JUMP, READER, jump_reader
from cellio.errors import ImageError, LayoutError, MetadataError

sys.path.insert(0, str(Path(__file__).parent / "formats"))
import jump as gen  # noqa: E402

SIZE, SHAPE = "37x23", (23, 37)  # W x H on the command line; arrays are (23, 37): a swap fails
KW = dict(plates=2, size=SIZE, wells=3, fields=2, seed=3)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    """Two plates, three wells, two fields, eight channels; FileName_/PathName_ columns; the consortium tables."""
    return gen.write_jump(tmp_path_factory.mktemp("jump"), **KW)


def _small(tmp_path: Path, **kw) -> Path:
    """A one-plate mirror (two wells, one field, the five fluorescence channels) a test may damage."""
    args = dict(plates=1, size=SIZE, wells=2, fields=1, brightfield=False, seed=1)
    args.update(kw)
    return gen.write_jump(tmp_path / "m", **args)


def _expected(out: Path, row: pd.Series, channels: tuple[str, ...], i: int, illum: bool = True) -> np.ndarray:
    """The site as tifffile reads it, divided by np.load's illumination function: (H, W, C) float64."""
    planes = []
    for ch in channels:
        raw = tifffile.imread(gen.images_dir(out, i) / gen.phenix_file(row["well"], int(row["site"]), ch))
        assert raw.dtype == np.uint16 and raw.shape == SHAPE
        x = raw.astype(np.float64)
        if illum:
            x = x / np.load(gen.illum_dir(out, i) / f"{gen.plate_name(i)}_Illum{ch}.npy")
        planes.append(x)
    return np.stack(planes, axis=-1)


def _keep16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 65535).astype(np.uint16)


# ----------------------------------------------------------------------------------------------- the site table
def test_site_table_lists_every_field_with_its_files_and_perturbation(mirror):
    reader = jump_reader(mirror / "cpg0016-jump", metadata=mirror / "metadata")
    sites = reader.read_sites(mirror / "cpg0016-jump")
    assert len(sites) == 2 * 3 * 2
    for i in range(2):
        plate = sites[sites["plate"] == gen.plate_name(i)]
        want = [(w, f, jcp) for w, jcp in gen.plate_layout(i, 3, 3) for f in (1, 2)]
        assert list(zip(plate["well"], plate["site"], plate["jcp2022"])) == want
        assert (plate["batch"] == gen.batch_name(i)).all() and (plate["experiment"] == gen.batch_name(i)).all()
    assert (sites["source"] == "source_4").all() and (sites["dataset"] == "train").all()
    assert (sites["id_code"] == sites["plate"] + "_" + sites["well"]).all()
    assert sites["site"].dtype == np.int64 and sites["well"].str.fullmatch(r"[A-P]\d\d").all()
    row = sites.iloc[0]
    assert row["path_DNA"] == (gen.images_dir(mirror, 0) / gen.phenix_file(row["well"], 1, "DNA")).relative_to(
        mirror / "cpg0016-jump").as_posix()
    assert row["illum_Mito"].endswith(f"illum/{gen.plate_name(0)}/{gen.plate_name(0)}_IllumMito.npy")
    assert row["load_data"].endswith("load_data_with_illum.csv") and row["load_data_line"] >= 2
    negcon = sites["jcp2022"].isin(gen.NEGCON.values())
    assert (sites.loc[negcon, "well_type"] == "negative_control").all()
    assert (sites.loc[~negcon, "well_type"] == "treatment").all()
    assert set(sites["modality"]) == {"compound", "crispr"}  # plate 0 COMPOUND, plate 1 CRISPR
    crispr = sites[sites["modality"] == "crispr"]
    assert set(crispr.loc[crispr["well_type"] == "treatment", "symbol"]) <= {g for g, _ in gen.GENES}
    assert sites.attrs["layout"] == reader.layout


def test_layout_is_built_from_the_data(mirror):
    lay = jump_reader(mirror / "cpg0016-jump", metadata=mirror / "metadata", brightfield=True).layout
    assert lay.name == "jump" and lay.channel_names == gen.FLUORESCENCE + gen.BRIGHTFIELD
    assert lay.site_shape == SHAPE and lay.sites_per_well == 2 and lay.pixel_dtype == "uint16"
    assert lay.plate.wells[0] == "A01" and len(lay.plate.wells) == 384
    p = lay.perturbations
    assert p.label_column == "jcp2022" and p.label_kind == "str" and p.n_treatments == 2 * 2  # 2 per plate type
    assert "JCP2022_033924" in p.control("negative_control").labels
    assert [c.name for _, c in lay.composite] == list(gen.FLUORESCENCE)  # brightfield not in the composite
    assert all(0 < c.display_range[1] <= 65535 for _, c in lay.composite)
    assert lay.intensity == Intensity("divide", "keep")
    assert DatasetLayout.from_dict(lay.to_dict()) == lay  # what the store records
    bare = jump_reader(mirror / "cpg0016-jump").layout  # no tables: nothing known of the perturbations
    assert bare.perturbations.n_treatments == 0 and bare.perturbations.controls == ()


def test_a_subset_of_plates_wells_fields_and_channels(mirror):
    plate = gen.plate_name(1)
    well = gen.plate_layout(1, 3, 3)[2][0]
    reader = jump_reader(mirror / "cpg0016-jump", plates=[plate], wells=[well], fields=[2],
                         channels=["Mito", "DNA", "Brightfield_L"])
    sites = reader.read_sites(mirror / "cpg0016-jump")
    assert list(zip(sites["plate"], sites["well"], sites["site"])) == [(plate, well, 2)]
    assert reader.layout.channel_names == ("Mito", "DNA", "Brightfield_L")
    assert [c for c in sites.columns if c.startswith("path_")] == ["path_Mito", "path_DNA", "path_Brightfield_L"]
    got = reader.read_site(str(mirror / "cpg0016-jump"), sites.iloc[0].to_dict())
    np.testing.assert_array_equal(got, _keep16(_expected(mirror, sites.iloc[0], ("Mito", "DNA", "Brightfield_L"),
                                                         1)))
    with pytest.raises(MetadataError, match=r"plates \['BR99999999'\]"):
        jump_reader(mirror / "cpg0016-jump", plates=["BR99999999"])
    with pytest.raises(MetadataError, match=r"wells \['P24'\]"):
        jump_reader(mirror / "cpg0016-jump", plates=[plate], wells=["P24"])
    with pytest.raises(MetadataError, match=r"sources \['source_7'\]: not under .*found \['source_4'\]"):
        jump_reader(mirror / "cpg0016-jump", sources=["source_7"])
    with pytest.raises(MetadataError, match=r"no load_data\.csv\(\.gz\) under <source>/workspace"):
        jump_reader(mirror / "metadata")
    assert len(jump_reader(mirror / "cpg0016-jump", sources=["source_4"]).read_sites(mirror / "cpg0016-jump")) == 12


# ----------------------------------------------------------------------------------------------- pixels
def test_read_site_is_tifffile_divided_by_the_illumination_function(mirror):
    reader = jump_reader(mirror / "cpg0016-jump", brightfield=True)
    sites = reader.read_sites(mirror / "cpg0016-jump")
    for k in (0, 5, 11):
        row = sites.iloc[k]
        got = reader.read_site(str(mirror / "cpg0016-jump"), row.to_dict())
        assert got.dtype == np.uint16 and got.shape == (*SHAPE, 8)
        i = int(row["plate"] == gen.plate_name(1))
        want = _expected(mirror, row, gen.FLUORESCENCE + gen.BRIGHTFIELD, i)
        np.testing.assert_array_equal(got, _keep16(want))
        raw = _expected(mirror, row, gen.FLUORESCENCE + gen.BRIGHTFIELD, i, illum=False)
        assert not np.array_equal(got, raw.astype(np.uint16))  # the correction did something


def test_no_illumination_correction_gives_the_raw_counts(mirror):
    reader = jump_reader(mirror / "cpg0016-jump", illumination="none")
    sites = reader.read_sites(mirror / "cpg0016-jump")
    assert not any(c.startswith("illum_") for c in sites.columns)
    assert reader.layout.intensity == Intensity("none", "keep")
    got = reader.read_site(str(mirror / "cpg0016-jump"), sites.iloc[3].to_dict())
    np.testing.assert_array_equal(got, _expected(mirror, sites.iloc[3], gen.FLUORESCENCE, 0, illum=False)
                                  .astype(np.uint16))


@pytest.mark.parametrize("scale", ["clip-percentile:1,99", "linear:600,9000"])
def test_scaling_rules_write_uint8_and_are_recorded(mirror, scale):
    reader = jump_reader(mirror / "cpg0016-jump", scale=scale)
    lay = reader.layout
    assert lay.pixel_dtype == "uint8" and lay.intensity.scale == scale.split(":")[0]
    assert DatasetLayout.from_dict(lay.to_dict()).intensity == lay.intensity
    assert scale in lay.description
    row = reader.read_sites(mirror / "cpg0016-jump").iloc[7]
    got = reader.read_site(str(mirror / "cpg0016-jump"), row.to_dict())
    x = _expected(mirror, row, gen.FLUORESCENCE, 1)
    if scale.startswith("clip"):
        lo = np.array([np.percentile(x[..., c], 1) for c in range(5)])
        hi = np.array([np.percentile(x[..., c], 99) for c in range(5)])
    else:
        lo, hi = np.full(5, 600.0), np.full(5, 9000.0)
    want = np.clip(np.rint((x - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    assert got.min() == 0 and got.max() == 255  # clipped at both ends: the window lies inside the data


@pytest.mark.parametrize("columns, gzip, illum_dtype", [("url", False, "float64"), ("url", True, "float32"),
                                                        ("pathname", True, "float32")])
def test_both_column_forms_and_gzip(tmp_path, columns, gzip, illum_dtype):
    out = _small(tmp_path, columns=columns, gzip=gzip, illum_dtype=illum_dtype)
    reader = jump_reader(out / "cpg0016-jump")
    sites = reader.read_sites(out / "cpg0016-jump")
    assert len(sites) == 2 and sites["load_data"].iloc[0].endswith(".csv.gz" if gzip else ".csv")
    for _, row in sites.iterrows():
        got = reader.read_site(str(out / "cpg0016-jump"), row.to_dict())
        np.testing.assert_array_equal(got, _keep16(_expected(out, row, gen.FLUORESCENCE, 0)))


def test_load_data_without_illum_columns_uses_the_gallery_place(tmp_path):
    out = _small(tmp_path, gzip=True)
    for f in gen.load_data_dir(out, 0).glob("load_data_with_illum*"):
        f.unlink()
    reader = jump_reader(out / "cpg0016-jump")
    sites = reader.read_sites(out / "cpg0016-jump")
    assert sites["load_data"].iloc[0].endswith("/load_data.csv.gz")
    name = gen.plate_name(0)
    assert sites["illum_DNA"].iloc[0] == (gen.illum_dir(out, 0) / f"{name}_IllumDNA.npy").relative_to(
        out / "cpg0016-jump").as_posix()
    got = reader.read_site(str(out / "cpg0016-jump"), sites.iloc[1].to_dict())
    np.testing.assert_array_equal(got, _keep16(_expected(out, sites.iloc[1], gen.FLUORESCENCE, 0)))


# ----------------------------------------------------------------------------------------------- the registry
def test_registered_as_jump_and_found_by_its_directory(mirror):
    assert get_dataset("jump") is READER and READER.layout is JUMP and READER.read_site is not None
    assert JUMP.site_shape == (1080, 1080) and JUMP.pixel_dtype == "uint16" and JUMP.n_channels == 5
    assert find_dataset(mirror / "cpg0016-jump") is READER
    sites = READER.read_sites(mirror / "cpg0016-jump")  # the defaults: its layout says 1080 x 1080 sites
    assert sites.attrs["layout"] is JUMP
    with pytest.raises(ImageError, match=r"expected a 1080x1080 .* found shape \(23, 37\)"):
        READER.read_site(str(mirror / "cpg0016-jump"), sites.iloc[0].to_dict())


def test_intensity_rules_parse_and_refuse_bad_values():
    assert Intensity.parse("clip-percentile").scale_params == (0.1, 99.9)
    assert str(Intensity.parse("linear:0,4095", "divide")) == "divide, linear:0,4095"
    for bad, match in (("gamma", "scale: expected one of"), ("linear:5,1", "0 <= low < high"),
                       ("linear:1", "2 finite numbers"), ("clip-percentile:1,101", "<= 100"),
                       ("linear:a,b", "numbers after")):
        with pytest.raises(LayoutError, match=match):
            Intensity.parse(bad)
    with pytest.raises(LayoutError, match="pixel_dtype: expected uint8"):
        JUMP.replace(intensity=Intensity.parse("linear:0,4095"))


# ----------------------------------------------------------------------------------------------- bad input
def _first_tiff(out: Path, ch: str = "ER") -> Path:
    well = gen.plate_layout(0, 2, 1)[0][0]
    return gen.images_dir(out, 0) / gen.phenix_file(well, 1, ch)


@pytest.mark.parametrize("damage, match", [
    (lambda p: tifffile.imwrite(p, np.zeros(SHAPE, np.uint8)), r"expected uint16 pixels, found uint8"),
    (lambda p: tifffile.imwrite(p, np.zeros((SHAPE[1], SHAPE[0]), np.uint16)),
     r"expected a 23x37 .* found shape \(37, 23\)"),
    (lambda p: tifffile.imwrite(p, np.zeros((2, *SHAPE), np.uint16)), r"single-page TIFF, found 2 pages"),
    (lambda p: p.write_bytes(b"not a tiff at all"), r"not a readable TIFF"),
    (lambda p: p.unlink(), r"missing"),
])
def test_a_bad_tiff_is_a_named_image_error(tmp_path, damage, match):
    out = _small(tmp_path)
    reader = jump_reader(out / "cpg0016-jump", check_files=False)
    path = _first_tiff(out)
    damage(path)
    row = reader.read_sites(out / "cpg0016-jump").iloc[0]
    with pytest.raises(ImageError, match=match) as info:
        reader.read_site(str(out / "cpg0016-jump"), row.to_dict())
    assert path.name in str(info.value) and "load_data_with_illum.csv line 2 (channel ER)" in str(info.value)


def test_a_load_data_naming_a_missing_file_is_refused_before_reading(tmp_path):
    out = _small(tmp_path)
    _first_tiff(out, "Mito").unlink()
    with pytest.raises(MetadataError, match=r"load_data_with_illum\.csv line 2, column for path_Mito: names "
                                            r".*ch1sk1fk1fl1\.tiff, which does not exist"):
        jump_reader(out / "cpg0016-jump")


def test_a_load_data_naming_an_unknown_channel_is_refused(tmp_path):
    out = _small(tmp_path, columns="url")
    path = gen.load_data_dir(out, 0) / "load_data_with_illum.csv"
    frame = pd.read_csv(path)
    frame.rename(columns={"URL_OrigER": "URL_OrigPhalloidin"}).to_csv(path, index=False)
    with pytest.raises(MetadataError, match=r"load_data_with_illum\.csv: column 'URL_OrigPhalloidin' names "
                                            r"channel 'Phalloidin'; expected one of \['DNA'"):
        jump_reader(out / "cpg0016-jump")


def test_channels_the_plate_lacks_and_urls_outside_the_gallery_are_refused(tmp_path):
    out = _small(tmp_path, columns="url")
    with pytest.raises(MetadataError, match=r"no image columns for channels \['Brightfield', 'Brightfield_H', "
                                            r"'Brightfield_L'\]"):
        jump_reader(out / "cpg0016-jump", brightfield=True)
    with pytest.raises(MetadataError, match=r"channels=\['DNA', 'Actin'\]"):
        jump_reader(out / "cpg0016-jump", channels=["DNA", "Actin"])
    path = gen.load_data_dir(out, 0) / "load_data_with_illum.csv"
    original = pd.read_csv(path, dtype=str)

    def refused(edit, match):
        frame = original.copy()
        edit(frame)
        frame.to_csv(path, index=False)
        with pytest.raises(MetadataError, match=match):
            jump_reader(out / "cpg0016-jump")

    refused(lambda f: f.loc.__setitem__((0, "Metadata_Well"), "Q01"),
            r"line 2, column Metadata_Well: expected a 384-well address A01..P24, found 'Q01'")
    refused(lambda f: f.loc.__setitem__((1, "Metadata_Well"), f.loc[0, "Metadata_Well"]),
            r"well [A-P]\d\d site 1 appears on lines \[2, 3\]; expected one row per field")
    refused(lambda f: f.loc.__setitem__((1, "URL_OrigRNA"), "s3://another-bucket/x.tiff"),
            r"line 3, column URL_OrigRNA: expected a URL under s3://cellpainting-gallery/cpg0016-jump/")
    refused(lambda f: f.loc.__setitem__((0, "Metadata_Site"), "0"),
            r"line 2, column Metadata_Site: expected a field number >= 1, found '0'")
    refused(lambda f: f.__delitem__("Metadata_Well"), r"missing columns \['Metadata_Well'\]")
    frame = original.copy()
    frame.loc[0, "Metadata_Well"] = frame.loc[0, "Metadata_Well"][0] + str(int(frame.loc[0, "Metadata_Well"][1:]))
    frame.to_csv(path, index=False)  # an unpadded column ("C5") is read as "C05"
    sites = jump_reader(out / "cpg0016-jump").read_sites(out / "cpg0016-jump")
    assert sorted(sites["well"]) == sorted(original["Metadata_Well"])


def test_an_illumination_function_of_the_wrong_shape_is_a_named_error(tmp_path):
    out = _small(tmp_path)
    reader = jump_reader(out / "cpg0016-jump")
    path = gen.illum_dir(out, 0) / f"{gen.plate_name(0)}_IllumRNA.npy"
    np.save(path, np.ones((SHAPE[1], SHAPE[0])))
    row = reader.read_sites(out / "cpg0016-jump").iloc[1]
    with pytest.raises(ImageError, match=r"IllumRNA\.npy .*line 3 \(channel RNA\)\): illumination function of "
                                         r"shape \(37, 23\); expected the image's \(23, 37\)"):
        reader.read_site(str(out / "cpg0016-jump"), row.to_dict())
    np.save(path, np.zeros(SHAPE))
    with pytest.raises(ImageError, match=r"IllumRNA\.npy .*finite, positive"):
        reader.read_site(str(out / "cpg0016-jump"), row.to_dict())


def test_plates_of_different_sizes_and_bad_consortium_tables_are_refused(tmp_path):
    out = _small(tmp_path, plates=2)
    tifffile.imwrite(_first_tiff(out, "DNA"), np.zeros((30, 30), np.uint16))
    with pytest.raises(MetadataError, match=r"differ in size: 30x30: \['BR00117035'\]; 23x37: \['BR00117036'\]"):
        jump_reader(out / "cpg0016-jump", check_files=False)
    meta = out / "metadata"
    wells = pd.read_csv(meta / "well.csv.gz")
    wells.iloc[1:].to_csv(meta / "well.csv.gz", index=False)
    with pytest.raises(MetadataError, match=r"no row for plate BR00117035 well .*expected every imaged well"):
        jump_reader(out / "cpg0016-jump", plates=[gen.plate_name(1), gen.plate_name(0)][1:], metadata=meta)
    wells.drop(columns="Metadata_JCP2022").to_csv(meta / "well.csv.gz", index=False)
    with pytest.raises(MetadataError, match=r"well\.csv\.gz: missing columns \['Metadata_JCP2022'\]"):
        jump_reader(out / "cpg0016-jump", plates=[gen.plate_name(1)], metadata=meta)


# ----------------------------------------------------------------------------------------------- s3://
def test_an_s3_mirror_reads_the_same_as_the_local_one(mirror):
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("s3fs")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        client.create_bucket(Bucket="gallery")
        root = mirror / "cpg0016-jump"
        for p in root.rglob("*"):
            if p.is_file():
                client.upload_file(str(p), "gallery", f"mirror/cpg0016-jump/{p.relative_to(root).as_posix()}")
        opts = {"key": "testing", "secret": "testing",
                "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
        src = "s3://gallery/mirror/cpg0016-jump"
        remote = jump_reader(src, storage_options=opts, plates=[gen.plate_name(1)], brightfield=True)
        local = jump_reader(root, plates=[gen.plate_name(1)], brightfield=True)
        assert remote.layout == local.layout
        rs, ls = remote.read_sites(src), local.read_sites(root)
        pd.testing.assert_frame_equal(rs, ls)
        for k in (0, len(rs) - 1):
            np.testing.assert_array_equal(remote.read_site(src, rs.iloc[k].to_dict()),
                                          local.read_site(str(root), ls.iloc[k].to_dict()))
    finally:
        server.stop()


def test_the_reader_pickles_into_worker_processes(mirror):
    import pickle

    reader = jump_reader(mirror / "cpg0016-jump", metadata=mirror / "metadata", scale="clip-percentile")
    back = pickle.loads(pickle.dumps(reader))
    assert back.layout == reader.layout
    sites = back.read_sites(mirror / "cpg0016-jump")
    pd.testing.assert_frame_equal(sites, reader.read_sites(mirror / "cpg0016-jump"))
    np.testing.assert_array_equal(back.read_site(str(mirror / "cpg0016-jump"), sites.iloc[2].to_dict()),
                                  reader.read_site(str(mirror / "cpg0016-jump"), sites.iloc[2].to_dict()))
