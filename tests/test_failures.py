"""Failures with a name (the issue's item 5): disk full, Ctrl-C, a closed pipe, a bad seed, a store finishing
under a reader. Each says which file, site or parameter, what was expected, and leaves a resumable state."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cellio.store.format import JOURNAL_DIR, TMP_DIR
from cellio.errors import DiskFullError, ImageError, PipelineConfigError, StoreError
from cellio.ingestion import ingest
from cellio.store import open_store

from store_damage import assert_same_store

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory) -> Path:
    from cellio.testing import make_raw

    return make_raw(tmp_path_factory.mktemp("fail") / "rxrx1", classes=4, cell_types=("HUVEC",))


@pytest.fixture(scope="module")
def clean(tmp_path_factory, small_raw) -> Path:
    return Path(ingest(small_raw, tmp_path_factory.mktemp("fail-store") / "lz4.zarr", codec="lz4", workers=1,
                       progress=False, layout="chunked").store)


# ------------------------------------------------------------------------------------------------ disk full
def test_not_enough_space_is_refused_before_anything_is_written(tmp_path, small_raw, monkeypatch):
    import cellio.store.files

    monkeypatch.setattr(cellio.store.files, "free_bytes", lambda path: 10_000)
    with pytest.raises(DiskFullError) as err:
        ingest(small_raw, tmp_path / "s.zarr", workers=1, progress=False, layout="chunked")
    e = err.value
    assert isinstance(e, StoreError) and e.path == str(tmp_path / "s.zarr") and e.free_bytes == 10_000
    assert e.needed_bytes >= 64 * 17 * 11 * 6 * 0.6  # 64 sites of 17x11x6 at the lz4 estimate
    assert "writing 64 sites (lz4" in str(e) and "9.8 KiB free" in str(e) and "rerun" in str(e)
    assert not (tmp_path / "s.zarr").exists()  # checked before the first byte: not even a directory is left


def test_enospc_during_ingest_names_the_path_and_the_rerun_resumes(tmp_path, small_raw, clean, monkeypatch):
    import builtins

    import cellio.store.files

    store = tmp_path / "s.zarr"
    writes = {"n": 0}

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            writes["n"] += 1
            if writes["n"] > 100:  # the skeleton (~57 files) and some sites fit, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(cellio.store.files, "open", lambda p, mode="r", *a, **k: Full(builtins.open(p, mode, *a, **k)),
                        raising=False)
    with pytest.raises(DiskFullError) as err:
        ingest(small_raw, store, codec="lz4", workers=1, batch_size=4, progress=False, layout="chunked")
    e = err.value
    assert e.path == str(store) and e.needed_bytes > 0 and e.free_bytes is not None
    assert "the rest of the ingest" in str(e) and "sites; writing" in str(e) and "rerun" in str(e)
    assert not any((store / TMP_DIR).iterdir())  # the torn temp file was removed
    monkeypatch.undo()
    report = ingest(small_raw, store, codec="lz4", workers=1, batch_size=4, progress=False, layout="chunked")
    assert report.complete and 0 < report.n_written < report.n_sites  # resumed, not redone
    assert_same_store(clean, store)


def test_disk_full_error_pickles_across_processes():
    import pickle

    e = pickle.loads(pickle.dumps(DiskFullError("/data/s.zarr", 2**30, 2**20, what="the ingest")))
    assert isinstance(e, DiskFullError) and e.needed_bytes == 2**30 and e.free_bytes == 2**20
    assert "the ingest needs about 1.0 GiB, 1.0 MiB free" in str(e)


# ------------------------------------------------------------------------------------------------ Ctrl-C
def test_ctrl_c_stops_a_two_worker_ingest_once_cleanly_and_it_resumes(tmp_path, small_raw, clean):
    store = tmp_path / "s.zarr"
    cmd = [sys.executable, "-m", "cellio", "ingest", "--layout", "chunked", str(small_raw), str(store), "--workers",
           "2", "--batch-size", "1", "--codec", "lz4", "--no-progress"]
    # its own process group, like a shell job: SIGINT goes to the CLI and its workers at once, as Ctrl-C does
    # SIGINT at its default in the child even when this test runs as a background job (which starts with it ignored)
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    journal = store / JOURNAL_DIR
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.is_dir() and len(os.listdir(journal)) >= 4:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "ingest finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=30)  # one Ctrl-C is enough: no hang
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert "interrupted; finished batches are kept: rerun the same command to resume" in err
    assert not (store / ".cellio-lock").exists()
    report = ingest(small_raw, store, codec="lz4", workers=1, progress=False, layout="chunked")
    assert report.complete and report.n_written < report.n_sites
    assert_same_store(clean, store)


# ------------------------------------------------------------------------------------------------ small things
def test_inspect_into_a_closed_pipe_ends_quietly(clean):
    r, w = os.pipe()
    os.close(r)  # the reader (`head`) is gone before the first line
    proc = subprocess.run([sys.executable, "-m", "cellio", "inspect", str(clean)], stdout=w, stderr=subprocess.PIPE,
                          env=ENV, text=True, timeout=60)
    os.close(w)
    assert "BrokenPipeError" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 141


def test_a_negative_seed_fails_up_front_naming_the_parameter(clean):
    import cellio

    with pytest.raises(PipelineConfigError, match=r"seed: expected an integer >= 0, found -5"):
        cellio.create_loader(str(clean), 4, crop_size=7, backend="torch", device="cpu", num_workers=0, seed=-5)
    with pytest.raises(PipelineConfigError, match="verify: expected True or False"):
        cellio.create_loader(str(clean), 4, crop_size=7, backend="torch", device="cpu", num_workers=0, verify="no")


def test_an_incomplete_store_keeps_its_view_while_the_ingest_finishes(tmp_path, small_raw, clean):
    """open_store(allow_incomplete=True) during finalize used to raise KeyError: 0 from channel_stats."""
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(small_raw, raw)
    from cellio.datasets.rxrx1.metadata import read_metadata

    bad = raw / read_metadata(raw).iloc[20]["path_w3"]
    original = bad.read_bytes()
    bad.write_bytes(b"not a png")
    store = tmp_path / "s.zarr"
    with pytest.raises(ImageError):
        ingest(raw, store, codec="lz4", workers=1, batch_size=4, progress=False, layout="chunked")
    partial = open_store(store, allow_incomplete=True)
    assert not partial.complete and len(partial) == 20
    bad.write_bytes(original)
    # finalize deletes the journal
    ingest(raw, store, codec="lz4", workers=1, batch_size=4, progress=False, layout="chunked")
    mean, std = partial.channel_stats("plate")  # the snapshot taken at open still answers
    assert mean.shape == (20, 6) and np.isfinite(std).all()
    np.testing.assert_allclose(partial.channel_stats("site")[0], open_store(clean).channel_stats("site")[0][:20])
    assert partial.failed.empty


def _sigint_disposition() -> str:
    return str(signal.getsignal(signal.SIGINT))


def test_ingest_workers_ignore_ctrl_c_from_birth():
    # a Ctrl-C while a worker is still starting (before its initializer) printed that worker's traceback
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from cellio.ingestion.backends import start_forkserver_ignoring_sigint

    if "forkserver" not in mp.get_all_start_methods():
        pytest.skip("no forkserver on this platform")
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    start_forkserver_ignoring_sigint()
    with ProcessPoolExecutor(1, mp_context=mp.get_context("forkserver")) as pool:
        assert pool.submit(_sigint_disposition).result() == str(signal.SIG_IGN)
    assert signal.getsignal(signal.SIGINT) is before  # the parent still takes Ctrl-C as it did


# ------------------------------------------------------------------------------------------------ counts
@pytest.mark.parametrize("argv, name, value", [
    (["ingest", "{raw}", "{new}", "--workers", "-1"], "workers", "-1"),
    (["ingest", "{raw}", "{new}", "--workers", "0"], "workers", "0"),
    (["ingest", "{raw}", "{new}", "--batch-size", "0"], "batch_size", "0"),
    (["verify", "{store}", "--threads", "-2"], "threads", "-2"),
    (["verify", "{store}", "--repair", "{raw}", "--workers", "0"], "workers", "0"),
    (["synth", "{new}", "--workers", "-1"], "workers", "-1"),
])
def test_zero_or_negative_counts_are_refused_everywhere_in_the_same_words(tmp_path, small_raw, clean, capsys, argv,
                                                                           name, value):
    # they used to run as 1 (max(1, workers)) everywhere but in `cellio synth`
    from cellio.cli import main

    new = tmp_path / "new"
    argv = [a.format(raw=small_raw, new=new, store=clean) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: {name}: expected an integer >= 1 or None, found {value}\n" in err, err
    assert not new.exists()


def test_a_zero_thread_reader_is_refused_naming_the_parameter(clean):
    from cellio.errors import ConfigError

    with pytest.raises(ConfigError, match=r"threads: expected an integer >= 1 or None, found 0"):
        open_store(clean, threads=0)


# ------------------------------------------------------------------------------------------------ the main module
README_STYLE = """import sys
import cellio

report = cellio.ingest(sys.argv[1], sys.argv[2], workers=2, progress=False)
print("stored", report.n_ok)
"""
GUARDED = """import sys
import cellio


def main():
    report = cellio.ingest(sys.argv[1], sys.argv[2], workers=2, progress=False)
    print("stored", report.n_ok)


if __name__ == "__main__":
    main()
"""


@pytest.mark.parametrize("how", ["script", "stdin"])
def test_workers_started_from_an_unguarded_main_module_stop_at_once_with_what_to_write(tmp_path, small_raw, how):
    # the README's example pasted into quick.py: every forkserver worker re-ran the script's top level, and the
    # user saw BrokenProcessPool and a lock traceback from a child; from `python -` a FileNotFoundError: '<stdin>'
    store = tmp_path / "s.zarr"
    script = tmp_path / "quick.py"
    script.write_text(README_STYLE)
    if how == "script":
        cmd, stdin = [sys.executable, str(script), str(small_raw), str(store)], None
    else:
        cmd, stdin = [sys.executable, "-", str(small_raw), str(store)], README_STYLE
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=ENV, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr
    assert "BrokenProcessPool" not in err and "_RemoteTraceback" not in err and "FileNotFoundError" not in err, err
    last = err.strip().splitlines()
    assert any(line.startswith("cellio.errors.MainModuleError: ") for line in last), err
    assert 'if __name__ == "__main__":' in err and "workers=1" in err
    if how == "script":
        assert f"{script}, line 4" in err and "report = cellio.ingest(" in err
    else:
        assert "<stdin>" in err and "standard input" in err
    assert not store.exists()  # refused before any work


def test_a_guarded_script_and_python_c_start_their_workers(tmp_path, small_raw):
    script = tmp_path / "quick.py"
    script.write_text(GUARDED)
    proc = subprocess.run([sys.executable, str(script), str(small_raw), str(tmp_path / "a.zarr")],
                          capture_output=True, text=True, env=ENV, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0 and "stored 64" in proc.stdout, proc.stderr
    # `python -c` has no main file for the workers to re-run: nothing to guard
    proc = subprocess.run([sys.executable, "-c", README_STYLE, str(small_raw), str(tmp_path / "b.zarr")],
                          capture_output=True, text=True, env=ENV, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0 and "stored 64" in proc.stdout, proc.stderr
