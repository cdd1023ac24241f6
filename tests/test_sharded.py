"""The sharded layout (format 1.2, the default) on a local disk: pixels, crops across tile edges, damage inside a
shard, verify + repair, SIGKILL + resume, other Zarr clients, and 1.1 stores still read."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cellio.store.format import JOURNAL_DIR
from cellio.store.shards import ShardLayout
from cellio.errors import ChecksumError, StoreDamagedError, StoreError
from cellio.ingestion import ingest
from cellio.store import open_store
from cellio.store.verify import verify_store
from store_damage import assert_same_store, copy_store, flip_byte

# 17x11 sites, 8x4 tiles: a 3x3 tile grid whose last row and column are padded; 5 sites per shard leaves a
# partial last shard
KW = dict(layout="sharded", sites_per_shard=5, tile=(8, 4))


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory) -> Path:
    from cellio.testing import make_raw

    return make_raw(tmp_path_factory.mktemp("sh-raw") / "rxrx1", classes=4, cell_types=("HUVEC",))


@pytest.fixture(scope="module")
def clean(tmp_path_factory, small_raw) -> Path:
    return Path(ingest(small_raw, tmp_path_factory.mktemp("sh") / "lz4.zarr", codec="lz4", workers=1,
                       progress=False, **KW).store)


@pytest.fixture(scope="module")
def chunked(tmp_path_factory, small_raw) -> Path:
    return Path(ingest(small_raw, tmp_path_factory.mktemp("ch") / "none.zarr", codec="none", workers=1,
                       progress=False, layout="chunked").store)


def _shard(store: Path, shard: int) -> Path:
    return store / "images" / "c" / str(shard) / "0" / "0" / "0"


def test_the_sharded_store_reads_the_pixels_of_the_chunked_one_for_every_crop(clean, chunked):
    a, b = open_store(clean), open_store(chunked)
    assert a.image_layout == "sharded" and a._mode == "sharded" and a.attrs["format_version"] == "1.3"
    assert a.attrs["image_chunks"] == {"layout": "sharded", "sites_per_shard": 5, "tile": [8, 4]}
    assert b.image_layout == "chunked" and b.attrs["image_chunks"] == {"layout": "chunked"}
    idx = np.random.default_rng(0).permutation(len(a))
    np.testing.assert_array_equal(a.read(idx), b.read(idx))
    for crop in [(0, 0, 17, 11), (3, 2, 9, 5), (8, 4, 8, 4), (16, 10, 1, 1), (1, 3, 15, 8)]:
        np.testing.assert_array_equal(a.read(idx[:9], crop=crop), b.read(idx[:9], crop=crop))
    crops = [(i % 9, i % 7, 8, 4) for i in range(9)]  # per-site windows
    np.testing.assert_array_equal(a.read(idx[:9], crop=crops), b.read(idx[:9], crop=crops))
    np.testing.assert_array_equal(a.with_verify(False).read(idx[:5], crop=(2, 2, 9, 5)),
                                  b.read(idx[:5], crop=(2, 2, 9, 5)))


def test_a_shard_is_one_file_per_five_sites_and_a_crop_reads_only_its_tiles(clean):
    s = open_store(clean)
    lay = ShardLayout.from_metadata(json.loads((clean / "images" / "zarr.json").read_text()))
    n = int(s.attrs["n_sites"])
    assert len(list((clean / "images" / "c").iterdir())) == -(-n // 5)
    entries = s._reader.index(0)[2]
    first = lay.site_span(entries, lay.tile_range(0, 0, 8, 4), file="x")  # the top-left tile alone
    whole = lay.site_span(entries, lay.tile_range(0, 0, 17, 11), file="x")
    assert first[0] == whole[0] and first[1] - first[0] == int(entries[0, 0, 1]) < whole[1] - whole[0]


def test_other_zarr_clients_read_the_sharded_store(clean, chunked):
    import tensorstore as ts
    import zarr

    ref = open_store(chunked).read([0, 7, 63])
    z = zarr.open_array(clean / "images", mode="r")
    np.testing.assert_array_equal(np.stack([z[i] for i in (0, 7, 63)]), ref)
    t = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(clean / "images")}}).result()
    np.testing.assert_array_equal(np.stack([t[i].read().result() for i in (0, 7, 63)]), ref)


def test_damage_inside_a_shard_names_the_shard_and_the_site_then_repairs(tmp_path, clean, small_raw):
    s = copy_store(clean, tmp_path / "s.zarr")
    lay_store = open_store(s)
    entries = lay_store._reader.index(1)[3]                # site 8 = shard 1, site 3 within it
    flip_byte(_shard(s, 1), offset=int(entries[1, 1, 0]) + 5)
    id8 = lay_store.sites.id_code[8]
    with pytest.raises(ChecksumError, match=r"images/c/1/0/0/0.*crc32c.*" + id8):
        open_store(s).read([8])
    np.testing.assert_array_equal(open_store(s).read([5, 9]), open_store(clean).read([5, 9]))  # its neighbours
    os.remove(_shard(s, 4))
    with pytest.raises(StoreDamagedError, match="images/c/4/0/0/0: the shard file is missing"):
        open_store(s).read([21])
    report = verify_store(s, progress=False, record=False)
    assert report.damaged_indices == [8, 20, 21, 22, 23, 24]
    assert {d.file for d in report.sites} == {"images/c/1/0/0/0", "images/c/4/0/0/0"}
    from cellio.ingestion import repair_store

    after = repair_store(small_raw, s, progress=False, workers=1, report=report).after
    assert after.ok
    assert_same_store(clean, s)  # whole shards rewritten: byte for byte the clean store


def test_sigkill_mid_ingest_of_a_sharded_store_resumes_to_the_clean_store(tmp_path, small_raw, clean):
    store = tmp_path / "killed.zarr"
    code = ("import sys; from cellio.ingestion import ingest; ingest(sys.argv[1], sys.argv[2], codec='lz4', "
            "workers=1, progress=False, layout='sharded', sites_per_shard=5, tile=(8, 4))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([sys.executable, "-c", code, str(small_raw), str(store)], env=env)
    journal = store / JOURNAL_DIR
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.is_dir() and len(os.listdir(journal)) >= 3:
            break
        time.sleep(0.002)
    assert proc.poll() is None, "ingest finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = open_store(store, allow_incomplete=True)
    assert 15 <= len(partial) < partial.attrs["n_sites"] and len(partial) % 5 == 0  # whole shards only
    report = ingest(small_raw, store, codec="lz4", workers=2, progress=False, **KW)
    assert report.complete and 0 < report.n_written < report.n_sites
    assert_same_store(clean, store)


def test_a_failed_site_is_absent_from_its_shard_and_never_read(tmp_path, small_raw):
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(small_raw, raw)
    s0 = open_store(ingest(small_raw, tmp_path / "ref.zarr", workers=1, progress=False, limit=12, **KW).store)
    (raw / s0.sites["path_w2"].iloc[6]).unlink()
    report = ingest(raw, tmp_path / "s.zarr", on_error="skip", workers=1, progress=False, limit=12, **KW)
    assert [f.index for f in report.failed] == [6]
    s = open_store(report.store)
    assert len(s) == 11
    np.testing.assert_array_equal(s.read(np.arange(11)), s0.read(np.r_[0:6, 7:12]))
    assert verify_store(report.store, progress=False, record=False).ok


def test_bad_layout_parameters_fail_naming_them(tmp_path, small_raw):
    with pytest.raises(StoreError, match="layout 'striped' is unknown"):
        ingest(small_raw, tmp_path / "a.zarr", layout="striped", progress=False)
    with pytest.raises(StoreError, match="sites_per_shard=0"):
        ingest(small_raw, tmp_path / "b.zarr", sites_per_shard=0, progress=False)
    with pytest.raises(StoreError, match="tile=-4"):
        ingest(small_raw, tmp_path / "c.zarr", tile=-4, progress=False)
    with pytest.raises(StoreError, match="ingested with"):  # resuming needs the same layout
        ingest(small_raw, open_store(ingest(small_raw, tmp_path / "d.zarr", workers=1, progress=False,
                                            limit=6, **KW).store).path, workers=1, progress=False, limit=6)
