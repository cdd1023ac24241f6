"""`cellio verify`: every kind of damage found and named by id_code; `--repair RAW` restores the clean store."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cellio.errors import StoreIncompleteError
from cellio.ingestion import ingest, repair_store
from cellio.store import open_store
from cellio.store.stats import site_sums
from cellio.store.verify import verify_store

from store_damage import assert_same_store, copy_store, downgrade_to_1_0, flip_byte, truncate


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory) -> Path:
    from cellio.testing import make_raw

    return make_raw(tmp_path_factory.mktemp("verify") / "rxrx1", classes=4, cell_types=("HUVEC",))


@pytest.fixture(scope="module")
def clean(tmp_path_factory, small_raw) -> Path:
    return Path(ingest(small_raw, tmp_path_factory.mktemp("verify-store") / "lz4.zarr", codec="lz4", workers=1,
                       progress=False, layout="chunked").store)


def _chunk(store: Path, i: int) -> Path:
    return store / "images" / "c" / str(i) / "0" / "0" / "0"


def test_site_sums_are_the_ingest_sums(clean):
    s = open_store(clean)
    got = np.array([site_sums(s.read_one(i))[0] for i in range(len(s))])
    np.testing.assert_array_equal(got, s._zarr_read("stats/sum"))


def test_a_clean_store_verifies_and_inspect_says_when(tmp_path, clean, capsys):
    from cellio.cli import main

    s = copy_store(clean, tmp_path / "s.zarr")
    capsys.readouterr()
    assert main(["inspect", str(s)]) == 0
    assert "verified    never" in capsys.readouterr().out
    assert main(["verify", str(s), "--no-progress", "--threads", "2", "--json", str(tmp_path / "v.json")]) == 0
    out = capsys.readouterr().out
    assert "OK: no damage found" in out and "sites/s" in out and "MB/s" in out
    report = json.loads((tmp_path / "v.json").read_text())["verify"]
    assert report["ok"] and report["n_checked"] == 64 and report["stored_bytes"] > 0
    attrs = json.loads((s / "zarr.json").read_text())["attributes"]
    assert attrs["last_verified"]["ok"] is True and attrs["last_verified"]["sites_checked"] == 64
    assert main(["inspect", str(s)]) == 0
    assert f"verified    {attrs['last_verified']['at']}: OK, 64 sites checked" in capsys.readouterr().out
    assert open_store(s).read([0]).shape == (1, 17, 11, 6)  # the attribute write left a readable store


def test_every_kind_of_damage_is_reported_then_repaired_to_the_clean_store(tmp_path, clean, small_raw, capsys):
    from cellio.cli import main

    s = copy_store(clean, tmp_path / "s.zarr")
    ids = open_store(clean).sites.id_code
    flip_byte(_chunk(s, 5))                        # bit rot
    _chunk(s, 9).unlink()                          # a lost file
    truncate(_chunk(s, 12))                        # a torn copy
    (s / "sites" / "sirna" / "c" / "0").unlink()   # labels gone
    (s / "stats" / "sum" / "c" / "0" / "0").unlink()
    capsys.readouterr()
    assert main(["verify", str(s), "--no-progress", "--json", str(tmp_path / "v.json")]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED: 3 sites, 2 arrays" in out
    for i in (5, 9, 12):
        assert ids[i] in out
    assert "sites/sirna/c/0" in out and "stats/sum/c/0/0" in out
    report = json.loads((tmp_path / "v.json").read_text())["verify"]
    assert sorted(d["index"] for d in report["sites"]) == [5, 9, 12]
    assert {d["file"] for d in report["arrays"]} == {"sites/sirna/c/0", "stats/sum/c/0/0"}
    assert json.loads((s / "zarr.json").read_text())["attributes"]["last_verified"]["ok"] is False

    assert main(["verify", str(s), "--no-progress", "--repair", str(small_raw), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "re-ingested 3 sites" in out and "OK: no damage found" in out
    assert_same_store(clean, s)  # byte for byte the store a clean ingest wrote
    assert json.loads((s / "zarr.json").read_text())["attributes"]["last_verified"]["ok"] is True


def test_stats_that_disagree_with_the_pixels_are_found_without_checksums(tmp_path, clean, small_raw):
    """A format 1.0 store has no checksums: verify still finds a changed pixel through the exact pixel sums."""
    old = downgrade_to_1_0(Path(ingest(small_raw, tmp_path / "old.zarr", codec="none", workers=1,
                                       progress=False, layout="chunked").store))
    assert verify_store(old, progress=False).ok
    pristine = copy_store(old, tmp_path / "pristine.zarr")
    flip_byte(_chunk(old, 7), offset=100)
    assert open_store(old).read([7]).shape == (1, 17, 11, 6)  # no checksum: the reader cannot tell
    report = verify_store(old, progress=False)
    assert not report.checksums and report.damaged_indices == [7]
    assert "pixel sums differ from stats/" in report.sites[0].problem
    after = repair_store(small_raw, old, progress=False, workers=1).after
    assert after.ok and open_store(old).attrs["format_version"] == "1.0"
    assert_same_store(pristine, old)  # repaired in its own format: still no checksums anywhere


def test_inconsistent_tables_are_reported(tmp_path, clean):
    from cellio.store.files import FileTarget

    s = copy_store(clean, tmp_path / "s.zarr")
    target = FileTarget(str(s), None)
    status = open_store(s)._zarr_read("status")
    status[3] = 2  # a site marked failed that the root attributes do not list
    target.write_small_array("status", status)
    target.write_small_array("stats/mean", np.zeros((64, 6)))
    report = verify_store(s, progress=False, record=False)
    problems = {d.file: d.problem for d in report.arrays}
    assert "n_ok=64" in problems["status"] and "stats/mean" in problems


def test_verify_refuses_an_incomplete_store(tmp_path, clean):
    s = copy_store(clean, tmp_path / "s.zarr")
    node = json.loads((s / "zarr.json").read_text())
    node["attributes"]["complete"] = False
    (s / "zarr.json").write_text(json.dumps(node))
    with pytest.raises(StoreIncompleteError, match="rerun `cellio ingest`"):
        verify_store(s, progress=False)


def test_sites_skipped_by_ingest_are_reported_missing_and_repair_stores_them(tmp_path, small_raw, capsys):
    # `verify` said OK and `--repair` left them out: the store silently lacked sites of its plan
    import shutil

    from cellio.cli import main
    from cellio.datasets.rxrx1.metadata import read_metadata

    raw = tmp_path / "raw"
    shutil.copytree(small_raw, raw)
    row = read_metadata(raw).iloc[5]
    png = raw / row["path_w2"]
    original = png.read_bytes()
    png.write_bytes(b"not a png")
    store = tmp_path / "s.zarr"
    ingest(raw, store, codec="lz4", on_error="skip", workers=1, progress=False, layout="chunked")
    capsys.readouterr()
    assert main(["verify", str(store), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "MISSING: 1 site" in out and row["id_code"] in out and "not a readable PNG" in out
    assert main(["verify", str(store), "--repair", str(raw), "--no-progress"]) == 1  # still bad: still missing
    png.write_bytes(original)
    assert main(["verify", str(store), "--repair", str(raw), "--no-progress"]) == 0
    assert "OK: no damage found" in capsys.readouterr().out.rsplit("verified again", 1)[1]
    fresh = ingest(raw, tmp_path / "fresh.zarr", codec="lz4", workers=1, progress=False, layout="chunked").store
    assert_same_store(fresh, store)  # as if the site had never failed
