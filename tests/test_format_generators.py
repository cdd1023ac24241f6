"""The format generators in tests/formats/ (JUMP cpg0016, OME-Zarr HCS, RxRx2, RxRx3-core) write their formats
exactly: each output is read back with the format's THIRD-PARTY reader (tifffile + pandas + pyarrow, ome-zarr-py's
Reader + ome-zarr-models, Pillow, pyarrow + imagecodecs) and pixels, shapes, dtypes, counts and column names are
checked against docs/dataset_formats.md. The generators never import cellio, and each is a pure function of its
arguments. Tiny odd sizes (W != H) so a transposed read fails."""
from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import io
import pkgutil
import re
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pydantic
import pytest
import tifffile
import zarr
from PIL import Image

FORMATS = Path(__file__).parent / "formats"
sys.path.insert(0, str(FORMATS))
import cells  # noqa: E402
import jump  # noqa: E402
import ome_zarr_plate  # noqa: E402
import rxrx2  # noqa: E402
import rxrx3_core  # noqa: E402


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_no_generator_imports_cellio():
    for path in FORMATS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("cellio", "trainer") for n in names), f"{path.name} imports {names}"


def test_size_is_width_by_height():
    assert cells.parse_size("70x53") == (53, 70) and cells.parse_size("64") == (64, 64)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        cells.parse_size("70by53")


def test_perturbations_are_learnable_from_channel_means():
    """Fields of two perturbations and the control separate on per-channel means (centroid distance well above the
    field-to-field spread): the signal a classifier can learn."""
    roles = rxrx3_core.ROLES
    means = {}
    for name in (None, "GENE1", "GENE2"):
        effect = cells.effect_of(name, 1.0, 7, len(roles), roles)
        means[name] = np.array([cells.render_field(roles, (48, 64), 7, (name, k), effect=effect).mean(axis=(1, 2))
                                for k in range(6)])
    spread = max(m.std(axis=0).max() for m in means.values())
    for a, b in ((None, "GENE1"), (None, "GENE2"), ("GENE1", "GENE2")):
        assert np.abs(means[a].mean(0) - means[b].mean(0)).max() > 3 * spread, (a, b)
    assert cells.effect_of(None, 1.0, 7, 6) == cells.neutral(6)


# ----------------------------------------------------------------------------------------------- JUMP cpg0016
JUMP_KW = dict(plates=2, size="37x23", wells=3, fields=2, seed=5)


@pytest.fixture(scope="module")
def jump_out(tmp_path_factory):
    return jump.write_jump(tmp_path_factory.mktemp("jump"), **JUMP_KW)


def _local(out: Path, url: str) -> Path:
    assert url.startswith("s3://cellpainting-gallery/cpg0016-jump/"), url
    return out / url.removeprefix("s3://cellpainting-gallery/")


def test_jump_images_round_trip_through_tifffile(jump_out):
    tiffs = sorted(jump_out.rglob("*.tiff"))
    assert len(tiffs) == 2 * 3 * 2 * 8  # plates x wells x fields x (5 fluorescence + 3 brightfield)
    for i in range(2):
        illum = {ch: np.load(jump.illum_dir(jump_out, i) / f"{jump.plate_name(i)}_Illum{ch}.npy")
                 for ch in jump.FLUORESCENCE + jump.BRIGHTFIELD}
        for ch, f in illum.items():
            assert f.shape == (23, 37) and f.dtype == np.float64
            assert abs(np.percentile(f, 2) - 1) < 0.01  # CellProfiler's robust-minimum scaling
            assert 0.9 < f.min() and f.max() < 2
        for well, jcp in jump.plate_layout(i, 3, 5):
            for field in (1, 2):
                want = jump.field_images(i, well, jcp, field, jump.FLUORESCENCE + jump.BRIGHTFIELD, (23, 37),
                                         illum, 5, 1.0)
                for ch, img in want.items():
                    path = jump.images_dir(jump_out, i) / jump.phenix_file(well, field, ch)
                    with tifffile.TiffFile(path) as tif:
                        assert len(tif.pages) == 1
                        got = tif.asarray()
                    assert got.dtype == np.uint16 and got.shape == (23, 37)
                    np.testing.assert_array_equal(got, img)


def test_jump_load_data_columns_and_paths(jump_out):
    names = sorted(jump.FLUORESCENCE + jump.BRIGHTFIELD)
    meta = ["Metadata_Source", "Metadata_Batch", "Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    for i in range(2):
        ldir = jump.load_data_dir(jump_out, i)
        assert ldir.relative_to(jump_out).as_posix() == (
            f"cpg0016-jump/source_4/workspace/load_data_csv/{jump.batch_name(i)}/{jump.plate_name(i)}")
        plain = pd.read_csv(ldir / "load_data.csv")
        assert list(plain.columns) == (meta + [f"FileName_Orig{c}" for c in names]
                                       + [f"PathName_Orig{c}" for c in names])
        illum = pd.read_csv(ldir / "load_data_with_illum.csv")
        assert list(illum.columns) == (meta + [f"FileName_Illum{c}" for c in names]
                                       + [f"FileName_Orig{c}" for c in names]
                                       + [f"PathName_Illum{c}" for c in names] + [f"PathName_Orig{c}" for c in names])
        assert len(plain) == len(illum) == 3 * 2
        assert set(plain["Metadata_Site"]) == {1, 2} and set(plain["Metadata_Plate"]) == {jump.plate_name(i)}
        for row in illum.itertuples(index=False):
            r = row._asdict()
            for ch in names:
                assert r[f"PathName_Orig{ch}"].endswith("/Images/")
                tiff = _local(jump_out, r[f"PathName_Orig{ch}"] + r[f"FileName_Orig{ch}"])
                assert tiff.is_file()
                m = re.fullmatch(r"r(\d\d)c(\d\d)f(\d\d)p01-ch(\d)sk1fk1fl1\.tiff", tiff.name)
                well = "ABCDEFGHIJKLMNOP"[int(m[1]) - 1] + m[2]
                assert (well, int(m[3]), int(m[4])) == (r["Metadata_Well"], r["Metadata_Site"],
                                                        jump.PHENIX_CHANNEL[ch])
                npy = _local(jump_out, r[f"PathName_Illum{ch}"] + "/" + r[f"FileName_Illum{ch}"])
                assert npy.name == f"{jump.plate_name(i)}_Illum{ch}.npy" and npy.is_file()
        table = pq.read_table(ldir / "load_data_with_illum.parquet")
        fluo = sorted(jump.FLUORESCENCE)
        assert table.column_names == (meta + [f"FileName_Illum{c}" for c in fluo]
                                      + [f"FileName_Orig{c}" for c in fluo] + [f"PathName_Illum{c}" for c in fluo]
                                      + [f"PathName_Orig{c}" for c in fluo])
        assert all(t == pa.string() for t in table.schema.types)


def test_jump_url_columns_gzip_and_float32_illum(tmp_path):
    out = jump.write_jump(tmp_path / "j", plates=1, size="19x13", wells=2, fields=3, columns="url", gzip=True,
                          brightfield=False, illum_dtype="float32", seed=2)
    ldir = jump.load_data_dir(out, 0)
    assert not (ldir / "load_data.csv").exists()
    table = pd.read_csv(ldir / "load_data_with_illum.csv.gz")
    fluo = sorted(jump.FLUORESCENCE)
    assert list(table.columns) == (["Metadata_Source", "Metadata_Batch", "Metadata_Plate", "Metadata_Well",
                                    "Metadata_Site", "Metadata_ImageSizeX", "Metadata_ImageSizeY"]
                                   + [f"URL_Orig{c}" for c in fluo] + [f"URL_Illum{c}" for c in fluo])
    assert set(table["Metadata_ImageSizeX"]) == {19} and set(table["Metadata_ImageSizeY"]) == {13}
    for url in table["URL_OrigDNA"]:
        assert tifffile.imread(_local(out, url)).shape == (13, 19)
    f = np.load(_local(out, table["URL_IllumER"].iloc[0]))
    assert f.dtype == np.float32 and f.shape == (13, 19)
    assert len(list(out.rglob("*.tiff"))) == 2 * 3 * 5


def test_jump_metadata_tables(jump_out):
    meta = jump_out / "metadata"
    plate = pd.read_csv(meta / "plate.csv.gz")
    well = pd.read_csv(meta / "well.csv.gz")
    compound = pd.read_csv(meta / "compound.csv.gz")
    crispr = pd.read_csv(meta / "crispr.csv.gz")
    orf = pd.read_csv(meta / "orf.csv.gz")
    control = pd.read_csv(meta / "perturbation_control.csv")
    assert list(plate.columns) == list(jump.PLATE_COLUMNS) and list(well.columns) == list(jump.WELL_COLUMNS)
    assert list(compound.columns) == list(jump.COMPOUND_COLUMNS) and list(crispr.columns) == list(jump.CRISPR_COLUMNS)
    assert list(orf.columns) == list(jump.ORF_COLUMNS) and list(control.columns) == list(jump.CONTROL_COLUMNS)
    assert list(plate["Metadata_PlateType"]) == ["COMPOUND", "CRISPR"]
    assert len(well) == 2 * 3 and well["Metadata_Well"].str.fullmatch(r"[A-P](0[1-9]|1\d|2[0-4])").all()
    known = set(compound["Metadata_JCP2022"]) | set(crispr["Metadata_JCP2022"]) | set(orf["Metadata_JCP2022"])
    assert set(well["Metadata_JCP2022"]) <= known
    assert {"JCP2022_033924", "JCP2022_800002"} <= set(well["Metadata_JCP2022"])  # DMSO, non-targeting
    assert compound["Metadata_InChIKey"].str.fullmatch(r"[A-Z]{14}-[A-Z]{10}-[A-Z]").all()
    assert orf["Metadata_Insert_Length"].dropna().map(float.is_integer).all()


# ----------------------------------------------------------------------------------------------- OME-Zarr HCS
def _ngff_models():
    """ome-zarr-models' HCS classes for 0.4 and 0.5, usable with the pinned pydantic (2.14).

    ome-zarr-models 1.6 models are generic pydantic-zarr GroupSpecs that pydantic >= 2.13 leaves "not fully
    defined" (ome-zarr-models-py issue 417; 1.7 pins pydantic < 2.13, which constraints.txt rules out): rebuilding
    every model with pydantic-zarr's names in scope makes them usable. Validation itself is unchanged."""
    import pydantic_zarr.v2 as pz2
    import pydantic_zarr.v3 as pz3

    for sub, pz in (("v04", pz2), ("v05", pz3)):
        pkg = importlib.import_module(f"ome_zarr_models.{sub}")
        names = {k: getattr(pz, k) for k in dir(pz) if not k.startswith("_")}
        mods = [importlib.import_module(f"{pkg.__name__}.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)]
        for _ in range(3):  # models refer to each other: a few passes settle them
            for mod in mods:
                for obj in vars(mod).values():
                    if (inspect.isclass(obj) and issubclass(obj, pydantic.BaseModel)
                            and obj.__module__ == mod.__name__):
                        try:
                            obj.model_rebuild(force=True, _types_namespace={**names, **vars(mod)})
                        except pydantic.PydanticUserError:
                            pass  # settles on a later pass
    from ome_zarr_models.v04.hcs import HCS as HCS04
    from ome_zarr_models.v05.hcs import HCS as HCS05
    return {"0.4": HCS04, "0.5": HCS05}


OME_CASES = [("0.4", "uint16", "cyx"), ("0.5", "uint8", "cyx"), ("0.5", "uint16", "tczyx"), ("0.4", "uint8", "tczyx")]


@pytest.mark.parametrize("version,dtype,axes", OME_CASES)
def test_ome_zarr_plate_validates_and_round_trips(tmp_path, version, dtype, axes):
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Plate, Reader

    kw = dict(version=version, dtype=dtype, axes=axes, size="19x13", rows=2, columns=3, fields=2, levels=2,
              name="P7", seed=4)
    path = ome_zarr_plate.write_ome_zarr_plate(tmp_path, **kw)
    fmt = FormatV04() if version == "0.4" else FormatV05()
    wells = [f"{r}/{c}" for r, c in ome_zarr_plate.well_names(2, 3)]
    assert wells == ["A/1", "A/2", "A/3", "B/1", "B/2"]  # B/3 left empty
    if version == "0.4":
        assert (path / ".zattrs").is_file() and not (path / "zarr.json").exists()
        assert zarr.open_group(str(path), mode="r").attrs["plate"]["version"] == "0.4"
    else:
        assert (path / "zarr.json").is_file() and not (path / ".zattrs").exists()
        assert zarr.open_group(str(path), mode="r").attrs["ome"]["version"] == "0.5"

    # ome-zarr-models: the whole hierarchy validates as an HCS plate of this version
    hcs = _ngff_models()[version].from_zarr(zarr.open_group(str(path), mode="r"))
    assert hcs.n_wells == 5
    for k in range(hcs.n_wells):
        well = hcs.get_well_group(k)
        meta = well.attributes.well if version == "0.4" else well.attributes.ome.well
        assert [im.path for im in meta.images] == ["0", "1"]

    # ome-zarr-py: plate structure, then every field's full-resolution pixels
    plate_node = next(iter(Reader(parse_url(str(path), fmt=fmt))()))
    plate = next(s for s in plate_node.specs if isinstance(s, Plate))
    assert plate.row_names == ["A", "B"] and plate.col_names == ["1", "2", "3"] and plate.well_paths == wells
    table = pd.read_csv(tmp_path / "P7.perturbations.csv")
    assert list(table.columns) == list(ome_zarr_plate.PERTURBATION_COLUMNS)
    assert list(table["well"]) == ["A01", "A02", "A03", "B01", "B02"]
    axis_names = list(ome_zarr_plate.AXES[axes])
    for well_path, perturbation in zip(wells, table["perturbation"]):
        for f in range(2):
            node = next(iter(Reader(parse_url(str(path / well_path / str(f)), fmt=fmt))()))
            assert any(isinstance(s, Multiscales) for s in node.specs)
            assert [a["name"] for a in node.metadata["axes"]] == axis_names
            assert node.metadata["channel_names"] == list(ome_zarr_plate.CHANNELS)
            level0, level1 = (np.asarray(d) for d in node.data)
            row, col = well_path.split("/")
            want = ome_zarr_plate.field_image("P7", f"{row}{int(col):02d}", f,
                                              None if perturbation == "DMSO" else perturbation, (13, 19), axes,
                                              dtype, 4, 1.0)
            assert level0.dtype == np.dtype(dtype) and level0.shape == want.shape
            np.testing.assert_array_equal(level0, want)
            assert level1.dtype == np.dtype(dtype) and level1.shape == want.shape[:-2] + (6, 9)


@pytest.mark.parametrize("breakage,message", [
    (lambda ome: ome["plate"]["wells"][0].__setitem__("path", "Z/9"), "not in list of rows"),
    (lambda ome: ome.__setitem__("version", "0.4"), "version"),
], ids=["well outside the plate", "wrong version"])
def test_ome_zarr_models_rejects_a_broken_plate(tmp_path, breakage, message):
    """The validation the round trip relies on is not vacuous."""
    path = ome_zarr_plate.write_ome_zarr_plate(tmp_path, version="0.5", size="19x13", rows=1, columns=2, fields=1,
                                               levels=1, seed=1)
    group = zarr.open_group(str(path), mode="r+")
    ome = group.attrs["ome"]
    breakage(ome)
    group.attrs["ome"] = ome
    with pytest.raises(pydantic.ValidationError, match=message):
        _ngff_models()["0.5"].from_zarr(zarr.open_group(str(path), mode="r"))


# ----------------------------------------------------------------------------------------------- RxRx2
def test_rxrx2_layout_and_pixels(tmp_path):
    kw = dict(size="21x13", experiments=2, plates=1, factors=2, concentrations=2, replicates=1, controls=2, sites=3,
              seed=9)
    out = rxrx2.generate(tmp_path / "rxrx2", **kw)
    meta = pd.read_csv(out / "rxrx2-metadata.csv")
    assert list(meta.columns) == ["site_id", "well_id", "cell_type", "experiment", "plate", "well", "site",
                                  "treatment", "treatment_conc"]
    wells_per_plate = 2 * 2 * 1 + 2
    assert len(meta) == 2 * wells_per_plate * 3 and set(meta["site"]) == {1, 2, 3}
    assert meta["well"].str.fullmatch(r"(A[A-F]|[A-Z])(0[1-9]|[1-3]\d|4[0-8])").all()
    assert (meta["site_id"] == meta["well_id"] + "_" + meta["site"].astype(str)).all()
    assert (meta["well_id"] == meta["experiment"] + "_" + meta["plate"].astype(str) + "_" + meta["well"]).all()
    controls = meta["treatment"].isna()
    assert controls.sum() == 2 * 2 * 3 and meta.loc[controls, "treatment_conc"].isna().all()
    pngs = sorted((out / "images").rglob("*.png"))
    assert len(pngs) == len(meta) * 6
    assert pngs[0].relative_to(out).parts[:3] == ("images", "HUVEC-1", "Plate1")
    max_conc = float(meta["treatment_conc"].max())
    for _, row in meta.iloc[::5].iterrows():
        want = rxrx2.site_images(row, (13, 21), 9, 1.0, max_conc)
        for ch in range(1, 7):
            path = (out / "images" / row["experiment"] / f"Plate{row['plate']}"
                    / f"{row['well']}_s{row['site']}_w{ch}.png")
            with Image.open(path) as im:
                assert im.format == "PNG" and im.mode == "L" and im.size == (21, 13)
                np.testing.assert_array_equal(np.asarray(im), want[ch - 1])


# ----------------------------------------------------------------------------------------------- RxRx3-core
KEY = re.compile(r"^(?P<experiment>(gene|compound)-\d{3})/Plate(?P<plate>\d+)/(?P<address>(A[A-F]|[A-Z])\d{2})"
                 r"_s1_(?P<channel>[1-6])$")


@pytest.fixture(scope="module")
def rxrx3_out(tmp_path_factory):
    return rxrx3_core.generate(tmp_path_factory.mktemp("rxrx3") / "rxrx3-core", size="23x17", genes=2, guides=3,
                               compounds=2, plates=1, rows_per_shard=100, seed=3)


def test_rxrx3_core_metadata(rxrx3_out):
    meta = pd.read_csv(rxrx3_out / "metadata_rxrx3_core.csv")
    assert list(meta.columns) == ["well_id", "experiment_name", "plate", "address", "gene", "treatment", "SMILES",
                                  "concentration", "perturbation_type", "cell_type"]
    assert (meta["well_id"] == meta["experiment_name"] + "_" + meta["plate"].astype(str) + "_" + meta["address"]).all()
    crispr, compound = meta[meta["perturbation_type"] == "CRISPR"], meta[meta["perturbation_type"] == "COMPOUND"]
    guides = crispr[crispr["gene"] != "EMPTY_control"]
    assert (guides["treatment"].str.extract(r"^(.*)_guide_\d+$")[0] == guides["gene"]).all()
    assert guides.groupby("gene")["treatment"].nunique().eq(3).all()
    assert (crispr.loc[crispr["gene"] == "EMPTY_control", "treatment"] == "EMPTY_control").all()
    assert compound["gene"].isna().all()
    assert {"EMPTY_control", "CRISPR_control"} <= set(compound["treatment"])
    dosed = compound[~compound["treatment"].str.endswith("_control")]
    assert sorted(dosed["concentration"].unique()) == list(rxrx3_core.CONCENTRATIONS)
    assert dosed["SMILES"].notna().all()
    assert compound.loc[compound["treatment"].str.endswith("_control"), ["SMILES", "concentration"]].isna().all().all()
    assert (meta["cell_type"] == "HUVEC").all()


def test_rxrx3_core_shards_round_trip_through_pyarrow_and_imagecodecs(rxrx3_out):
    meta = pd.read_csv(rxrx3_out / "metadata_rxrx3_core.csv")
    shards = sorted((rxrx3_out / "data").glob("train-*.parquet"))
    n = len(shards)
    assert [s.name for s in shards] == [f"train-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    image_of = rxrx3_core.default_images((17, 23), 3, 1.0)
    expected = {row["well_id"]: row for _, row in meta.iterrows()}
    keys = []
    split_wells = 0
    for shard in shards:
        f = pq.ParquetFile(shard)
        assert f.schema_arrow.names == ["__key__", "jp2"]
        assert f.schema_arrow.field("__key__").type == pa.string()
        assert f.schema_arrow.field("jp2").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        assert b"Image" in f.schema_arrow.metadata[b"huggingface"]
        rows = f.read().to_pylist()
        keys += [r["__key__"] for r in rows]
        split_wells += KEY.match(rows[0]["__key__"])["channel"] != "1"
        for r in rows[::7]:
            m = KEY.match(r["__key__"])
            assert m, r["__key__"]
            assert r["jp2"]["path"] == f"{m['address']}_s1_{m['channel']}.jp2"
            assert r["jp2"]["bytes"][:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n"  # the JP2 container signature
            got = imagecodecs.jpeg2k_decode(r["jp2"]["bytes"])
            want = image_of(expected[f"{m['experiment']}_{int(m['plate'])}_{m['address']}"])[int(m["channel"]) - 1]
            assert got.dtype == np.uint8 and got.shape == (17, 23)
            np.testing.assert_array_equal(got, want)
    assert len(keys) == 6 * len(meta) and split_wells >= 1  # 100 rows a shard: some wells straddle two shards
    wells = [k.rsplit("_", 1)[0] for k in keys]
    assert all(len(set(wells[i:i + 6])) == 1 and [k[-1] for k in keys[i:i + 6]] == list("123456")
               for i in range(0, len(keys), 6))


def test_write_rxrx3_core_takes_any_wells_and_images(tmp_path):
    meta = pd.DataFrame([dict(well_id=f"gene-009_3_{a}", experiment_name="gene-009", plate=3, address=a,
                              gene="TP53", treatment=f"TP53_guide_{k + 1}", SMILES=None, concentration=None,
                              perturbation_type="CRISPR", cell_type="HUVEC", well_type_label="Query guides")
                         for k, a in enumerate(["A01", "AF48", "P17"])])
    images = {a: np.random.default_rng(k).integers(0, 256, (6, 11, 17), dtype=np.uint8)
              for k, a in enumerate(meta["address"])}
    paths = rxrx3_core.write_rxrx3_core(tmp_path, meta, lambda row: images[row["address"]], rows_per_shard=7)
    assert len(paths) == 3  # 18 rows, 7 a shard
    assert list(pd.read_csv(tmp_path / "metadata_rxrx3_core.csv").columns)[-1] == "well_type_label"
    rows = pa.concat_tables([pq.read_table(p) for p in paths]).to_pylist()
    for r in rows:
        m = KEY.match(r["__key__"])
        np.testing.assert_array_equal(imagecodecs.jpeg2k_decode(r["jp2"]["bytes"]),
                                      images[m["address"]][int(m["channel"]) - 1])
    with pytest.raises(ValueError, match="1,536-well address"):
        rxrx3_core.write_rxrx3_core(tmp_path / "bad", meta.assign(address="AG01", well_id="gene-009_3_AG01"),
                                    lambda row: images["A01"])
    with pytest.raises(ValueError, match=r"expected uint8 \(6, H, W\)"):
        rxrx3_core.write_rxrx3_core(tmp_path / "bad2", meta, lambda row: images["A01"][:3])
    assert rxrx3_core.address_1536(0) == "A01" and rxrx3_core.address_1536(1535) == "AF48"


# ----------------------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("write", [
    lambda out: jump.write_jump(out, plates=1, size="19x13", wells=2, fields=2, gzip=True, seed=1),
    lambda out: ome_zarr_plate.write_ome_zarr_plate(out, version="0.4", size="19x13", rows=1, columns=2, fields=1,
                                                    seed=1),
    lambda out: rxrx2.generate(out, size="19x13", experiments=1, factors=1, concentrations=1, replicates=1,
                               controls=1, sites=2, seed=1),
    lambda out: rxrx3_core.generate(out, size="19x13", genes=1, guides=2, compounds=1, plates=1, seed=1),
], ids=["jump", "ome_zarr", "rxrx2", "rxrx3_core"])
def test_output_is_a_pure_function_of_the_arguments(tmp_path, write):
    write(tmp_path / "a")
    write(tmp_path / "b")
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert a and a == b
