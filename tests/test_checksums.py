"""Checksums and missing chunks: damage is an error naming the file and the site, never pixels or fill values.

Reproductions of the issue "Nothing lost, nothing silently wrong", items 2, 3 and 5 (truncated chunks): each
fails on a store without checksums read by the previous reader, and passes here.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cellio.errors import ChecksumError, StoreDamagedError
from cellio.store import open_store

from store_damage import copy_store, downgrade_to_1_0, flip_byte, truncate

CODECS = ["none", "lz4", "zstd"]


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory) -> Path:
    from cellio.testing import make_raw

    return make_raw(tmp_path_factory.mktemp("ck") / "rxrx1", classes=4, cell_types=("HUVEC",))


@pytest.fixture(scope="module")
def clean(tmp_path_factory, small_raw) -> dict[str, Path]:
    from cellio.ingestion import ingest

    root = tmp_path_factory.mktemp("ck-stores")
    return {c: Path(ingest(small_raw, root / f"{c}.zarr", codec=c, workers=1, progress=False,
                           layout="chunked").store) for c in CODECS}


def _chunk(store: Path, i: int) -> Path:
    return store / "images" / "c" / str(i) / "0" / "0" / "0"


# ------------------------------------------------------------------------------------------------ image chunks
@pytest.mark.parametrize("codec", CODECS)
def test_a_flipped_byte_is_a_checksum_error_naming_file_and_site(tmp_path, clean, codec):
    s = copy_store(clean[codec], tmp_path / "s.zarr")
    good = open_store(s).read([4, 5, 6])
    flip_byte(_chunk(s, 5))
    store = open_store(s)
    id_code = store.sites.id_code[5]
    for call in (lambda: store.read([5]), lambda: store.read(np.arange(12)),
                 lambda: store.read([5], crop=(2, 1, 5, 5))):
        with pytest.raises(ChecksumError) as err:
            call()
        assert str(_chunk(s, 5)) in str(err.value) and id_code in str(err.value)
        assert err.value.file == str(_chunk(s, 5)) and err.value.id_code == id_code
    np.testing.assert_array_equal(store.read([4, 6]), good[[0, 2]])  # the rest of the store reads as before
    if codec == "none":  # verify=False trusts the disk: the flipped byte comes back as a pixel (documented)
        got = open_store(s, verify=False).read([5])[0]
        assert (got != good[1]).sum() == 1


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_a_truncated_compressed_chunk_names_the_file_and_site(tmp_path, clean, codec):
    s = copy_store(clean[codec], tmp_path / "s.zarr")
    truncate(_chunk(s, 3))
    with pytest.raises(ChecksumError, match=r"images/c/3/0/0/0: crc32c checksum mismatch"):
        open_store(s).read([3])
    # without verification the codec's own failure ("error during blosc decompression: -1") gets a name too
    with pytest.raises(StoreDamagedError, match=r"images/c/3/0/0/0: cannot decode the (blosc|zstd) chunk") as err:
        open_store(s, verify=False).read([3])
    assert err.value.id_code == open_store(s).sites.id_code[3]


def test_a_missing_image_chunk_is_an_error(tmp_path, clean):
    s = copy_store(clean["lz4"], tmp_path / "s.zarr")
    _chunk(s, 7).unlink()
    with pytest.raises(StoreDamagedError, match=r"images/c/7/0/0/0: the chunk file is missing"):
        open_store(s).read([7])


@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=pytest.mark.skipif(
    not __import__("cellio").dali_available(), reason="needs nvidia-dali"))])
def test_both_loader_backends_stop_on_a_damaged_chunk(tmp_path, clean, backend):
    import cellio

    s = copy_store(clean["lz4"], tmp_path / "s.zarr")
    flip_byte(_chunk(s, 5))
    loader = cellio.create_loader(str(s), 4, crop_size=7, backend=backend, device="cpu", num_workers=0,
                                  indices=[4, 5, 6, 7], rank=0, world_size=1, datasets=None)
    with pytest.raises(Exception, match=r"images/c/5/0/0/0: crc32c checksum mismatch") as err:
        list(loader)
    assert open_store(s).sites.id_code[5] in str(err.value)
    trusting = cellio.create_loader(str(s), 4, crop_size=7, backend=backend, device="cpu", num_workers=0,
                                    indices=[4, 6, 7, 8], rank=0, world_size=1, datasets=None, verify=False)
    assert trusting.store.verify is False and len(list(trusting)) == 1


# ------------------------------------------------------------------------------------------------ small arrays
@pytest.mark.parametrize("chunk, access", [
    ("sites/sirna/c/0", lambda s: open_store(s).sites),
    ("status/c/0", lambda s: open_store(s)),
    ("sites/id_code/c/0/0", lambda s: open_store(s).sites),
    ("stats/sum/c/0/0", lambda s: open_store(s).channel_stats("plate")),
])
def test_a_missing_small_array_chunk_is_an_error_not_fill_values(tmp_path, clean, chunk, access):
    from cellio.cli import main

    s = copy_store(clean["none"], tmp_path / "s.zarr")
    (s / chunk).unlink()
    with pytest.raises(StoreDamagedError, match="chunk file missing") as err:
        access(s)
    assert err.value.file == str(s / chunk)
    assert main(["inspect", str(s)]) != 0  # never called complete


def test_a_damaged_small_array_chunk_fails_its_checksum(tmp_path, clean):
    s = copy_store(clean["none"], tmp_path / "s.zarr")
    flip_byte(s / "sites" / "sirna" / "c" / "0")
    with pytest.raises(ChecksumError, match=r"sites/sirna/c/0: crc32c checksum mismatch"):
        open_store(s).sites


def test_a_loader_refuses_a_store_whose_labels_are_missing(tmp_path, clean):
    import cellio

    s = copy_store(clean["none"], tmp_path / "s.zarr")
    (s / "sites" / "sirna" / "c" / "0").unlink()
    with pytest.raises(StoreDamagedError, match="sites/sirna/c/0"):
        cellio.create_loader(str(s), 4, crop_size=7, backend="torch", device="cpu", num_workers=0)


# ------------------------------------------------------------------------------------------------ other clients
@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_zarr_python_and_tensorstore_read_and_check_the_checksummed_store(tmp_path, clean, codec):
    import zarr

    s = clean[codec]
    ours = open_store(s)
    z = zarr.open_group(str(s), mode="r")
    np.testing.assert_array_equal(z["images"][5], ours.read_one(5))
    np.testing.assert_array_equal(z["status"][...], np.ones(len(ours), np.uint8))
    ts = pytest.importorskip("tensorstore")
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(s / "images")}}
    np.testing.assert_array_equal(ts.open(spec).result()[5].read().result(), ours.read_one(5))
    sums = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(s / "stats" / "sum")}}).result()
    np.testing.assert_array_equal(sums.read().result(), ours._zarr_read("stats/sum"))
    # and they see the same damage: the crc32c codec is theirs too
    bad = copy_store(s, tmp_path / "bad.zarr")
    flip_byte(_chunk(bad, 5))
    with pytest.raises(Exception, match="(?i)checksum|crc"):
        zarr.open_array(str(bad / "images"), mode="r")[5]
    with pytest.raises(Exception, match="Digest mismatch"):
        ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(bad / "images")}}).result()[5] \
            .read().result()


# ------------------------------------------------------------------------------------------------ format 1.0
def test_a_format_1_0_store_still_opens_and_reads_the_same(tmp_path, clean, capsys):
    from cellio.cli import main

    old = downgrade_to_1_0(copy_store(clean["lz4"], tmp_path / "old.zarr"))
    meta = json.loads((old / "images" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "blosc"]
    s, new = open_store(old), open_store(clean["lz4"])
    assert not s.checksums and new.checksums and s.attrs["format_version"] == "1.0"
    idx = np.arange(len(s))
    np.testing.assert_array_equal(s.read(idx), new.read(idx))
    np.testing.assert_array_equal(s.read(idx, crop=(2, 3, 7, 4)), new.read(idx, crop=(2, 3, 7, 4)))
    np.testing.assert_array_equal(s.channel_stats("plate")[1], new.channel_stats("plate")[1])
    assert s.sites.equals(new.sites)
    capsys.readouterr()
    assert main(["inspect", str(old)]) == 0
    assert "no checksums" in capsys.readouterr().out
    import zarr

    np.testing.assert_array_equal(zarr.open_array(str(old / "images"), mode="r")[3], new.read_one(3))


def test_verify_false_reads_uncompressed_crops_row_by_row(tmp_path, clean):
    """verify=False keeps the fast row read of uncompressed crops (the checksum covers whole chunks only)."""
    s_on, s_off = open_store(clean["none"]), open_store(clean["none"], verify=False)
    idx = np.random.default_rng(0).permutation(len(s_on))[:16]
    np.testing.assert_array_equal(s_on.read(idx, crop=(3, 2, 9, 5)), s_off.read(idx, crop=(3, 2, 9, 5)))
    np.testing.assert_array_equal(s_on.read(idx), s_off.read(idx))
    import pickle

    assert pickle.loads(pickle.dumps(s_off)).verify is False  # travels to loader workers


def test_the_byte_layout_of_1_1_is_1_0_plus_a_crc32c_trailer(clean):
    """Format 1.1 changes nothing but the appended checksum: chunk = 1.0 chunk + crc32c(1.0 chunk), little end."""
    import google_crc32c

    for rel in ("images/c/2/0/0/0", "sites/sirna/c/0", "stats/sum/c/0/0", "status/c/0"):
        data = (clean["zstd"] / rel).read_bytes()
        assert int.from_bytes(data[-4:], "little") == google_crc32c.value(data[:-4]), rel
    assert os.path.getsize(clean["none"] / "images/c/2/0/0/0") == 17 * 11 * 6 + 4
