"""16-bit data sets of 5 and 8 channels go through the whole library: a data set whose reader gives each site's
pixels through `read_site` (here: one .npy per site, uint16, 17x11 so H/W mix-ups fail) is ingested (all channels,
a subset by name, some plates; from a local directory and from a URL passed through untouched), verified and
repaired, read back in its own dtype, normalised per channel from the store's exact statistics, loaded by both
backends (DALI CPU against the torch reference) with channels chosen at load, and shown as a composite."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import cellio
from cellio.datasets import Channel, ControlGroup, DatasetLayout, DatasetReader, PlateGeometry, Perturbations, registry
from cellio.errors import LayoutError, MetadataError, StoreError
from cellio.loading.transforms import AugmentConfig

H, W = 17, 11
FLUO = (Channel("DNA", "dna", (0, 0, 255), (0, 30000)), Channel("ER", "er", (0, 255, 0), (1000, 40000)),
        Channel("RNA", "rna", None, None), Channel("AGP", "agp", (255, 0, 0), (0, 65535)),
        Channel("Mito", "mito", (255, 0, 255), (500, 20000)))
BRIGHT = tuple(Channel(f"Brightfield{k}", f"bf{k}") for k in (1, 2, 3))
PLATES = ("BR001", "BR002")
WELLS = ("A01", "C07", "P24")


def _layout(n_channels: int) -> DatasetLayout:
    return DatasetLayout(
        name=f"deep{n_channels}", version=1, channels=(FLUO + BRIGHT)[:n_channels], pixel_dtype="uint16",
        site_shape=(1080, 1080), sites_per_well=2, plate=PlateGeometry(16, 24),
        perturbations=Perturbations("compound", 2, controls=(ControlGroup("negcon", (9,)),),
                                    well_type_column="kind", treatment_well_type="trt"),
        cell_types=("U2OS",), splits=("train", "test"), ids=_ids())


def _ids():
    from cellio.datasets import IdFormats

    return IdFormats(well="{plate}_{well}", site="{plate}_{well}_{site}")


def read_sites(raw) -> pd.DataFrame:
    import fsspec

    with fsspec.open(f"{raw}/sites.csv", "rt") as f:
        return pd.read_csv(f, dtype={"compound": "Int64", "plate": str})


def read_site(raw: str, row) -> np.ndarray:
    """The site's (H, W, C) uint16 pixels: one .npy per site (a local path or any fsspec URL)."""
    import fsspec

    with fsspec.open(f"{raw}/{row['file']}", "rb") as f:
        return np.load(f)


def is_raw_dir(path: Path) -> bool:
    return (Path(path) / "sites.csv").is_file() and (Path(path) / "deep.txt").is_file()


def _reader(n_channels: int) -> DatasetReader:
    return DatasetReader(_layout(n_channels), f"deep{n_channels}-npy", read_sites, is_raw_dir,
                         "a directory with sites.csv, deep.txt and a .npy per site", stats_source="sites.csv",
                         read_site=read_site)


@pytest.fixture()
def registered(monkeypatch):
    monkeypatch.setattr(registry, "_READERS", dict(registry._READERS))  # the registrations end with the test
    for n in (5, 8):
        cellio.datasets.register_dataset(_reader(n))


def _pixels(rng: np.random.Generator, n_channels: int) -> np.ndarray:
    """A site with 16-bit structure: per-channel offsets and ranges well above 255, a few saturated pixels."""
    base = rng.integers(0, 4000, (H, W, n_channels)).astype(np.int64)
    scale = rng.integers(1, 15, n_channels)
    site = np.clip(base * scale + rng.integers(100, 9000, n_channels), 0, 65535).astype(np.uint16)
    site[0, 0, :] = 65535
    return site


def write_raw(root: Path, n_channels: int, seed: int = 3) -> Path:
    """12 sites: 2 plates x 3 wells x 2 fields (train plate BR001, test plate BR002); a .npy per site."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    keys = [c.key for c in _layout(n_channels).channels]
    rows = []
    for plate, split in zip(PLATES, ("train", "test")):
        for k, well in enumerate(WELLS):
            for field in (1, 2):
                site = _pixels(rng, n_channels)
                name = f"{plate}/{well}_f{field}.npy"
                (root / plate).mkdir(exist_ok=True)
                np.save(root / name, site)
                row = {"id_code": f"{plate}_{well}", "dataset": split, "experiment": "EXP-1", "cell_type": "U2OS",
                       "plate": plate, "well": well, "site": field, "kind": "negcon" if k == 0 else "trt",
                       "compound": 9 if k == 0 else k - 1, "file": name}
                for c, key in enumerate(keys):
                    row[f"pixel_mean_{key}"] = float(site[:, :, c].mean())
                    row[f"pixel_std_{key}"] = float(site[:, :, c].std())
                rows.append(row)
    pd.DataFrame(rows).to_csv(root / "sites.csv", index=False)
    (root / "deep.txt").write_text("a test data set\n")
    return root


def _raw_site(raw: Path, row: pd.Series) -> np.ndarray:
    return np.load(raw / row["file"])


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Per channel count: (raw dir, store path) of an lz4 sharded store (8-pixel tiles: edge tiles padded)."""
    out = {}
    for n in (5, 8):
        root = tmp_path_factory.mktemp(f"deep{n}")
        raw = write_raw(root / "raw", n)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(registry, "_READERS", dict(registry._READERS))
            cellio.ingest(raw, root / "s.zarr", reader=_reader(n), workers=1, progress=False, sites_per_shard=4,
                          tile=8)
        out[n] = (raw, root / "s.zarr")
    return out


# -- the store --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [5, 8])
def test_a_uint16_store_reads_back_every_pixel_in_its_dtype(stores, n):
    raw, path = stores[n]
    store = cellio.open_store(path)
    assert store.dtype == np.uint16 and store.image_shape == (H, W, n) and store.layout.n_channels == n
    assert store.layout == _layout(n).replace(site_shape=(H, W))
    batch = store.read(np.arange(len(store)))
    assert batch.dtype == np.uint16 and batch.shape == (12, H, W, n)
    for i in range(len(store)):
        np.testing.assert_array_equal(batch[i], _raw_site(raw, store.sites.iloc[i]))
    crop = store.read([3, 5], crop=(2, 3, 9, 7))
    np.testing.assert_array_equal(crop, batch[[3, 5], 2:11, 3:10])
    assert batch.max() == 65535 and batch.min() >= 0
    meta = json.loads((path / "images" / "zarr.json").read_text())
    inner = meta["codecs"][0]["configuration"]["codecs"]
    assert meta["data_type"] == "uint16" and inner[0] == {"name": "bytes", "configuration": {"endian": "little"}}
    assert inner[1]["configuration"]["typesize"] == 2  # blosc shuffles whole 16-bit pixels


def test_zarr_python_reads_the_uint16_store(stores):
    import zarr

    raw, path = stores[5]
    images = zarr.open_array(str(path / "images"), mode="r")
    store = cellio.open_store(path)
    assert images.dtype == np.uint16
    np.testing.assert_array_equal(images[:], store.read(np.arange(len(store))))


@pytest.mark.parametrize("n", [5, 8])
def test_per_channel_statistics_are_exact_at_every_level(stores, n):
    raw, path = stores[n]
    store = cellio.open_store(path)
    sites = np.stack([_raw_site(raw, r) for _, r in store.sites.iterrows()]).astype(np.float64)
    mean, std = store.channel_stats("plate")
    for plate in PLATES:
        rows = np.flatnonzero(store.sites["plate"].to_numpy() == plate)
        px = sites[rows].reshape(-1, n)
        np.testing.assert_allclose(mean[rows[0]], px.mean(0), rtol=1e-6)
        np.testing.assert_allclose(std[rows[0]], px.std(0), rtol=1e-5)
    gmean, _ = store.channel_stats("global")
    np.testing.assert_allclose(gmean[0], sites.reshape(-1, n).mean(0), rtol=1e-6)


def test_pooled_sums_of_squares_beyond_2_to_the_64_stay_exact():
    from cellio.store.stats import pooled_stats

    per_site = 65535 ** 2 * 1080 * 1080  # a saturated 1080x1080 uint16 site: ~5e15
    n = 4000  # a plate of them sums to ~2e19 > 2**64 - 1
    sums = np.full((n, 1), 65535 * 1080 * 1080, dtype=np.uint64)
    sumsq = np.full((n, 1), per_site, dtype=np.uint64)
    assert n * per_site > 2 ** 64
    mean, std = pooled_stats(sums, sumsq, np.zeros(n, dtype=np.int64), float(1080 * 1080))
    assert mean[0, 0] == pytest.approx(65535.0) and std[0, 0] == pytest.approx(0.0, abs=0.5)


@pytest.mark.parametrize("n", [5, 8])
def test_verify_finds_damage_and_repair_rewrites_it(tmp_path, stores, n, registered):
    import shutil

    raw, built = stores[n]
    path = tmp_path / "s.zarr"
    shutil.copytree(built, path)
    assert cellio.verify_store(path, progress=False).ok
    shard = path / "images" / "c" / "1" / "0" / "0" / "0"  # sites 4..7
    data = bytearray(shard.read_bytes())
    data[-7] ^= 0xFF
    shard.write_bytes(bytes(data))
    damaged = cellio.verify_store(path, progress=False, record=False)
    assert damaged.damaged_indices == [7]
    repaired = cellio.repair_store(raw, path, workers=1, progress=False)
    assert repaired.after.ok and repaired.repaired == (4, 5, 6, 7)
    store = cellio.open_store(path)
    np.testing.assert_array_equal(store.read_one(7), _raw_site(raw, store.sites.iloc[7]))


# -- ingest choices -------------------------------------------------------------------------------------------
def test_channels_and_plates_chosen_at_ingest(tmp_path, stores, registered):
    raw, _ = stores[8]
    report = cellio.ingest(raw, tmp_path / "sub.zarr", reader="deep8", channels=["Mito", "DNA", "bf2"],
                           plates="BR002", workers=1, progress=False, codec="zstd", layout="chunked")
    store = cellio.open_store(tmp_path / "sub.zarr")
    assert report.n_ok == 6 and set(store.sites["plate"]) == {"BR002"}
    assert store.layout.channel_names == ("Mito", "DNA", "Brightfield2") and store.image_shape == (H, W, 3)
    attrs = json.loads((tmp_path / "sub.zarr" / "zarr.json").read_text())["attributes"]
    assert attrs["channel_names"] == ["Mito", "DNA", "Brightfield2"]
    assert attrs["ingest"]["channels"] == ["Mito", "DNA", "Brightfield2"] and attrs["ingest"]["plates"] == ["BR002"]
    for i in range(len(store)):
        np.testing.assert_array_equal(store.read_one(i), _raw_site(raw, store.sites.iloc[i])[:, :, [4, 0, 6]])
    assert cellio.verify_store(tmp_path / "sub.zarr", progress=False).ok
    again = cellio.ingest(raw, tmp_path / "sub.zarr", reader="deep8", channels=["Mito", "DNA", "bf2"],
                          plates="BR002", workers=1, progress=False, codec="zstd", layout="chunked")
    assert again.complete and again.n_written == 0  # the same call finds it done
    with pytest.raises(LayoutError, match=r"channels \['Actin'\]: not channels of layout 'deep8'; expected names "
                                          r"among \['DNA', 'ER', 'RNA', 'AGP', 'Mito', 'Brightfield1'"):
        cellio.ingest(raw, tmp_path / "bad.zarr", reader="deep8", channels=["DNA", "Actin"], progress=False)
    with pytest.raises(MetadataError, match=r"plates=\['BR009'\]: \['BR009'\] not found .* available: \['BR001', "
                                            r"'BR002'\]"):
        cellio.ingest(raw, tmp_path / "bad.zarr", reader="deep8", plates=["BR009"], progress=False)
    assert not (tmp_path / "bad.zarr").exists()


def test_a_url_reaches_the_reader_untouched(tmp_path, registered):
    import fsspec

    raw = write_raw(tmp_path / "raw", 5)
    fs = fsspec.filesystem("memory")
    for f in sorted(raw.rglob("*")):
        if f.is_file():
            fs.pipe(f"/deep5-url/{f.relative_to(raw).as_posix()}", f.read_bytes())
    report = cellio.ingest("memory://deep5-url", tmp_path / "u.zarr", reader="deep5", workers=1, progress=False)
    store = cellio.open_store(tmp_path / "u.zarr")
    assert report.n_ok == 12 and store.attrs["source"]["raw_dir"] == "memory://deep5-url"
    np.testing.assert_array_equal(store.read_one(4), _raw_site(raw, store.sites.iloc[4]))
    with pytest.raises(MetadataError, match=r"memory://x: the rxrx1 reader reads PNG files from a local directory"):
        cellio.ingest("memory://x", tmp_path / "r.zarr", reader="rxrx1", progress=False)


def test_the_data_set_is_detected_and_a_bad_site_table_is_named(tmp_path, registered):
    raw = write_raw(tmp_path / "raw", 5)
    with pytest.raises(MetadataError, match="not recognised as the raw directory"):
        cellio.ingest(tmp_path, tmp_path.parent / "x.zarr", reader=None, progress=False)
    (raw / "deep.txt").unlink()
    (raw / "deep.txt").write_text("")
    # both registered test readers recognise the directory: the first in name order (deep5) is taken
    report = cellio.ingest(raw, tmp_path / "auto.zarr", reader=None, workers=1, progress=False, limit=2)
    assert cellio.open_store(tmp_path / "auto.zarr").layout.name == "deep5" and report.n_ok == 2
    table = pd.read_csv(raw / "sites.csv")
    table.loc[4, "well"] = "C7"
    table.to_csv(raw / "sites.csv", index=False)
    with pytest.raises(MetadataError, match=r"column well: expected a row label and a two-digit column .* row 4 = "
                                            r"'C7'"):
        cellio.ingest(raw, tmp_path / "bad.zarr", reader="deep5", progress=False)
    table.loc[4, "well"] = "Q01"  # a 16-row plate ends at P
    table.to_csv(raw / "sites.csv", index=False)
    with pytest.raises(MetadataError, match=r"expected wells of a 16x24 plate .* row 4 = 'Q01'"):
        cellio.ingest(raw, tmp_path / "bad.zarr", reader="deep5", progress=False)


def test_a_read_site_of_the_wrong_dtype_is_named(tmp_path, registered):
    raw = write_raw(tmp_path / "raw", 5)
    site = np.load(raw / "BR001/C07_f2.npy")
    np.save(raw / "BR001/C07_f2.npy", site.astype(np.uint8))
    with pytest.raises(cellio.ImageError, match=r"BR001_C07 site 2: the deep5 reader's read_site returned uint8 "
                                                r"\(17, 11, 5\), expected uint16 \(17, 11, 5\)"):
        cellio.ingest(raw, tmp_path / "bad.zarr", reader="deep5", workers=1, progress=False)
    report = cellio.ingest(raw, tmp_path / "skip.zarr", reader="deep5", workers=1, progress=False, on_error="skip")
    assert report.n_failed == 1 and report.failed[0].id_code == "BR001_C07"
    (raw / "BR002/P24_f1.npy").unlink()  # a reader's own error (FileNotFoundError) names the site too
    with pytest.raises(cellio.ImageError, match=r"BR002_P24 site 1: the deep5 reader's read_site failed "
                                                r"\(FileNotFoundError"):
        cellio.ingest(raw, tmp_path / "gone.zarr", reader="deep5", workers=1, progress=False, plates="BR002")


# -- the loader -----------------------------------------------------------------------------------------------
def test_the_loader_normalises_each_channel_and_picks_channels_by_name(stores):
    raw, path = stores[8]
    store = cellio.open_store(path)
    cfg = AugmentConfig(crop_size=9, rotation="none", shift=False, normalize=None)
    loader = cellio.create_loader(store, 4, train=False, augment=cfg, datasets=None, channels=["Mito", "bf3", "DNA"],
                                  backend="torch", device="cpu", num_workers=0)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 9, 9)
    y0, x0 = (H - 9) // 2, (W - 9) // 2
    for img, i in zip(batch["image"], batch["index"].tolist()):
        site = _raw_site(raw, store.sites.iloc[i])[y0:y0 + 9, x0:x0 + 9][:, :, [4, 7, 0]]
        np.testing.assert_allclose(img.numpy() * 65535.0, site.transpose(2, 0, 1), atol=0.02)
    assert batch["plate"].tolist() == [0, 0, 0, 0]  # plate names index the sorted plates
    plate = cellio.create_loader(store, 6, train=False, augment=cfg.replace(normalize="plate"), datasets=["test"],
                                 backend="torch", device="cpu", num_workers=0)
    images = torch.cat([b["image"] for b in plate])
    assert images.shape == (6, 8, 9, 9) and torch.isfinite(images).all()
    mean, std = store.channel_stats("plate")
    rows = torch.cat([b["index"] for b in plate]).numpy()
    expected = (np.stack([_raw_site(raw, store.sites.iloc[i])[y0:y0 + 9, x0:x0 + 9] for i in rows])
                - mean[rows][:, None, None]) / std[rows][:, None, None]
    np.testing.assert_allclose(images.numpy(), expected.transpose(0, 3, 1, 2), rtol=1e-4, atol=1e-4)
    with pytest.raises(LayoutError, match=r"channels \['Actin'\]: not channels of layout 'deep8'"):
        cellio.create_loader(store, 4, datasets=None, channels=["Actin"], backend="torch", device="cpu")
    with pytest.raises(StoreError, match=r"out must be a C-contiguous uint16 array"):
        store.read([0], out=np.empty((1, H, W, 8), dtype=np.uint8))


PARITY = {
    "exact": AugmentConfig(crop_size=7, rotation="d4", hflip=0.5, intensity_scale=(0.8, 1.2),
                           intensity_shift=(-20, 20), normalize="plate"),
    "photometric": AugmentConfig(crop_size=9, rotation="d4", intensity_shift=(-3, 3), blur_sigma=(0.0, 2.0),
                                 gamma=(0.8, 1.25), illumination=0.5, noise=(2.0, 0.5), normalize="sample"),
}


@pytest.mark.parametrize("n", [5, 8])
@pytest.mark.parametrize("name", sorted(PARITY))
def test_dali_cpu_matches_the_torch_reference_on_uint16(stores, n, name):
    pytest.importorskip("nvidia.dali")
    _, path = stores[n]
    out = []
    for backend in ("torch", "dali"):
        loader = cellio.create_loader(path, 4, train=True, augment=PARITY[name], backend=backend, device="cpu",
                                      num_workers=0, rank=0, world_size=1, seed=11, datasets=None,
                                      last_batch="partial")
        out.append(list(loader))
    a, b = out
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert x["image"].shape == (len(x["label"]), n, PARITY[name].crop_size, PARITY[name].crop_size)
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["plate"], y["plate"])
        torch.testing.assert_close(y["image"], x["image"], rtol=1e-4, atol=1e-4)


def test_dali_cpu_rotation_on_uint16_matches_in_float(stores):
    pytest.importorskip("nvidia.dali")
    _, path = stores[5]
    cfg = AugmentConfig(crop_size=5, rotation="any", normalize=None)
    out = []
    for backend in ("torch", "dali"):
        out.append(list(cellio.create_loader(path, 4, train=True, augment=cfg, backend=backend, device="cpu",
                                             num_workers=0, seed=2, datasets=None, last_batch="partial")))
    diff = torch.cat([(x["image"] - y["image"]).abs().flatten() for x, y in zip(*out)]) * 65535.0
    assert diff.max() <= 0.05  # both resample 16-bit pixels in float: no rounding to grey levels


def test_intensity_grey_levels_scale_to_the_data_range():
    from cellio.loading.transforms import make_params

    cfg = AugmentConfig(crop_size=5, intensity_shift=(10, 10), noise=(4.0, 2.0))
    eight = make_params(cfg, np.random.default_rng(0), 3, (9, 9), 2)
    sixteen = make_params(cfg, np.random.default_rng(0), 3, (9, 9), 2, max_value=65535)
    assert np.allclose(eight["shift"], 10.0) and np.allclose(sixteen["shift"], 10.0 * 257)
    np.testing.assert_allclose(sixteen["noise_read"], eight["noise_read"] * 257, rtol=1e-6)
    np.testing.assert_allclose(sixteen["noise_shot"], eight["noise_shot"] * 257, rtol=1e-6)


# -- show -----------------------------------------------------------------------------------------------------
def test_show_composes_any_channel_set_of_a_uint16_site(tmp_path, stores, registered):
    from cellio.render import load_site, render_site, rgb_composite

    raw, path = stores[8]
    image, row, layout = load_site(path, "BR002_C07", 2)
    assert image.dtype == np.uint16 and row["well"] == "C07"
    raw_image, _, raw_layout = load_site(raw, "BR002_C07", 2)
    np.testing.assert_array_equal(image, raw_image)
    rgb = rgb_composite(image, layout)
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    dna = image[:, :, 0].astype(np.float64)
    np.testing.assert_array_equal(rgb[:, :, 2] >= np.minimum(255, (np.minimum(dna / 30000, 1) * 255).astype(int)),
                                  True)  # the DNA tint (blue) is at least its own term
    bright = layout.select_channels(["bf1", "bf2"])  # no tinted channel: blue and green over the whole range
    two = rgb_composite(image[:, :, [5, 6]], bright)
    np.testing.assert_array_equal(two[:, :, 2], (image[:, :, 5] / 65535 * 255).astype(np.uint8))
    np.testing.assert_array_equal(two[:, :, 0], 0)
    picture = render_site(image, layout)
    assert picture.shape == (3 * H + 2 * 2, 2 * W + 4 + 3 * W + 2 * 2, 3)  # 3 rows of channels beside 2x the composite
    from cellio.cli import main

    out = tmp_path / "site.png"
    assert main(["show", str(path), "BR002_C07", "--site", "2", "--channels", "Mito,DNA", "-o", str(out)]) == 0
    assert out.is_file()


def test_cli_ingest_from_a_named_data_set_with_channels_and_plates(tmp_path, registered, capsys):
    from cellio.cli import main

    raw = write_raw(tmp_path / "raw", 8)
    store = tmp_path / "cli.zarr"
    assert main(["ingest", str(raw), str(store), "--from", "deep8", "--channels", "DNA,Mito", "--plates", "BR001",
                 "--workers", "1", "--no-progress"]) == 0
    opened = cellio.open_store(store)
    assert opened.layout.name == "deep8" and opened.layout.channel_names == ("DNA", "Mito")
    assert len(opened) == 6 and set(opened.sites["plate"]) == {"BR001"}
    assert opened.attrs["ingest"]["datasets"] == ["train", "test"]  # the layout's splits by default
    with pytest.raises(SystemExit):
        main(["ingest", str(raw), str(tmp_path / "x.zarr"), "--from", "nosuchset"])
    assert "invalid choice: 'nosuchset'" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(PARITY))
def test_gpu_dali_matches_torch_on_uint16(stores, name):
    pytest.importorskip("nvidia.dali")
    _, path = stores[8]
    out = []
    for backend in ("torch", "dali"):
        out.append(list(cellio.create_loader(path, 4, train=True, augment=PARITY[name], backend=backend,
                                             device="cuda", num_workers=0, rank=0, world_size=1, seed=11,
                                             datasets=None, last_batch="partial")))
    for x, y in zip(*out):
        assert x["image"].is_cuda and y["image"].is_cuda and x["image"].shape[1] == 8
        torch.testing.assert_close(y["image"], x["image"], rtol=1e-4, atol=1e-4)
