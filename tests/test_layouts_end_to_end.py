"""Every data set cellio reads, through the whole chain, from the format generators' output (tests/formats/, written
with the formats' own third-party writers, independent of cellio):

    generator -> `cellio ingest SRC STORE --from NAME` -> `cellio verify STORE` -> `open_store(STORE).read` (equal to
    the format's third-party decode: tifffile + the illumination .npy, zarr, pyarrow + imagecodecs, Pillow) ->
    `create_loader` (torch and DALI CPU: every site once, the layout's channel count) -> `cellio show`

for JUMP cpg0016 (5 fluorescence channels, and 8 with brightfield, uint16), OME-Zarr plates (NGFF 0.4 uint16 and 0.5
uint8), RxRx3-core (JPEG 2000 in parquet shards) and RxRx2 (PNG). Then: a rerun of a finished ingest changes
nothing, a site skipped for a missing file is stored by the rerun after the file is back, damage is repaired from
the raw data through the bound readers, one bad input per format stops the ingest with a named error (file or key,
no traceback), and `cellio export --ome-zarr` of a JUMP store validates and reads back equal, uint16.
Sites are 37 wide and 23 high, so an H/W mix-up fails."""
from __future__ import annotations

import hashlib
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tifffile
import torch
import zarr
from PIL import Image

pytest.importorskip("ome_zarr")
pytest.importorskip("ome_zarr_models")

import cellio  # noqa: E402
from cellio.cli import main  # noqa: E402
from cellio.datasets.ome_zarr import ome_zarr_reader  # noqa: E402
from cellio.datasets.ome_zarr.models import hcs_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "formats"))
import jump  # noqa: E402
import ome_zarr_plate  # noqa: E402
import rxrx2  # noqa: E402
import rxrx3_core  # noqa: E402

W, H = 37, 23
SIZE = f"{W}x{H}"
SEED = 5
JUMP_PLATES, JUMP_WELLS, JUMP_FIELDS = 2, 3, 2
ALL_JUMP = jump.FLUORESCENCE + jump.BRIGHTFIELD


@dataclass(frozen=True)
class Case:
    """One layout's run: the generator's output `src` ingested `--from dataset` with `args`; `dtype` and `channels`
    (names, or keys where the raw files name them: RxRx's w1..w6) what the store must hold; `n_sites` how many
    sites the generator wrote."""

    dataset: str
    src: Path
    args: tuple[str, ...]
    dtype: str
    channels: tuple[str, ...]
    n_sites: int


# ------------------------------------------------------------------------------------ third-party decode per format
def _jump_site(root: Path, row: pd.Series, channels: tuple[str, ...]) -> np.ndarray:
    """tifffile + numpy: each channel's TIFF divided by its plate's illumination function, rounded (scale "keep")."""
    i = [jump.plate_name(k) for k in range(JUMP_PLATES)].index(row["plate"])
    planes = []
    for ch in channels:
        raw = tifffile.imread(jump.images_dir(root, i) / jump.phenix_file(row["well"], int(row["site"]), ch))
        illum = np.load(jump.illum_dir(root, i) / f"{jump.plate_name(i)}_Illum{ch}.npy")
        planes.append(np.clip(np.rint(raw.astype(np.float64) / illum), 0, 65535).astype(np.uint16))
    return np.stack(planes, axis=-1)


def _ome_site(plate: Path, row: pd.Series) -> np.ndarray:
    """zarr: the field's full-resolution array as its multiscales metadata names it, at T = 0 and the middle Z
    plane, (C, Y, X) -> (Y, X, C)."""
    well = zarr.open_group(str(plate / row["well"][0] / str(int(row["well"][1:]))), mode="r")
    field = well[str(int(row["site"]) - 1)]  # NGFF fields are the well's images 0..n-1; sites are 1-based
    attrs = field.attrs.asdict()
    multiscales = (attrs.get("ome") or attrs)["multiscales"][0]
    data = np.asarray(field[multiscales["datasets"][0]["path"]][:])
    axes = [a["name"] for a in multiscales["axes"]]
    if axes == ["t", "c", "z", "y", "x"]:
        data = data[0, :, data.shape[2] // 2]
    assert data.ndim == 3, axes
    return np.moveaxis(data, 0, -1)


def _rxrx3_images(root: Path) -> dict[str, np.ndarray]:
    """pyarrow + imagecodecs: every key's JPEG 2000 decoded."""
    out = {}
    for shard in sorted((root / "data").glob("train-*.parquet")):
        for r in pq.read_table(shard).to_pylist():
            out[r["__key__"]] = imagecodecs.jpeg2k_decode(r["jp2"]["bytes"])
    return out


def _rxrx2_site(root: Path, row: pd.Series) -> np.ndarray:
    """Pillow: the six greyscale PNGs of the site."""
    planes = []
    for ch in range(1, 7):
        with Image.open(rxrx2.image_path(root, row["experiment"], int(row["plate"]), row["well"], int(row["site"]),
                                         ch)) as im:
            planes.append(np.asarray(im))
    return np.stack(planes, axis=-1)


# ------------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("raw")
    return {
        "jump": jump.write_jump(base / "jump", plates=JUMP_PLATES, size=SIZE, wells=JUMP_WELLS, fields=JUMP_FIELDS,
                                seed=SEED),
        "ome04": ome_zarr_plate.write_ome_zarr_plate(base / "ome04", version="0.4", dtype="uint16", size=SIZE, rows=2,
                                                     columns=2, fields=2, levels=1, name="P4", seed=SEED),
        "ome05": ome_zarr_plate.write_ome_zarr_plate(base / "ome05", version="0.5", dtype="uint8", axes="tczyx",
                                                     size=SIZE, rows=1, columns=3, fields=3, levels=2, name="P5",
                                                     seed=SEED),
        "rxrx3": rxrx3_core.generate(base / "rxrx3-core", size=SIZE, genes=1, guides=2, compounds=1, plates=1,
                                     rows_per_shard=40, seed=SEED),
        "rxrx2": rxrx2.generate(base / "rxrx2", size=SIZE, experiments=2, factors=1, concentrations=1,
                                replicates=1, controls=1, sites=3, seed=SEED),
    }


def _cases(raw: dict[str, Path]) -> dict[str, Case]:
    mirror = raw["jump"] / jump.PROJECT
    n_jump = JUMP_PLATES * JUMP_WELLS * JUMP_FIELDS
    n_rxrx3 = len(pd.read_csv(raw["rxrx3"] / "metadata_rxrx3_core.csv"))
    n_rxrx2 = len(pd.read_csv(raw["rxrx2"] / "rxrx2-metadata.csv"))
    return {
        "jump-5": Case("jump", mirror, ("--metadata", str(raw["jump"] / "metadata")), "uint16", jump.FLUORESCENCE,
                       n_jump),
        "jump-8": Case("jump", mirror, ("--channels", ",".join(ALL_JUMP)), "uint16", ALL_JUMP, n_jump),
        "ome-zarr-0.4": Case("ome-zarr", raw["ome04"],
                             ("--metadata", str(raw["ome04"].parent / "P4.perturbations.csv")), "uint16",
                             ome_zarr_plate.CHANNELS, 3 * 2),
        "ome-zarr-0.5": Case("ome-zarr", raw["ome05"], (), "uint8", ome_zarr_plate.CHANNELS, 2 * 3),
        "rxrx3-core": Case("rxrx3-core", raw["rxrx3"], (), "uint8", ("w1", "w2", "w3", "w4", "w5", "w6"), n_rxrx3),
        "rxrx2": Case("rxrx2", raw["rxrx2"], (), "uint8", ("w1", "w2", "w3", "w4", "w5", "w6"), n_rxrx2),
    }


NAMES = ("jump-5", "jump-8", "ome-zarr-0.4", "ome-zarr-0.5", "rxrx3-core", "rxrx2")


def _ingest(case: Case, store: Path, *more: str) -> int:
    return main(["ingest", str(case.src), str(store), "--from", case.dataset, "--workers", "1", "--no-progress",
                 *case.args, *more])


@pytest.fixture(scope="module")
def stores(raw, tmp_path_factory) -> dict[str, tuple[Case, Path]]:
    """Each case ingested once through the command line, with the defaults (codec, sharded layout)."""
    base = tmp_path_factory.mktemp("stores")
    out = {}
    for name, case in _cases(raw).items():
        assert _ingest(case, base / f"{name}.zarr") == 0, name
        out[name] = (case, base / f"{name}.zarr")
    return out


def _expected(name: str, case: Case, raw: dict[str, Path], sites: pd.DataFrame) -> np.ndarray:
    """The store's sites as the format's third-party reader decodes them."""
    if name.startswith("jump"):
        return np.stack([_jump_site(raw["jump"], r, case.channels) for _, r in sites.iterrows()])
    if name.startswith("ome-zarr"):
        return np.stack([_ome_site(case.src, r) for _, r in sites.iterrows()])
    if name == "rxrx3-core":
        images = _rxrx3_images(case.src)
        return np.stack([np.stack([images[f"{r['experiment']}/Plate{r['plate']}/{r['well']}_s1_{c}"]
                                   for c in range(1, 7)], axis=-1) for _, r in sites.iterrows()])
    return np.stack([_rxrx2_site(case.src, r) for _, r in sites.iterrows()])


# ------------------------------------------------------------------------------------------------------ the chain
@pytest.mark.parametrize("name", NAMES)
def test_ingest_verify_and_read_back_the_third_party_decode(stores, raw, name, capsys):
    case, path = stores[name]
    assert main(["verify", str(path), "--no-progress"]) == 0
    assert "OK: no damage found" in capsys.readouterr().out
    store = cellio.open_store(path)
    assert len(store) == case.n_sites and store.dtype == np.dtype(case.dtype)
    assert store.image_shape == (H, W, len(case.channels))
    assert case.channels in (store.layout.channel_names, store.layout.channel_keys)
    assert store.layout.name == case.dataset
    sites = store.sites
    for column in ("plate", "well", "site"):
        assert column in sites.columns, column
    assert sites["well"].str.fullmatch(r"[A-Z]{1,2}\d{2}").all()
    assert (sites["site"] >= 1).all() and (sites["site"] <= store.layout.sites_per_well).all()
    assert not sites.duplicated(["experiment", "plate", "well", "site"]).any()
    pixels = store.read(np.arange(len(store)))
    assert pixels.dtype == np.dtype(case.dtype) and pixels.shape == (len(store), H, W, len(case.channels))
    np.testing.assert_array_equal(pixels, _expected(name, case, raw, sites))
    if case.dtype == "uint16":
        assert pixels.max() > 255  # 16-bit data kept in 16 bits, not squeezed into 8
    mean, std = store.channel_stats("plate")  # a plate is (experiment, plate): RxRx numbers plates 1.. per experiment
    first = sites.iloc[0]
    rows = np.flatnonzero(((sites["experiment"] == first["experiment"]) & (sites["plate"] == first["plate"])).to_numpy())
    flat = pixels[rows].reshape(-1, len(case.channels)).astype(np.float64)
    np.testing.assert_allclose(mean[rows[0]], flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std[rows[0]], flat.std(0), rtol=1e-4)


def test_the_ome_zarr_fields_are_sites_one_to_n(stores):
    """NGFF numbers a well's fields 0..n-1; the site table numbers sites 1..n, as every other layout does."""
    store = cellio.open_store(stores["ome-zarr-0.5"][1])
    assert sorted(store.sites["site"].unique()) == [1, 2, 3] and store.layout.sites_per_well == 3
    assert list(store.sites["well"].unique()) == ["A01", "A02"]


@pytest.mark.parametrize("name", NAMES)
def test_both_loaders_yield_every_site_once_with_the_layout_channels(stores, name):
    pytest.importorskip("nvidia.dali")
    case, path = stores[name]
    store = cellio.open_store(path)
    n_ch = len(case.channels)
    evals = {}
    for backend in ("torch", "dali"):
        loader = cellio.create_loader(store, 4, train=False, datasets=None, backend=backend, device="cpu",
                                      num_workers=0, crop_size=16)
        batches = list(loader)
        loader.close()
        index = torch.cat([b["index"] for b in batches])
        assert sorted(index.tolist()) == list(range(len(store))), backend
        assert all(b["image"].shape[1:] == (n_ch, 16, 16) for b in batches)
        evals[backend] = (index, torch.cat([b["image"] for b in batches]))
        train = cellio.create_loader(store, 3, train=True, datasets=None, backend=backend, device="cpu",
                                     num_workers=0, crop_size=16, last_batch="partial", seed=1)
        seen = [b for b in train]
        train.close()
        assert sorted(torch.cat([b["index"] for b in seen]).tolist()) == list(range(len(store))), backend
        images = torch.cat([b["image"] for b in seen])
        assert images.shape[1] == n_ch and torch.isfinite(images).all() and images.std() > 0.1
        plates = torch.cat([b["plate"] for b in seen])
        assert plates.unique().numel() == store.sites["plate"].nunique()
    assert torch.equal(evals["torch"][0], evals["dali"][0])
    torch.testing.assert_close(evals["dali"][1], evals["torch"][1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_show_writes_a_composite(stores, name, tmp_path, capsys):
    _, path = stores[name]
    store = cellio.open_store(path)
    row = store.sites.iloc[len(store) // 2]
    out = tmp_path / "site.png"
    assert main(["show", str(path), row["id_code"], "--site", str(row["site"]), "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with Image.open(out) as im:
        picture = np.asarray(im.convert("RGB"))
    assert picture.shape[0] >= 2 * H and picture.shape[1] >= 3 * W  # the channel grid beside the composite
    assert picture.max() > 0


@pytest.mark.parametrize("name", [n for n in NAMES if n != "jump-8"])  # the raw reader's defaults: no brightfield
def test_show_reads_a_raw_source_through_its_bound_reader(stores, name, tmp_path, capsys):
    """`cellio show RAW ID`: the detected reader bound to RAW (a JUMP mirror's site shape, an OME-Zarr plate's
    layout; an NGFF 0.5 plate is a Zarr v3 group, not a store) shows the pixels the store holds."""
    from cellio.render import load_site

    case, path = stores[name]
    store = cellio.open_store(path)
    row = store.sites.iloc[len(store) - 1]
    image, raw_row, layout = load_site(case.src, row["id_code"], int(row["site"]))
    assert layout.name == case.dataset and (raw_row["well"], raw_row["site"]) == (row["well"], row["site"])
    np.testing.assert_array_equal(image, store.read_one(len(store) - 1))
    out = tmp_path / "raw.png"
    assert main(["show", str(case.src), row["id_code"], "--site", str(row["site"]), "-o", str(out)]) == 0
    assert out.is_file()


# ------------------------------------------------------------------------------------------- reruns and repairs
def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", NAMES)
def test_a_rerun_of_a_finished_ingest_changes_nothing(stores, name, capsys):
    case, path = stores[name]
    before = _digest(path)
    capsys.readouterr()
    assert _ingest(case, path) == 0
    assert f"{case.n_sites} sites stored, 0 failed, 0 written by this run" in capsys.readouterr().out
    assert _digest(path) == before


def test_a_skipped_site_is_stored_by_the_rerun_once_its_file_is_back(raw, tmp_path, capsys):
    """JUMP with brightfield (a reader bound to the channels asked for): a missing TIFF is skipped and recorded,
    the rerun after it is restored stores it, and the store then verifies and reads back whole."""
    case = _cases(raw)["jump-8"]
    tiff = jump.images_dir(raw["jump"], 1) / jump.phenix_file(jump.plate_layout(1, JUMP_WELLS, SEED)[1][0], 2,
                                                              "Brightfield_H")
    kept = tiff.read_bytes()
    tiff.unlink()
    try:
        with pytest.raises(cellio.MetadataError, match=rf"{tiff.name}"):
            cellio.ingest(case.src, tmp_path / "x.zarr", reader="jump", channels=ALL_JUMP, workers=1,
                          progress=False)  # the reader lists each image folder before anything is read
        from cellio.datasets.jump import jump_reader

        reader = jump_reader(case.src, brightfield=True, check_files=False)
        report = cellio.ingest(case.src, tmp_path / "s.zarr", reader=reader, workers=1, progress=False,
                               on_error="skip")
        assert report.n_failed == 1 and tiff.name in report.failed[0].reason
    finally:
        tiff.write_bytes(kept)
    again = cellio.ingest(case.src, tmp_path / "s.zarr", reader=reader, workers=1, progress=False)
    assert again.complete and again.n_ok == case.n_sites and again.n_failed == 0 and again.failed == ()
    assert main(["verify", str(tmp_path / "s.zarr"), "--no-progress"]) == 0
    store = cellio.open_store(tmp_path / "s.zarr")
    np.testing.assert_array_equal(store.read(np.arange(len(store))),
                                  np.stack([_jump_site(raw["jump"], r, ALL_JUMP) for _, r in store.sites.iterrows()]))


@pytest.mark.parametrize("name", ["jump-8", "ome-zarr-0.4"])
def test_damage_is_repaired_through_the_bound_reader(stores, raw, name, tmp_path, capsys):
    """`cellio verify STORE --repair RAW` binds the data set's reader to RAW again with the ingest's own choices
    (channels, metadata) and rewrites the damaged site."""
    case, built = stores[name]
    path = tmp_path / "s.zarr"
    shutil.copytree(built, path)
    shard = next(p for p in sorted((path / "images" / "c").rglob("*")) if p.is_file())
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["verify", str(path), "--no-progress"]) != 0
    capsys.readouterr()
    assert main(["verify", str(path), "--repair", str(case.src), "--workers", "1", "--no-progress"]) == 0
    assert main(["verify", str(path), "--no-progress"]) == 0
    store = cellio.open_store(path)
    np.testing.assert_array_equal(store.read(np.arange(len(store))),
                                  cellio.open_store(built).read(np.arange(len(store))))


# -------------------------------------------------------------------------------------------------- bad input
def _bad_jump(tmp: Path) -> tuple[Path, str, str]:
    """A TIFF of the wrong pixel type (uint8) where a uint16 one belongs."""
    root = jump.write_jump(tmp, plates=1, size=SIZE, wells=2, fields=1, brightfield=False, seed=SEED)
    well = jump.plate_layout(0, 2, SEED)[1][0]
    tiff = jump.images_dir(root, 0) / jump.phenix_file(well, 1, "RNA")
    tifffile.imwrite(tiff, (tifffile.imread(tiff) // 257).astype(np.uint8))
    return root / jump.PROJECT, "jump", rf"{re.escape(str(tiff))}.*uint8"


def _bad_ome(tmp: Path) -> tuple[Path, str, str]:
    """Plate metadata naming a well outside its rows: ome-zarr-models rejects it."""
    plate = ome_zarr_plate.write_ome_zarr_plate(tmp, version="0.4", size=SIZE, rows=1, columns=2, fields=1, levels=1,
                                                name="P9", seed=SEED)
    group = zarr.open_group(str(plate), mode="r+")
    meta = group.attrs["plate"]
    meta["wells"][0]["path"] = "Z/9"
    group.attrs["plate"] = meta
    return plate, "ome-zarr", rf"{re.escape(str(plate))}.*(Z/9|not in list of rows)"


def _bad_rxrx3(tmp: Path) -> tuple[Path, str, str]:
    """Garbage behind a JP2 signature in a shard's row."""
    root = rxrx3_core.generate(tmp, size=SIZE, genes=1, guides=1, compounds=1, plates=1, rows_per_shard=40,
                               seed=SEED)
    shard = sorted((root / "data").glob("train-*.parquet"))[1]
    table = pq.read_table(shard)
    rows = table.to_pylist()
    rows[4]["jp2"]["bytes"] = b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"garbage" * 9
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard, row_group_size=rxrx3_core.ROW_GROUP_ROWS)
    return root, "rxrx3-core", rf"data/{shard.name}: row 4 \(key '{re.escape(rows[4]['__key__'])}'\).*does not decode"


def _bad_rxrx2(tmp: Path) -> tuple[Path, str, str]:
    """A site's channel 3 PNG is missing."""
    root = rxrx2.generate(tmp, size=SIZE, experiments=1, factors=1, concentrations=1, replicates=1, controls=1,
                          sites=2, seed=SEED)
    r = pd.read_csv(root / "rxrx2-metadata.csv").iloc[1]
    png = rxrx2.image_path(root, r["experiment"], int(r["plate"]), r["well"], int(r["site"]), 3)
    png.unlink()
    return root, "rxrx2", rf"{re.escape(png.name)}: channel file is missing"


@pytest.mark.parametrize("make", [_bad_jump, _bad_ome, _bad_rxrx3, _bad_rxrx2],
                         ids=["jump", "ome-zarr", "rxrx3-core", "rxrx2"])
def test_bad_input_is_a_named_error_not_a_traceback(make, tmp_path, capsys):
    src, dataset, expected = make(tmp_path / "raw")
    store = tmp_path / "s.zarr"
    capsys.readouterr()
    rc = main(["ingest", str(src), str(store), "--from", dataset, "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("cellio ingest: error: ") and len(err.strip().splitlines()) == 1, err
    assert re.search(expected, err), err
    if (store / "zarr.json").exists():  # nothing half-written is reported as done
        assert not cellio.open_store(store, allow_incomplete=True).complete


def test_jump_channels_are_chosen_on_the_command_line_brightfield_included(raw, tmp_path, capsys):
    """--channels binds the JUMP reader to exactly those (in that order: only their files are read); an unknown name
    is refused before anything is written, listing every JUMP channel."""
    mirror = raw["jump"] / jump.PROJECT
    store = tmp_path / "bf.zarr"
    assert main(["ingest", str(mirror), str(store), "--from", "jump", "--channels", "Brightfield_L,DNA",
                 "--plates", jump.plate_name(1), "--workers", "1", "--no-progress"]) == 0
    opened = cellio.open_store(store)
    assert opened.layout.channel_names == ("Brightfield_L", "DNA") and set(opened.sites["plate"]) == {
        jump.plate_name(1)}
    np.testing.assert_array_equal(opened.read(np.arange(len(opened))), np.stack(
        [_jump_site(raw["jump"], r, ("Brightfield_L", "DNA")) for _, r in opened.sites.iterrows()]))
    capsys.readouterr()
    assert main(["ingest", str(mirror), str(tmp_path / "no.zarr"), "--from", "jump", "--channels", "DNA,Actin",
                 "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"channels \['Actin'\]: not channels of layout 'jump'; expected names among \[.*'Brightfield_L'",
                     err), err
    assert not (tmp_path / "no.zarr").exists()


# ------------------------------------------------------------------------------------------------------ export
def test_a_jump_store_exports_to_ome_zarr_that_validates_and_reads_back_equal(stores, tmp_path, capsys):
    case, path = stores["jump-5"]
    store = cellio.open_store(path)
    out = tmp_path / "plates"
    assert main(["export", str(path), str(out), "--ome-zarr", "--no-progress"]) == 0
    plates = sorted(out.glob("*.ome.zarr"))
    names = [f"{jump.batch_name(i)}_{jump.plate_name(i)}" for i in range(JUMP_PLATES)]  # {experiment}_{plate}
    assert [p.name for p in plates] == [f"{n}.ome.zarr" for n in names]
    for i, plate in enumerate(plates):
        hcs = hcs_model("0.4").from_zarr(zarr.open_group(str(plate), mode="r"))
        want = store.sites[store.sites["plate"] == jump.plate_name(i)]
        assert hcs.n_wells == want["well"].nunique()
        back = ome_zarr_reader(plate)
        assert back.layout.pixel_dtype == "uint16" and back.layout.channel_names == case.channels
        sites = back.read_sites(plate)
        assert list(zip(sites["well"], sites["site"])) == list(zip(want["well"], want["site"]))
        got = np.stack([back.read_site(str(plate), r) for r in sites.to_dict("records")])
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, store.read(want.index.to_numpy()))
    # and the exported plate ingests again into the same pixels
    again = tmp_path / "again.zarr"
    assert main(["ingest", str(plates[0]), str(again), "--from", "ome-zarr", "--workers", "1", "--no-progress"]) == 0
    back = cellio.open_store(again)
    want = store.sites[store.sites["plate"] == jump.plate_name(0)]
    assert list(zip(back.sites["well"], back.sites["site"])) == list(zip(want["well"], want["site"]))
    np.testing.assert_array_equal(back.read(np.arange(len(back))), store.read(want.index.to_numpy()))
