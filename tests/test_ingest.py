"""Ingest: exact round trip, labels, codecs, resume after SIGKILL, every bad input, subsets, Dask scale-out."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cellio.errors import CellioError, ImageError, MetadataError, StoreError, StoreIncompleteError
from cellio.ingestion import ingest
from cellio.store.format import JOURNAL_DIR
from cellio.store import open_store

LIMIT = 40  # bad-input cases ingest the first sites of the small set, and every defect sits inside them


def _store_files(path: str | Path) -> dict[str, bytes]:
    """Every file of a store by relative path; the root's created_at (the one run-dependent value) masked."""
    root = Path(path)
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    node = json.loads(files["zarr.json"])
    node["attributes"]["created_at"] = "<masked>"
    files["zarr.json"] = json.dumps(node, sort_keys=True).encode()
    return files


def _assert_same_store(a: str | Path, b: str | Path) -> None:
    fa, fb = _store_files(a), _store_files(b)
    assert sorted(fa) == sorted(fb)
    different = [k for k in fa if fa[k] != fb[k]]
    assert not different, f"files differ: {different[:5]}"


def _png_site(raw: Path, row: pd.Series) -> np.ndarray:
    return np.stack([np.asarray(Image.open(raw / row[f"path_w{c}"])) for c in range(1, 7)], axis=-1)


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory) -> Path:
    """64 sites (one HUVEC train and one test experiment, 17x11): cheap to copy, damage and ingest many times."""
    from cellio.testing import make_raw

    return make_raw(tmp_path_factory.mktemp("small") / "rxrx1", classes=4, cell_types=("HUVEC",))


@pytest.fixture(scope="module")
def clean_lz4(tmp_path_factory, small_raw) -> Path:
    path = tmp_path_factory.mktemp("clean") / "lz4.zarr"
    ingest(small_raw, path, codec="lz4", workers=1, progress=False, layout="chunked")
    return path


@pytest.fixture(scope="module")
def small_ref(tmp_path_factory, small_raw):
    return open_store(ingest(small_raw, tmp_path_factory.mktemp("ref") / "none.zarr", codec="none", workers=1,
                             progress=False, layout="chunked").store)


# ------------------------------------------------------------------------------------------------ hand-made set
def _write_handmade(root: Path, shape=(13, 7)) -> dict[tuple[str, int], np.ndarray]:
    """An RxRx1-layout directory written here with PIL and pandas, not by cellio.synth."""
    rng = np.random.default_rng(42)
    train = pd.DataFrame({"id_code": ["HUVEC-01_1_B02", "HUVEC-01_1_B03", "HUVEC-01_1_C04"],
                          "experiment": "HUVEC-01", "plate": 1, "well": ["B02", "B03", "C04"],
                          "sirna": [1138, 5, 1108]})
    test = pd.DataFrame({"id_code": ["U2OS-04_2_B02", "U2OS-04_2_D05"], "experiment": "U2OS-04", "plate": 2,
                         "well": ["B02", "D05"], "sirna": [1138, 7]})
    wt = {1138: "negative_control", 1108: "positive_control"}
    root.mkdir(parents=True)
    train[train.sirna < 1108].to_csv(root / "train.csv", index=False)
    train[train.sirna >= 1108].assign(well_type=lambda d: d.sirna.map(wt)).to_csv(root / "train_controls.csv",
                                                                                  index=False)
    test[test.sirna < 1108].drop(columns="sirna").to_csv(root / "test.csv", index=False)
    test[test.sirna >= 1108].assign(well_type=lambda d: d.sirna.map(wt)).to_csv(root / "test_controls.csv",
                                                                                index=False)
    test[test.sirna < 1108][["id_code"]].assign(sirna=0).to_csv(root / "sample_submission.csv", index=False)
    images, stats = {}, []
    for ds, frame in (("train", train), ("test", test)):
        for r in frame.itertuples():
            for site in (1, 2):
                img = rng.integers(0, 256, (*shape, 6), dtype=np.uint8)
                images[(r.id_code, site)] = img
                for c in range(6):
                    p = root / ds / r.experiment / f"Plate{r.plate}" / f"{r.well}_s{site}_w{c + 1}.png"
                    p.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(img[:, :, c]).save(p)
                    ch = img[:, :, c].astype(np.float64)
                    stats.append((r.id_code, r.experiment, r.plate, r.well, site, c + 1, round(ch.mean(), 4),
                                  round(ch.std(), 4), float(np.median(ch)), int(ch.min()), int(ch.max())))
    pd.DataFrame(stats, columns=["id_code", "experiment", "plate", "well", "site", "channel", "mean", "std",
                                 "median", "min", "max"]).to_csv(root / "pixel_stats.csv", index=False)
    return images


def test_handmade_rxrx1_directory(tmp_path):
    images = _write_handmade(tmp_path / "raw")
    report = ingest(tmp_path / "raw", tmp_path / "s.zarr", workers=1, progress=False, layout="chunked")
    assert report.complete and report.n_ok == 10 and report.n_failed == 0
    s = open_store(tmp_path / "s.zarr")
    assert s.image_shape == (13, 7, 6)
    for i, row in s.sites.iterrows():
        np.testing.assert_array_equal(s.read_one(i), images[(row.id_code, row.site)])
    by = s.sites.drop_duplicates("id_code").set_index("id_code")
    assert by.loc["HUVEC-01_1_B02", "well_type"] == "negative_control" and by.loc["HUVEC-01_1_B02", "sirna"] == 1138
    assert by.loc["HUVEC-01_1_C04", "well_type"] == "positive_control" and by.loc["HUVEC-01_1_C04", "sirna"] == 1108
    assert by.loc["HUVEC-01_1_B03", "well_type"] == "treatment" and by.loc["HUVEC-01_1_B03", "sirna"] == 5
    assert pd.isna(by.loc["U2OS-04_2_D05", "sirna"]) and by.loc["U2OS-04_2_D05", "dataset"] == "test"
    assert by.loc["U2OS-04_2_D05", "cell_type"] == "U2OS" and by.loc["HUVEC-01_1_B03", "cell_type"] == "HUVEC"


# ------------------------------------------------------------------------------------------------ round trip
def test_round_trip_every_site_equals_its_pngs(tiny_raw, tiny_store):
    s = tiny_store
    batch = s.read(np.arange(len(s)))
    for i, row in s.sites.iterrows():
        np.testing.assert_array_equal(batch[i], _png_site(tiny_raw, row))


def test_codecs_and_workers_give_the_same_images(tmp_path, small_raw, small_ref, clean_lz4):
    zstd = ingest(small_raw, tmp_path / "zstd.zarr", codec="zstd", workers=2, progress=False, layout="chunked")
    assert zstd.workers == 2 and zstd.n_ok == len(small_ref)
    for path in (clean_lz4, tmp_path / "zstd.zarr"):
        s = open_store(path)
        np.testing.assert_array_equal(s.read(np.arange(len(s))), small_ref.read(np.arange(len(s))))
        np.testing.assert_array_equal(s.channel_stats("plate")[1], small_ref.channel_stats("plate")[1])
    # the number of workers and the batch size do not change a single byte
    ingest(small_raw, tmp_path / "lz4-2.zarr", codec="lz4", workers=2, batch_size=3, progress=False, layout="chunked")
    _assert_same_store(clean_lz4, tmp_path / "lz4-2.zarr")


def test_rerun_of_a_complete_store_does_nothing_and_checks_arguments(tmp_path, small_raw, clean_lz4):
    again = ingest(small_raw, clean_lz4, codec="lz4", workers=1, progress=False, layout="chunked")
    assert again.n_written == 0 and again.complete
    with pytest.raises(StoreError, match="ingested with"):
        ingest(small_raw, clean_lz4, codec="zstd", workers=1, progress=False, layout="chunked")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a cellio store"):
        ingest(small_raw, tmp_path / "other", workers=1, progress=False, layout="chunked")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_subsets(tmp_path, tiny_raw):
    from cellio.datasets.rxrx1.metadata import read_metadata

    meta = read_metadata(tiny_raw)
    exp = sorted(meta.loc[meta.dataset == "train", "experiment"].unique())[0]
    s = open_store(ingest(tiny_raw, tmp_path / "a.zarr", experiments=[exp], workers=1, progress=False,
                          layout="chunked").store)
    assert set(s.sites.experiment) == {exp} and len(s) == (meta.experiment == exp).sum()
    r = ingest(tiny_raw, tmp_path / "b.zarr", cell_types="RPE,U2OS", datasets="test", workers=1, progress=False,
               layout="chunked")
    s = open_store(r.store)
    assert set(s.sites.cell_type) == {"RPE", "U2OS"} and set(s.sites.dataset) == {"test"}
    s = open_store(ingest(tiny_raw, tmp_path / "c.zarr", limit=7, workers=1, progress=False, layout="chunked").store)
    pd.testing.assert_frame_equal(s.sites, meta.head(7), check_dtype=False)
    with pytest.raises(MetadataError, match="NOPE-01"):
        ingest(tiny_raw, tmp_path / "d.zarr", experiments=["NOPE-01"], workers=1, progress=False, layout="chunked")
    with pytest.raises(MetadataError, match="valid"):
        ingest(tiny_raw, tmp_path / "e.zarr", datasets=["valid"], workers=1, progress=False, layout="chunked")


# ------------------------------------------------------------------------------------------------ crash safety
def test_sigkill_then_rerun_gives_the_clean_store(tmp_path, tiny_raw):
    clean = tmp_path / "clean.zarr"
    ingest(tiny_raw, clean, codec="lz4", workers=1, progress=False, layout="chunked")
    store = tmp_path / "killed.zarr"
    code = ("import sys; from cellio.ingestion import ingest; "
            "ingest(sys.argv[1], sys.argv[2], codec='lz4', workers=1, batch_size=1, progress=False, layout='chunked')")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([sys.executable, "-c", code, str(tiny_raw), str(store)], env=env)
    journal = store / JOURNAL_DIR
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.is_dir() and len(os.listdir(journal)) >= 10:
            break
        time.sleep(0.002)
    assert proc.poll() is None, "ingest finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with pytest.raises(StoreIncompleteError, match="rerun"):
        open_store(store)
    partial = open_store(store, allow_incomplete=True)
    assert 10 <= len(partial) < partial.attrs["n_sites"]
    np.testing.assert_array_equal(partial.read([0, len(partial) - 1]),
                                  open_store(clean).read(partial._rows[[0, -1]]))
    report = ingest(tiny_raw, store, codec="lz4", workers=2, progress=False, layout="chunked")
    assert report.complete and 0 < report.n_written < report.n_sites
    _assert_same_store(clean, store)
    # and no directory of cellio's own is left, not even an empty one (`cellio verify`'s attribute write left an
    # empty .cellio-tmp/)
    from cellio.cli import main

    assert main(["verify", str(store), "--no-progress"]) == 0
    assert sorted(p.name for p in store.iterdir()) == sorted(p.name for p in clean.iterdir())


def test_interrupted_skeleton_is_rebuilt(tmp_path, small_raw, clean_lz4):
    store = tmp_path / "skel.zarr"
    (store / "images").mkdir(parents=True)
    (store / ".cellio-creating").write_bytes(b"")
    (store / "images" / "zarr.json").write_text("{ torn")
    with pytest.raises(StoreIncompleteError):
        open_store(store)
    ingest(small_raw, store, codec="lz4", workers=1, progress=False, layout="chunked")
    _assert_same_store(clean_lz4, store)


# ------------------------------------------------------------------------------------------------ bad inputs
def _break(raw: Path, meta: pd.DataFrame, case: str, i: int) -> str:
    """Damage site i of a copied raw set; return the relative path of the file that should be named."""
    row = meta.iloc[i]
    rel = row["path_w4"]
    p = raw / rel
    if case == "corrupt":
        p.write_bytes(np.random.default_rng(i).integers(0, 256, 300, dtype=np.uint8).tobytes())
    elif case == "truncated":
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif case == "16bit":
        Image.fromarray(np.asarray(Image.open(p)).astype(np.uint16) * 200).save(p)
    elif case == "rgb":
        Image.open(p).convert("RGB").save(p)
    elif case == "wrong_size":
        Image.fromarray(np.zeros((11, 17), np.uint8)).save(p)
    elif case == "missing":
        p.unlink()
    elif case == "stats":
        ps = pd.read_csv(raw / "pixel_stats.csv")
        hit = (ps.id_code == row.id_code) & (ps.site == row.site) & (ps.channel == 4)
        ps.loc[hit, "mean"] += 3.0
        ps.to_csv(raw / "pixel_stats.csv", index=False)
    else:
        raise AssertionError(case)
    return rel


CASES = {"corrupt": "not a readable PNG", "truncated": "corrupt or truncated", "16bit": "16-bit",
         "rgb": "8-bit RGB", "wrong_size": "expected 17x11", "missing": "missing", "stats": "pixel_stats.csv"}


@pytest.fixture()
def raw_copy(tmp_path, small_raw) -> Path:
    dst = tmp_path / "raw"
    shutil.copytree(small_raw, dst)
    return dst


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_naming_the_file_and_loses_nothing(tmp_path, small_ref, raw_copy, case):
    from cellio.datasets.rxrx1.metadata import read_metadata

    meta = read_metadata(raw_copy)
    original = (raw_copy / meta.iloc[9]["path_w4"]).read_bytes()
    ps_original = (raw_copy / "pixel_stats.csv").read_bytes()
    rel = _break(raw_copy, meta, case, 9)
    store = tmp_path / "s.zarr"
    with pytest.raises(ImageError, match=CASES[case]) as info:
        ingest(raw_copy, store, workers=1, batch_size=4, limit=LIMIT, progress=False, layout="chunked")
    assert rel in str(info.value)
    with pytest.raises(StoreIncompleteError):
        open_store(store)
    # fix the input, rerun: the store completes with every site, equal to the PNGs
    (raw_copy / rel).write_bytes(original)
    (raw_copy / "pixel_stats.csv").write_bytes(ps_original)
    report = ingest(raw_copy, store, workers=1, batch_size=4, limit=LIMIT, progress=False, layout="chunked")
    assert report.complete and report.n_ok == LIMIT and report.n_written < LIMIT
    np.testing.assert_array_equal(open_store(store).read(np.arange(LIMIT)), small_ref.read(np.arange(LIMIT)))


def test_on_error_skip_records_every_bad_site(tmp_path, small_ref, raw_copy):
    from cellio.datasets.rxrx1.metadata import read_metadata

    meta = read_metadata(raw_copy)
    bad = {}
    for k, case in enumerate(sorted(CASES)):
        i = 3 + 4 * k
        bad[i] = (case, _break(raw_copy, meta, case, i))
    report = ingest(raw_copy, tmp_path / "s.zarr", on_error="skip", workers=2, limit=LIMIT, progress=False,
                    layout="chunked")
    assert report.complete and report.n_failed == len(CASES) and report.n_ok == LIMIT - len(CASES)
    s = open_store(tmp_path / "s.zarr")
    assert len(s) == LIMIT - len(CASES)
    failed = s.failed
    assert len(failed) == len(CASES)
    for f, (i, (case, rel)) in zip(failed.itertuples(), sorted(bad.items())):
        assert f.id_code == meta.iloc[i].id_code and f.site == meta.iloc[i].site
        assert rel in f.file and CASES[case] in f.reason
    assert [f.index for f in report.failed] == sorted(bad)
    good = [i for i in range(LIMIT) if i not in bad]
    assert s.sites.id_code.tolist() == meta.iloc[good].id_code.tolist()
    np.testing.assert_array_equal(s.read(np.arange(len(s))), small_ref.read(good))


@pytest.mark.parametrize("layout", ["chunked", "sharded"])
def test_a_rerun_retries_the_sites_skipped_earlier(tmp_path, raw_copy, layout):
    # a rerun used to say "already complete" and keep the stale failure after the PNG was fixed: the only way in
    # was to delete the store. Now it retries the failed sites (a shard is rewritten whole), keeps the ones still
    # bad, and ends byte-identical to a store that never failed.
    from cellio.datasets.rxrx1.metadata import read_metadata

    meta = read_metadata(raw_copy)
    originals = {}
    for i, case in ((3, "corrupt"), (21, "missing")):
        rel = meta.iloc[i]["path_w4"]
        originals[i] = (rel, (raw_copy / rel).read_bytes())
        _break(raw_copy, meta, case, i)
    store = tmp_path / "s.zarr"
    kw = dict(on_error="skip", workers=1, limit=LIMIT, progress=False, layout=layout, sites_per_shard=8)
    assert [f.index for f in ingest(raw_copy, store, **kw).failed] == [3, 21]
    (raw_copy / originals[3][0]).write_bytes(originals[3][1])
    again = ingest(raw_copy, store, **kw)
    assert [f.index for f in again.failed] == [21] and "missing" in again.failed[0].reason
    assert again.n_ok == LIMIT - 1 and again.n_written > 0 and len(open_store(store)) == LIMIT - 1
    (raw_copy / originals[21][0]).write_bytes(originals[21][1])
    last = ingest(raw_copy, store, **{**kw, "on_error": "fail"})
    assert last.n_failed == 0 and last.n_ok == LIMIT and not last.failed
    assert ingest(raw_copy, store, **kw).n_written == 0  # nothing left to retry
    _assert_same_store(ingest(raw_copy, tmp_path / "clean.zarr", **kw).store, store)


def test_a_retry_never_turns_a_stored_site_into_a_failed_one(tmp_path, raw_copy):
    # the retried site's shard is rewritten whole, so its stored neighbours are read again: one whose PNG went
    # missing since is an error naming the file (even with on_error="skip"), and the store stays as it was
    from cellio.datasets.rxrx1.metadata import read_metadata

    meta = read_metadata(raw_copy)
    _break(raw_copy, meta, "corrupt", 3)
    store = tmp_path / "s.zarr"
    kw = dict(on_error="skip", workers=1, limit=LIMIT, progress=False, layout="sharded", sites_per_shard=8)
    ingest(raw_copy, store, **kw)
    before = _store_files(store)
    gone = _break(raw_copy, meta, "missing", 5)  # a stored site of the same shard
    with pytest.raises(ImageError, match=gone):
        ingest(raw_copy, store, **kw)
    assert _store_files(store).keys() >= before.keys()
    assert {k: v for k, v in _store_files(store).items() if k in before} == before
    assert len(open_store(store)) == LIMIT - 1


@pytest.mark.parametrize("where", ["store.zarr", "train/store.zarr", "."])
def test_a_store_inside_the_raw_directory_is_refused(raw_copy, where):
    # it used to be accepted silently: the raw set then holds a store of itself (a copy or a re-download of the
    # raw data carries it along, a cleanup of either touches the other)
    before = sorted(str(p) for p in raw_copy.rglob("*"))
    with pytest.raises(StoreError, match=r"inside the raw directory .*choose a store path outside it"):
        ingest(raw_copy, raw_copy / where, workers=1, progress=False)
    assert sorted(str(p) for p in raw_copy.rglob("*")) == before  # nothing written


def test_malformed_csv_is_a_clear_error(tmp_path, raw_copy):
    csv = pd.read_csv(raw_copy / "train.csv").drop(columns=["well"])
    csv.to_csv(raw_copy / "train.csv", index=False)
    with pytest.raises(CellioError, match="train.csv"):
        ingest(raw_copy, tmp_path / "s.zarr", workers=1, progress=False, layout="chunked")
    assert not (tmp_path / "s.zarr").exists()


def test_verify_off_accepts_stats_mismatch(tmp_path, raw_copy):
    from cellio.datasets.rxrx1.metadata import read_metadata

    _break(raw_copy, read_metadata(raw_copy), "stats", 2)
    report = ingest(raw_copy, tmp_path / "s.zarr", verify=False, workers=1, limit=8, progress=False, layout="chunked")
    assert report.n_ok == 8


# ------------------------------------------------------------------------------------------------ scale-out
def test_dask_local_cluster_gives_the_same_store(tmp_path, small_raw, clean_lz4):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster:
        report = ingest(small_raw, tmp_path / "dask.zarr", codec="lz4", scheduler=cluster.scheduler_address,
                        progress=False, layout="chunked")
    assert report.complete
    _assert_same_store(clean_lz4, tmp_path / "dask.zarr")


# ------------------------------------------------------------------------------------------------ command line
def test_cli_ingest_and_inspect(tmp_path, small_raw, capsys):
    from cellio.cli import main

    store = tmp_path / "cli.zarr"
    rc = main(["ingest", "--layout", "chunked", str(small_raw), str(store), "--workers", "1", "--limit", "12",
               "--codec", "zstd",
               "--no-progress", "--report", str(tmp_path / "report.json")])
    assert rc == 0
    assert json.loads((tmp_path / "report.json").read_text())["n_ok"] == 12
    capsys.readouterr()
    assert main(["inspect", str(store)]) == 0
    out = capsys.readouterr().out
    assert "complete: 12 of 12 sites" in out and "zstd" in out and "x of" in out and "HUVEC" in out
    assert main(["inspect", str(tmp_path)]) == 2
    assert "not a cellio store" in capsys.readouterr().err


def test_a_set_without_test_sites_ingests_by_default_but_not_on_request(tmp_path):
    from cellio.testing import make_raw

    raw = make_raw(tmp_path / "train_only", classes=4, test_experiments_per_cell_type=0,
                   cell_types=("HUVEC",), positive_controls=1)
    report = ingest(raw, tmp_path / "s.zarr", workers=1, progress=False, layout="chunked")
    assert report.complete and set(open_store(tmp_path / "s.zarr").sites["dataset"]) == {"train"}
    with pytest.raises(MetadataError, match=r"\[.test.\] not found"):
        ingest(raw, tmp_path / "t.zarr", datasets="test", workers=1, progress=False, layout="chunked")
