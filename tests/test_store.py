"""The reader: exact images, crops, batches, channel statistics, pickling across processes, other zarr clients."""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import threading

import numpy as np
import pandas as pd
import pytest

from cellio.errors import StoreError, StoreIncompleteError
from cellio.schema import SITE_COLUMNS
from cellio.store import open_store


def _png_site(raw, row) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(os.path.join(raw, row[f"path_w{c}"]))) for c in range(1, 7)], axis=-1)


def test_shape_layout_and_sites(tiny_store, tiny_raw):
    from cellio.datasets.rxrx1.metadata import read_metadata

    s = tiny_store
    meta = read_metadata(tiny_raw)
    assert len(s) == len(meta) == len(s.sites)
    assert s.axes == "NHWC" and s.image_shape == (17, 11, 6)
    assert s.layout.name == "rxrx1" and s.layout.site_shape == (17, 11) and s.layout.n_channels == 6
    assert s.complete and s.failed.empty
    assert list(s.sites.columns) == list(SITE_COLUMNS)
    pd.testing.assert_frame_equal(s.sites, meta, check_dtype=False)
    assert isinstance(s.sites["sirna"].dtype, pd.Int64Dtype)
    assert s.sites["plate"].dtype == np.int64 and s.sites["pixel_mean_w1"].dtype == np.float64
    test_treat = s.sites[(s.sites.dataset == "test") & (s.sites.well_type == "treatment")]
    assert test_treat["sirna"].isna().all()
    assert (s.sites.loc[s.sites.well_type == "negative_control", "sirna"] == 1138).all()


def test_read_equals_pngs_in_channel_order(tiny_store, tiny_raw):
    s = tiny_store
    idx = [0, len(s) - 1, 7, 7, 3]
    batch = s.read(idx)
    assert batch.shape == (5, 17, 11, 6) and batch.dtype == np.uint8
    for b, i in enumerate(idx):
        np.testing.assert_array_equal(batch[b], _png_site(tiny_raw, s.sites.iloc[i]))
    np.testing.assert_array_equal(s.read_one(7), batch[2])
    assert s.read([]).shape == (0, 17, 11, 6)


def test_crops_equal_slices(tiny_store):
    s = tiny_store
    idx = np.random.default_rng(0).permutation(len(s))[:9]
    full = s.read(idx)
    np.testing.assert_array_equal(s.read(idx, crop=(3, 2, 9, 5)), full[:, 3:12, 2:7])
    np.testing.assert_array_equal(s.read(idx, crop=(4, 0, 13, 11)), full[:, 4:17])  # whole rows: one pread
    crops = [(i % 8, (2 * i) % 6, 9, 5) for i in range(9)]
    got = s.read(idx, crop=crops)
    for b, (y, x, h, w) in enumerate(crops):
        np.testing.assert_array_equal(got[b], full[b, y:y + h, x:x + w])
    out = np.zeros((9, 9, 5, 6), np.uint8)
    assert s.read(idx, crop=crops, out=out) is out
    np.testing.assert_array_equal(out, got)


@pytest.mark.parametrize("kwargs, match", [
    ({"crop": (10, 0, 9, 5)}, "does not fit"),
    ({"crop": (0, 8, 9, 5)}, "does not fit"),
    ({"crop": [(0, 0, 9, 5), (0, 0, 8, 5)]}, "same"),
    ({"crop": [(0, 0, 9, 5)] * 3}, "sequence of 2"),
    ({"out": np.zeros((2, 11, 17, 6), np.uint8)}, "shape"),
])
def test_bad_read_arguments(tiny_store, kwargs, match):
    with pytest.raises(StoreError, match=match):
        tiny_store.read([0, 1], **kwargs)


def test_index_out_of_range(tiny_store):
    with pytest.raises(StoreError, match=f"{len(tiny_store)}"):
        tiny_store.read([len(tiny_store)])


@pytest.mark.parametrize("level, keys", [("site", None), ("plate", ["experiment", "plate"]),
                                         ("experiment", ["experiment"]), ("global", [])])
def test_channel_stats_pooled_exactly(tiny_store, level, keys):
    s = tiny_store
    imgs = s.read(np.arange(len(s))).astype(np.float64)
    mean, std = s.channel_stats(level)
    assert mean.shape == std.shape == (len(s), 6) and mean.dtype == np.float32
    if keys is None:
        groups = [np.array([i]) for i in range(len(s))]
    elif not keys:
        groups = [np.arange(len(s))]
    else:
        groups = [np.asarray(g) for g in s.sites.groupby(keys).indices.values()]
    for g in groups:
        px = imgs[g].reshape(-1, 6)
        np.testing.assert_allclose(mean[g], np.broadcast_to(px.mean(0), (len(g), 6)), rtol=1e-5)
        np.testing.assert_allclose(std[g], np.broadcast_to(px.std(0), (len(g), 6)), rtol=1e-4)
    with pytest.raises(StoreError, match="well"):
        s.channel_stats("well")


def test_site_stats_match_pixel_stats_csv(tiny_store):
    mean, std = tiny_store.channel_stats("site")
    sites = tiny_store.sites
    np.testing.assert_allclose(mean, sites[[f"pixel_mean_w{c}" for c in range(1, 7)]].to_numpy(), atol=1e-3)
    np.testing.assert_allclose(std, sites[[f"pixel_std_w{c}" for c in range(1, 7)]].to_numpy(), atol=1e-3)


def _read_in_child(blob: bytes) -> np.ndarray:
    store = pickle.loads(blob)
    return store.read([2, 5], crop=(1, 1, 9, 5))


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_pickle_and_read_in_child_process(tiny_store, method):
    s = tiny_store
    s.read(np.arange(8))  # start the parent's thread pool first: a forked child must not reuse it
    blob = pickle.dumps(s)
    assert len(blob) < 2000  # only the path and options travel
    with mp.get_context(method).Pool(1) as pool:
        got = pool.apply(_read_in_child, (blob,))
    np.testing.assert_array_equal(got, s.read([2, 5], crop=(1, 1, 9, 5)))


def test_thread_safe_concurrent_reads(tiny_store):
    s = tiny_store
    expected = s.read(np.arange(len(s)))
    errors: list[str] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(20):
            idx = rng.integers(0, len(s), 6)
            if not np.array_equal(s.read(idx), expected[idx]):
                errors.append(f"thread {seed} read wrong pixels")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_other_zarr_clients_read_the_images(tiny_store):
    import zarr

    s = tiny_store
    z = zarr.open_group(s.path, mode="r")
    np.testing.assert_array_equal(z["images"][5], s.read_one(5))
    assert z.attrs["format_version"] == "1.3" and z.attrs["complete"] is True
    assert z.attrs["dataset_layout"]["name"] == "rxrx1" and z.attrs["dataset_layout"]["site_shape"] == [17, 11]
    (shard,) = z["images"].metadata.to_dict()["codecs"]  # the default layout: sharded, every inner chunk checksummed
    assert shard["name"] == "sharding_indexed" and shard["configuration"]["codecs"][-1]["name"] == "crc32c"
    assert shard["configuration"]["index_codecs"][-1]["name"] == "crc32c"
    np.testing.assert_array_equal(z["stats/sum"][...], s._zarr_read("stats/sum"))
    ts = pytest.importorskip("tensorstore")
    arr = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.join(s.path, "images")}}).result()
    np.testing.assert_array_equal(arr[5].read().result(), s.read_one(5))
    ids = ts.open({"driver": "zarr3", "kvstore": {"driver": "file",
                                                 "path": os.path.join(s.path, "sites", "id_code")}}).result()
    first = bytes(ids[0].read().result()).rstrip(b"\0").decode()
    assert first == s.sites.id_code[0]


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_compressed_stores_read_identically(tmp_path, tiny_raw, tiny_store, codec):
    from cellio.testing import make_store

    s = make_store(tmp_path / f"{codec}.zarr", tiny_raw, codec=codec)
    assert s.attrs["codec"] == codec
    idx = np.random.default_rng(1).permutation(len(s))[:12]
    np.testing.assert_array_equal(s.read(idx), tiny_store.read(idx))
    np.testing.assert_array_equal(s.read(idx, crop=(2, 3, 7, 4)), tiny_store.read(idx, crop=(2, 3, 7, 4)))
    size = sum(f.stat().st_size for f in (tmp_path / f"{codec}.zarr" / "images").rglob("*") if f.is_file())
    assert size > 0


def test_fsspec_url_store_reads_its_chunk_objects(tiny_raw, tiny_store):
    """An fsspec URL (memory://) ingests and reads chunk objects through fsspec; same pixels as the local path."""
    from cellio.ingestion import ingest

    url = "memory://cellio-test/url.zarr"
    ingest(tiny_raw, url, codec="zstd", workers=1, progress=False, limit=24)
    s = open_store(url)
    assert len(s) == 24 and s._mode == "remote"
    np.testing.assert_array_equal(s.read([3, 1, 20]), tiny_store.read([3, 1, 20]))
    np.testing.assert_array_equal(s.read([3], crop=(1, 2, 5, 5)), tiny_store.read([3], crop=(1, 2, 5, 5)))


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="not a cellio store"):
        open_store(tmp_path)
    (tmp_path / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    with pytest.raises(StoreError, match="format"):
        open_store(tmp_path)


def test_incomplete_store_refuses_to_open(tmp_path, tiny_store):
    import json
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(tiny_store.path, copy)
    root = json.loads((copy / "zarr.json").read_text())
    root["attributes"]["complete"] = False
    (copy / "zarr.json").write_text(json.dumps(root))
    with pytest.raises(StoreIncompleteError, match="rerun `cellio ingest`"):
        open_store(copy)
    s = open_store(copy, allow_incomplete=True)
    assert not s.complete and len(s) == 0  # no journal: nothing recorded as done


def test_rechunked_or_sharded_store_falls_back_to_zarr(tmp_path, tiny_store):
    """A store rewritten by another tool (rechunked tables, sharded images) still reads, through zarr-python."""
    import shutil

    import zarr

    copy = tmp_path / "rechunked.zarr"
    shutil.copytree(tiny_store.path, copy)
    for name, chunks, shards in (("stats/sum", (7, 6), None), ("images", (1, 17, 11, 6), (4, 17, 11, 6))):
        data = zarr.open_array(copy / name, mode="r")[...]
        shutil.rmtree(copy / name)
        z = zarr.create_array(copy / name, shape=data.shape, chunks=chunks, shards=shards, dtype=data.dtype)
        z[...] = data
    s = open_store(copy)
    assert s._mode == "zarr"
    np.testing.assert_array_equal(s.read([4, 0, 9], crop=(2, 1, 9, 5)), tiny_store.read([4, 0, 9], crop=(2, 1, 9, 5)))
    np.testing.assert_array_equal(s.channel_stats("plate")[0], tiny_store.channel_stats("plate")[0])


def _rewrite_root(store_dir, edit) -> None:
    import json

    root = json.loads((store_dir / "zarr.json").read_text())
    edit(root["attributes"])
    (store_dir / "zarr.json").write_text(json.dumps(root))


def test_a_store_written_before_layouts_reports_rxrx1(tmp_path, tiny_store):
    """A format 1.2 store (no dataset_layout attribute: cellio wrote only RxRx1 then) opens with RxRx1's layout
    at its own site size, and reads the same pixels."""
    import shutil

    from cellio.datasets.rxrx1.layout import RXRX1

    old = tmp_path / "old.zarr"
    shutil.copytree(tiny_store.path, old)
    _rewrite_root(old, lambda a: (a.pop("dataset_layout", None), a.update(format_version="1.2")))
    s = open_store(old)
    assert "dataset_layout" not in s.attrs and s.attrs["format_version"] == "1.2"
    assert s.layout == RXRX1.replace(site_shape=(17, 11)) and s.axes == "NHWC"
    np.testing.assert_array_equal(s.read([0, 5]), tiny_store.read([0, 5]))


@pytest.mark.parametrize("edit, match", [
    (lambda a: a.update(dataset_layout={"layout_format": "1.0", "name": "x"}),
     r"dataset_layout attribute is not a layout this cellio reads: DatasetLayout: missing keys"),
    (lambda a: a.update(dataset_layout=dict(a.get("dataset_layout") or _rxrx1_dict(), site_shape=[17, 12])),
     r"dataset_layout attribute describes uint8 sites of \(17, 12, 6\) .* holds uint8 \(17, 11, 6\)"),
])
def test_a_layout_attribute_that_does_not_fit_the_store_is_refused(tmp_path, tiny_store, edit, match):
    import shutil

    bad = tmp_path / "bad.zarr"
    shutil.copytree(tiny_store.path, bad)
    _rewrite_root(bad, edit)
    with pytest.raises(StoreError, match=match):
        open_store(bad)


def _rxrx1_dict() -> dict:
    from cellio.datasets.rxrx1.layout import RXRX1

    return RXRX1.to_dict()
