"""OME-Zarr HCS plates in and out.

In: plates written by ome-zarr-py (tests/formats/ome_zarr_plate.py, independent of cellio) in NGFF 0.4 and 0.5,
uint8 and uint16, C x Y x X and T x C x Z x Y x X, read through cellio's reader (the layout, the site table,
read_site) and compared with the generator's own pixels; bad plates (metadata that does not validate, a missing
well, wells that disagree in channel count, a bad perturbation table) are named errors.
Out: stores made by today's ingest (the RxRx1 fixture: six channels; the three-channel 96-well set of
tests/test_other_layouts.py) exported with `cellio.export_ome_zarr` / `cellio export --ome-zarr`, validated with
ome-zarr-models, opened with ome-zarr-py's Reader (plate/well/field structure, channel names, pixels) and read back
through cellio's reader: equal to the store. The export is atomic per plate and resumable.
"""
from __future__ import annotations

import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

pytest.importorskip("ome_zarr")
pytest.importorskip("ome_zarr_models")

import cellio  # noqa: E402
from cellio.datasets import find_dataset, get_dataset  # noqa: E402
from cellio.datasets.ome_zarr import ome_zarr_reader  # noqa: E402
from cellio.datasets.ome_zarr.models import hcs_model  # noqa: E402
from cellio.errors import ConfigError, ImageError, MetadataError, StoreError  # noqa: E402
from cellio.export import export_ome_zarr  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "formats"))
import ome_zarr_plate  # noqa: E402

H, W = 11, 17  # the plates' field size: "17x11" (W x H), odd and non-square
PLATE_KW = dict(size="17x11", rows=2, columns=3, fields=2, levels=2, name="P7", seed=4)
WELLS = ["A01", "A02", "A03", "B01", "B02"]  # the generator leaves the grid's last position (B/3) empty


def _plate(tmp_path: Path, version: str = "0.5", dtype: str = "uint16", axes: str = "cyx", **kw) -> Path:
    return ome_zarr_plate.write_ome_zarr_plate(tmp_path, version=version, dtype=dtype, axes=axes,
                                               **{**PLATE_KW, **kw})


def _want(table_row: pd.Series, axes: str, dtype: str, z: int | None = None) -> np.ndarray:
    """The generator's own pixels of a site-table row, as (H, W, C)."""
    perturbation = table_row["perturbation"]
    img = ome_zarr_plate.field_image("P7", table_row["well"], int(table_row["site"]) - 1,
                                     None if perturbation == "DMSO" else perturbation, (H, W), axes, dtype, 4, 1.0)
    if axes == "tczyx":
        img = img[0, :, ome_zarr_plate.PLANES // 2 if z is None else z]
    return np.moveaxis(img, 0, -1)


# ------------------------------------------------------------------------------------------------------------ in
@pytest.mark.parametrize("version,dtype,axes", [("0.4", "uint16", "cyx"), ("0.5", "uint8", "cyx"),
                                                ("0.5", "uint16", "tczyx"), ("0.4", "uint8", "tczyx")])
def test_a_plate_reads_into_its_layout_site_table_and_pixels(tmp_path, version, dtype, axes):
    path = _plate(tmp_path, version, dtype, axes)
    reader = ome_zarr_reader(path, perturbations=tmp_path / "P7.perturbations.csv")
    lay = reader.layout
    assert lay.name == "ome-zarr" and lay.channel_names == ome_zarr_plate.CHANNELS
    assert lay.channel_keys == ("c0", "c1", "c2", "c3", "c4") and lay.pixel_dtype == dtype
    assert lay.site_shape == (H, W) and lay.sites_per_well == 2
    assert (lay.plate.rows, lay.plate.columns) == (2, 3) and lay.wells == ("A01", "A02", "A03", "B01", "B02", "B03")
    top = 255 if dtype == "uint8" else 65535
    assert lay.channels[0].color == (0, 0, 255) and lay.channels[0].display_range == (0, top // 2)
    assert lay.perturbations.label_column == "perturbation" and lay.perturbations.n_treatments == 3
    assert [c.well_type for c in lay.perturbations.controls] == ["control"]
    assert lay.perturbations.controls[0].labels == ("DMSO",)

    sites = reader.read_sites(path)
    assert sites.attrs["layout"] == lay
    assert list(sites["well"]) == [w for w in WELLS for _ in range(2)] and list(sites["site"]) == [1, 2] * 5
    assert set(sites["plate"]) == {"P7"} and list(sites["id_code"][:2]) == ["P7_A01", "P7_A01"]
    assert list(sites["perturbation"][::2]) == ["DMSO", "cmpd-A", "cmpd-B", "DMSO", "cmpd-C"]
    assert list(sites["well_type"][::2]) == ["control", "treatment", "treatment", "control", "treatment"]
    assert sites["concentration"].iloc[2] == 0.1 and pd.isna(sites["concentration"].iloc[0])
    assert list(sites["array_path"][:2]) == ["A/1/0/s0", "A/1/1/s0"]  # datasets[0]: the full resolution
    assert (sites["z_plane"].isna().all() if axes == "cyx" else (sites["z_plane"] == 1).all())
    for _, row in sites.iterrows():
        got = reader.read_site(str(path), row.to_dict())
        assert got.shape == (H, W, 5) and got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, _want(row, axes, dtype))


def test_the_z_plane_is_the_middle_one_unless_chosen(tmp_path):
    path = _plate(tmp_path, "0.5", "uint16", "tczyx", rows=1, columns=2, fields=1, levels=1)
    chosen = ome_zarr_reader(path, perturbations=tmp_path / "P7.perturbations.csv", z=0)
    sites = chosen.read_sites(path)
    assert (sites["z_plane"] == 0).all()
    row = sites.iloc[0]
    np.testing.assert_array_equal(chosen.read_site(str(path), row.to_dict()), _want(row, "tczyx", "uint16", z=0))
    assert not np.array_equal(_want(row, "tczyx", "uint16", z=0), _want(row, "tczyx", "uint16"))  # planes differ
    with pytest.raises(MetadataError, match=r"A/1/0: z=3: expected a plane index in 0\.\.2"):
        ome_zarr_reader(path, z=3).read_sites(path)


def test_without_omero_or_a_table_channels_are_numbered_and_labels_unknown(tmp_path):
    path = _plate(tmp_path, "0.4", "uint8", "cyx", rows=1, columns=2, fields=1, levels=1)
    root = zarr.open_group(str(path), mode="r+")
    for well in ("A/1",):
        attrs = dict(root[f"{well}/0"].attrs)
        attrs.pop("omero")
        root[f"{well}/0"].attrs.clear()
        root[f"{well}/0"].attrs.update(attrs)
    reader = ome_zarr_reader(path)
    assert reader.layout.channel_names == ("c0", "c1", "c2", "c3", "c4")
    assert reader.layout.composite == () and reader.layout.cell_types == ("unknown",)
    sites = reader.read_sites(path)
    assert sites["perturbation"].isna().all() and set(sites["well_type"]) == {"treatment"}


def test_the_registered_reader_binds_to_a_plate_and_pickles(tmp_path):
    path = _plate(tmp_path, "0.4", "uint8", "cyx", rows=1, columns=3, fields=1, levels=1)
    registered = get_dataset("ome-zarr")
    assert find_dataset(path) is registered and find_dataset(tmp_path) is None
    assert registered.for_source(path).layout == ome_zarr_reader(path).layout
    assert registered.read_sites(path).attrs["layout"] == ome_zarr_reader(path).layout
    bound = pickle.loads(pickle.dumps(ome_zarr_reader(path, perturbations=tmp_path / "P7.perturbations.csv")))
    assert list(bound.read_sites(path)["perturbation"]) == ["DMSO", "cmpd-A"]


# ----------------------------------------------------------------------------------------------------- bad input
def _edit_plate_attrs(path: Path, version: str, edit) -> None:
    root = zarr.open_group(str(path), mode="r+")
    attrs = dict(root.attrs)
    edit(attrs["ome"] if version == "0.5" else attrs)
    root.attrs.update(attrs)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_metadata_that_does_not_validate_is_named(tmp_path, version):
    path = _plate(tmp_path, version, "uint8", rows=1, columns=2, fields=1, levels=1)
    _edit_plate_attrs(path, version, lambda ome: ome["plate"]["wells"][0].__setitem__("path", "Z/9"))
    with pytest.raises(MetadataError, match=rf"P7.ome.zarr: the OME-NGFF {version} plate metadata does not validate "
                                            r"\(ome-zarr-models .*not in list of rows"):
        ome_zarr_reader(path)


def test_a_wrong_version_and_a_group_that_is_no_plate_are_named(tmp_path):
    path = _plate(tmp_path, "0.5", "uint8", rows=1, columns=2, fields=1, levels=1)
    with pytest.raises(MetadataError, match=r"A/1/0: expected an OME-NGFF plate group .*found attribute keys "
                                            r"\['ome'\]"):
        ome_zarr_reader(path / "A" / "1" / "0")
    with pytest.raises(MetadataError, match=r"expected an OME-Zarr plate \(a Zarr group\), found none"):
        ome_zarr_reader(tmp_path / "nothing.zarr")
    _edit_plate_attrs(path, "0.5", lambda ome: ome.__setitem__("version", "0.3"))
    with pytest.raises(MetadataError, match=r"OME-NGFF version '0.3'; cellio reads plates of versions"):
        ome_zarr_reader(path)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_a_missing_well_is_named(tmp_path, version):
    path = _plate(tmp_path, version, "uint16", levels=1)
    shutil.rmtree(path / "B" / "2")
    # ome-zarr-models skips a listed well whose group is missing: cellio checks it itself
    assert hcs_model(version).from_zarr(zarr.open_group(str(path), mode="r")).n_wells == 5
    with pytest.raises(MetadataError, match=r"well B02 \(B/2\) is listed in the plate metadata but its group "
                                            r".*P7.ome.zarr/B/2 is missing"):
        ome_zarr_reader(path)
    shutil.rmtree(path / "A" / "1" / "1")
    with pytest.raises(MetadataError, match=r"A/1/1: the well lists this field but its image group is missing"):
        ome_zarr_reader(path)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_wells_that_disagree_in_channel_count_are_named(tmp_path, version):
    path = _plate(tmp_path, version, "uint8", rows=1, columns=3, fields=1, levels=1)
    image = zarr.open_group(str(path / "A" / "2" / "0"), mode="r+")
    del image["s0"]
    kw = {"chunk_key_encoding": {"name": "v2", "separator": "/"}} if version == "0.4" else \
        {"dimension_names": ("c", "y", "x")}
    image.create_array("s0", shape=(3, H, W), dtype="uint8", chunks=(1, H, W), **kw)[...] = 7
    with pytest.raises(MetadataError, match=r"the plate's wells disagree in channel count: well A02 field A/2/0 has 3, "
                                            r"well A01 field A/1/0 has 5"):
        ome_zarr_reader(path)


def test_a_bad_perturbation_table_is_named(tmp_path):
    path = _plate(tmp_path, "0.5", "uint8", rows=1, columns=3, fields=1, levels=1)
    csv = tmp_path / "P7.perturbations.csv"
    table = pd.read_csv(csv)
    table.drop(index=1).to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(MetadataError, match=r"short.csv: plate 'P7': no row for wells \['A02'\] of the plate"):
        ome_zarr_reader(path, perturbations=tmp_path / "short.csv")
    table.drop(columns=["perturbation"]).to_csv(tmp_path / "nolabel.csv", index=False)
    with pytest.raises(MetadataError, match=r"nolabel.csv: expected columns plate, well, perturbation .*missing "
                                            r"\['perturbation'\]"):
        ome_zarr_reader(path, perturbations=tmp_path / "nolabel.csv")
    table.assign(plate="P8").to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(MetadataError, match=r"other.csv: no row for plate 'P7' .*plates are \['P8'\]"):
        ome_zarr_reader(path, perturbations=tmp_path / "other.csv")
    table.assign(well=["A1", "A002"]).to_csv(tmp_path / "forms.csv", index=False)  # every well form is A01
    assert list(ome_zarr_reader(path, perturbations=tmp_path / "forms.csv").read_sites(path)["perturbation"]) == \
        list(table["perturbation"])


def test_a_missing_array_is_an_image_error_naming_it(tmp_path):
    path = _plate(tmp_path, "0.4", "uint8", rows=1, columns=3, fields=1, levels=1)
    reader = ome_zarr_reader(path)
    row = reader.read_sites(path).iloc[1].to_dict()
    shutil.rmtree(path / "A" / "2" / "0" / "s0")
    with pytest.raises(ImageError, match=r"P7.ome.zarr/A/2/0/s0: the site's array is missing or unreadable"):
        reader.read_site(str(path), row)


# ----------------------------------------------------------------------------------------------------------- out
def _ome_reader_fields(plate: Path, version: str):
    """ome-zarr-py's view of an exported plate: the Plate spec, and each well path's fields' full-resolution
    (C, H, W) pixels and channel names."""
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Plate, Reader

    fmt = FormatV04() if version == "0.4" else FormatV05()
    node = next(iter(Reader(parse_url(str(plate), fmt=fmt))()))
    spec = next(s for s in node.specs if isinstance(s, Plate))
    fields = {}
    for well in spec.well_paths:
        images = zarr.open_group(str(plate / well), mode="r").attrs
        paths = [im["path"] for im in (images["well"] if version == "0.4" else images["ome"]["well"])["images"]]
        for f in paths:
            image = next(iter(Reader(parse_url(str(plate / well / f), fmt=fmt))()))
            assert any(isinstance(s, Multiscales) for s in image.specs)
            fields[f"{well}/{f}"] = (np.asarray(image.data[0]), image.metadata["channel_names"],
                                     [tuple(np.asarray(d).shape) for d in image.data])
    return spec, fields


def _plate_sites(store, name: str) -> pd.DataFrame:
    sites = store.sites
    names = sites["experiment"].astype(str) + "_" + sites["plate"].astype(str)
    return sites[names == name].sort_values(["well", "site"], kind="stable")


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_a_store_exports_to_plates_that_validate_and_round_trip(tmp_path, tiny_store, version):
    name = "HUVEC-01_2"
    want = _plate_sites(tiny_store, name)
    report = export_ome_zarr(tiny_store, tmp_path / "out", plates=[name], version=version, levels=2, progress=False)
    plate = tmp_path / "out" / f"{name}.ome.zarr"
    assert [(p.name, p.path, p.sites, p.resumed) for p in report.plates] == [(name, str(plate), len(want), False)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{name}.ome.zarr"]  # no partial left
    root = zarr.open_group(str(plate), mode="r")
    assert root.metadata.zarr_format == (2 if version == "0.4" else 3)
    hcs = hcs_model(version).from_zarr(root)
    assert hcs.n_wells == want["well"].nunique()

    # ome-zarr-py: the whole 384-well plate geometry, the exported wells, every field's pixels and channels
    spec, fields = _ome_reader_fields(plate, version)
    lay = tiny_store.layout
    assert spec.row_names == list(lay.plate.row_labels) and spec.col_names == [str(c) for c in range(1, 25)]
    wells = sorted(want["well"].unique())
    assert spec.well_paths == sorted(f"{w[0]}/{int(w[1:])}" for w in wells)  # ome-zarr-py sorts them as text
    assert len(fields) == len(want)
    for (_, row), k in zip(want.iterrows(), range(len(want))):
        w, s = row["well"], int(row["site"])
        f = int((want[want["well"] == w]["site"] < s).sum())  # fields are the well's sites in site order
        pixels, names, shapes = fields[f"{w[0]}/{int(w[1:])}/{f}"]
        assert list(names) == list(lay.channel_names)
        assert shapes == [(6, 17, 11), (6, 9, 6)]
        np.testing.assert_array_equal(np.moveaxis(pixels, 0, -1), tiny_store.read_one(int(row.name)))

    # and back through cellio's own reader: the same sites, pixels, channels, pixel type and site shape
    back = ome_zarr_reader(plate)
    sites = back.read_sites(plate)
    assert back.layout.channel_names == lay.channel_names and back.layout.site_shape == lay.site_shape
    assert back.layout.pixel_dtype == lay.pixel_dtype and back.layout.plate.columns == 24
    assert [c.color for c in back.layout.channels] == [c.color for c in lay.channels]
    assert list(sites["well"]) == list(want["well"]) and set(sites["plate"]) == {name}
    got = np.stack([back.read_site(str(plate), r) for r in sites.to_dict("records")])
    np.testing.assert_array_equal(got, tiny_store.read(want.index.to_numpy()))


def test_a_three_channel_96_well_store_exports_with_its_layout(tmp_path, monkeypatch):
    import test_other_layouts as tri

    monkeypatch.setattr(cellio.datasets.registry, "_READERS", dict(cellio.datasets.registry._READERS))
    cellio.datasets.register_dataset(tri.READER)
    raw = tri._write_raw(tmp_path / "raw")
    cellio.ingest(raw, tmp_path / "tri.zarr", reader="tri", workers=1, progress=False, codec="lz4")
    store = cellio.open_store(tmp_path / "tri.zarr")
    report = export_ome_zarr(store, tmp_path / "out", wells=["C07", "H12"], progress=False)
    assert [p.name for p in report.plates] == ["EXP-1_1", "EXP-1_2", "EXP-2_1", "EXP-2_2"]
    assert report.version == "0.4" and report.n_sites == 8
    plate = tmp_path / "out" / "EXP-2_1.ome.zarr"
    spec, fields = _ome_reader_fields(plate, "0.4")
    assert (len(spec.row_names), len(spec.col_names)) == (8, 12) and spec.well_paths == ["C/7", "H/12"]
    omero = zarr.open_group(str(plate / "C" / "7" / "0"), mode="r").attrs["omero"]["channels"]
    assert [(c["label"], c["color"], c["active"], c["window"]["start"], c["window"]["end"]) for c in omero] == \
        [("DNA", "0000FF", True, 0, 120), ("RNA", "00FF00", True, 10, 200), ("Mito", "FFFFFF", False, 0, 255)]
    want = store.sites[(store.sites["experiment"] == "EXP-2") & (store.sites["plate"] == 1)
                       & store.sites["well"].isin(["C07", "H12"])]
    back = ome_zarr_reader(plate)
    assert back.layout.channel_names == ("DNA", "RNA", "Mito") and back.layout.site_shape == (tri.H, tri.W)
    assert back.layout.composite[-1][1].name == "RNA"  # the inactive Mito stays out of the composite
    got = np.stack([back.read_site(str(plate), r) for r in back.read_sites(plate).to_dict("records")])
    np.testing.assert_array_equal(got, store.read(want.index.to_numpy()))


def test_a_selection_that_names_nothing_is_refused(tmp_path, tiny_store):
    with pytest.raises(ConfigError, match=r"plates=\['HUVEC-01_9'\]: \['HUVEC-01_9'\] not in .*its plates are "
                                          r"\['HEPG2-01_1'"):
        export_ome_zarr(tiny_store, tmp_path / "out", plates=["HUVEC-01_9"], progress=False)
    with pytest.raises(ConfigError, match=r"wells=\['A01'\]: \['A/1'\] \(as row/column\) have no site"):
        export_ome_zarr(tiny_store, tmp_path / "out", plates=["HUVEC-01_2"], wells=["A01"], progress=False)
    with pytest.raises(ConfigError, match=r"version='0.3': expected one of \['0.4', '0.5'\]"):
        export_ome_zarr(tiny_store, tmp_path / "out", version="0.3", progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_export_is_atomic_per_plate_and_resumes(tmp_path, tiny_store, monkeypatch):
    import cellio.export.ome_zarr as export_module

    out, plates = tmp_path / "out", ["HEPG2-01_1", "HEPG2-01_2"]
    real = export_module.validate_plate
    calls = []

    def fail_on_second(group, version, where):  # the second plate breaks after all its pixels are written
        calls.append(where)
        if len(calls) == 2:
            raise MetadataError(f"{where}: injected")
        return real(group, version, where)

    monkeypatch.setattr(export_module, "validate_plate", fail_on_second)
    with pytest.raises(MetadataError, match="injected"):
        export_ome_zarr(tiny_store, out, plates=plates, progress=False)
    names = sorted(p.name for p in out.iterdir())
    assert names == [".HEPG2-01_2.ome.zarr.partial", "HEPG2-01_1.ome.zarr"]  # nothing half-written under its name
    first = out / "HEPG2-01_1.ome.zarr"
    stamp = {p: p.stat().st_mtime_ns for p in first.rglob("*")}

    monkeypatch.setattr(export_module, "validate_plate", real)
    report = export_ome_zarr(tiny_store, out, plates=plates, progress=False)
    assert [(p.name, p.resumed) for p in report.plates] == [("HEPG2-01_1", True), ("HEPG2-01_2", False)]
    assert sorted(p.name for p in out.iterdir()) == ["HEPG2-01_1.ome.zarr", "HEPG2-01_2.ome.zarr"]
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*")} == stamp  # kept, not rewritten
    hcs_model("0.4").from_zarr(zarr.open_group(str(out / "HEPG2-01_2.ome.zarr"), mode="r"))

    # another selection into the same place is refused, then replaced on request
    with pytest.raises(StoreError, match=r"HEPG2-01_1.ome.zarr exists and was not written from this store and "
                                         r"selection .*overwrite=True"):
        export_ome_zarr(tiny_store, out, plates=plates[:1], wells=["B02"], progress=False)
    again = export_ome_zarr(tiny_store, out, plates=plates[:1], wells=["B02"], overwrite=True, progress=False)
    assert again.n_sites == 2 and not again.plates[0].resumed
    _, fields = _ome_reader_fields(first, "0.4")
    assert sorted(fields) == ["B/2/0", "B/2/1"]
    assert sorted(p.name for p in out.iterdir()) == ["HEPG2-01_1.ome.zarr", "HEPG2-01_2.ome.zarr"]


def test_the_cli_exports_a_subset(tmp_path, tiny_store, capsys):
    from cellio.cli import main

    rc = main(["export", str(tiny_store.path), str(tmp_path / "out"), "--ome-zarr", "--plates", "RPE-01_3",
               "--wells", "B02", "--ngff-version", "0.5", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "RPE-01_3.ome.zarr: 1 wells, 2 sites, written" in text and "2 sites in 1 OME-NGFF 0.5 plates" in text
    spec, fields = _ome_reader_fields(tmp_path / "out" / "RPE-01_3.ome.zarr", "0.5")
    assert spec.well_paths == ["B/2"] and sorted(fields) == ["B/2/0", "B/2/1"]
    with pytest.raises(SystemExit):
        main(["export", str(tiny_store.path), str(tmp_path / "out2")])  # no format chosen
    assert main(["export", str(tiny_store.path), str(tmp_path / "out3"), "--ome-zarr", "--plates", "nope",
                 "--no-progress"]) == 2
