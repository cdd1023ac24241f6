"""The store's writer lock: one ingest at a time, holder named, stale locks taken over, nothing foreign deleted.

Reproduction of the issue's item 1: two ingests into one path used to destroy the store (a crash, a journal
FileNotFoundError, or an exit 0 over a store without images/zarr.json). 20 tries of that race must leave a
complete, verified store every time, with every process either succeeding or refusing with the holder's name.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cellio.store.files import FileTarget
from cellio.store.format import LOCK_NAME
from cellio.store.lock import LocalLock, LockHolder, ObjectLock, lock_store
from cellio.processes import pid_alive
from cellio.errors import StoreError, StoreLockedError
from cellio.ingestion import ingest
from cellio.store import open_store

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory) -> Path:
    from cellio.testing import make_raw

    return make_raw(tmp_path_factory.mktemp("lock") / "rxrx1", classes=4, cell_types=("HUVEC",))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------------------------------------ local lock
def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    path = str(tmp_path / LOCK_NAME)
    first = LocalLock(path, "s.zarr", "ingest").acquire()
    record = json.loads(Path(path).read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname() and record["started_at"]
    with pytest.raises(StoreLockedError, match=rf"pid {os.getpid()} on host {socket.gethostname()}") as err:
        LocalLock(path, "s.zarr", "ingest").acquire()  # another open file description: flock conflicts
    assert err.value.holder["pid"] == os.getpid() and err.value.lock == path
    first.check()
    first.release()
    assert not os.path.exists(path)
    LocalLock(path, "s.zarr", "ingest").acquire().release()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    path = tmp_path / LOCK_NAME
    dead = LockHolder(host=socket.gethostname(), pid=_dead_pid(), started_at="2026-01-01T00:00:00+00:00",
                      purpose="ingest", token="old")
    path.write_text(json.dumps(dead.to_dict()))
    with caplog.at_level(logging.WARNING, logger="cellio.store.lock"):
        lock = LocalLock(str(path), "s.zarr", "ingest").acquire()
    assert lock.took_over == dead and f"pid {dead.pid}" in caplog.text
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


def test_a_live_holder_in_another_process_is_refused_then_taken_over_after_sigkill(tmp_path):
    path = tmp_path / LOCK_NAME
    code = textwrap.dedent(f"""
        import sys, time
        from cellio.store.lock import LocalLock
        LocalLock({str(path)!r}, "s.zarr", "ingest").acquire()
        print("held", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=ENV, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(StoreLockedError, match=f"pid {proc.pid}"):
            LocalLock(str(path), "s.zarr", "ingest").acquire()
        os.kill(proc.pid, signal.SIGKILL)  # no release: the file stays, the kernel drops the flock
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert path.exists()
    lock = LocalLock(str(path), "s.zarr", "ingest").acquire()
    assert lock.took_over is not None and lock.took_over.pid == proc.pid and not pid_alive(proc.pid)
    lock.release()


def test_a_lock_file_deleted_under_its_holder_is_noticed(tmp_path):
    path = tmp_path / LOCK_NAME
    lock = LocalLock(str(path), "s.zarr", "ingest").acquire()
    path.unlink()
    with pytest.raises(StoreLockedError, match="deleted or replaced"):
        lock.check()
    lock.release()


# ------------------------------------------------------------------------------------------------ object stores
class _NoExclusiveCreate:
    """An fsspec file system without "xb" (conditional create): the lock falls back to write + read-back."""

    def __init__(self, fs):
        self._fs = fs

    def open(self, path, mode="rb", **kw):
        if "x" in mode:
            raise ValueError("mode 'xb' not supported")
        return self._fs.open(path, mode, **kw)

    def __getattr__(self, name):
        return getattr(self._fs, name)


@pytest.mark.parametrize("conditional", [True, False])
def test_object_lock_refuses_a_second_holder_and_heartbeats(conditional):
    import fsspec

    mem = fsspec.filesystem("memory")
    fs = mem if conditional else _NoExclusiveCreate(mem)
    key = f"/locks-{conditional}/s.zarr/{LOCK_NAME}"
    first = ObjectLock(fs, key, "memory://s.zarr", "ingest", ttl=0.6, settle=0.05).acquire()
    assert first.conditional is conditional
    before = json.loads(mem.cat_file(key))["expires"]
    time.sleep(0.5)  # past a heartbeat (ttl / 3), not past the ttl
    assert json.loads(mem.cat_file(key))["expires"] > before
    with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
        ObjectLock(fs, key, "memory://s.zarr", "ingest", ttl=0.6, settle=0.05).acquire()
    first.check()
    first.release()
    assert not mem.exists(key)


def test_object_lock_takes_over_an_expired_or_dead_record_and_notices_a_lost_lock():
    import fsspec

    fs = fsspec.filesystem("memory")
    key = f"/locks-stale/s.zarr/{LOCK_NAME}"
    expired = LockHolder(host="elsewhere", pid=1, started_at="2026-01-01T00:00:00+00:00", purpose="ingest",
                         token="x", expires=time.time() - 1)
    fs.pipe_file(key, json.dumps(expired.to_dict()).encode())
    lock = ObjectLock(fs, key, "memory://s.zarr", "ingest", ttl=30).acquire()
    assert lock.took_over == expired
    lock.release()
    dead = LockHolder(host=socket.gethostname(), pid=_dead_pid(), started_at="2026-01-01T00:00:00+00:00",
                      purpose="ingest", token="y", expires=time.time() + 3600)
    fs.pipe_file(key, json.dumps(dead.to_dict()).encode())
    lock = ObjectLock(fs, key, "memory://s.zarr", "ingest", ttl=0.3).acquire()
    assert lock.took_over == dead
    thief = LockHolder.mine("ingest", ttl=3600)
    fs.pipe_file(key, json.dumps(thief.to_dict()).encode())  # someone overwrote the record
    time.sleep(0.25)
    with pytest.raises(StoreLockedError, match="lost the lock"):
        lock.check()
    lock.release()
    assert json.loads(fs.cat_file(key))["token"] == thief.token  # not ours to delete
    fs.rm(key)


def test_an_ingest_into_a_url_holds_the_object_lock(small_raw):
    url = "memory://lock-test/u.zarr"
    target = FileTarget(url, None)
    with lock_store(target, "ingest"):
        with pytest.raises(StoreLockedError, match="is being written by `cellio ingest`"):
            ingest(small_raw, url, workers=1, progress=False, limit=8)
    assert ingest(small_raw, url, workers=1, progress=False, limit=8).complete
    assert not target.exists(LOCK_NAME)


# ------------------------------------------------------------------------------------------------ ingest
def test_an_ingest_refuses_while_another_holds_the_store_and_deletes_nothing(tmp_path, small_raw):
    from cellio.cli import main

    store = tmp_path / "s.zarr"
    ingest(small_raw, store, workers=1, progress=False, limit=8)
    before = sorted(p.name for p in store.rglob("*"))
    with lock_store(FileTarget(str(store), None), "ingest"):
        with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
            ingest(small_raw, store, workers=1, progress=False, limit=8)
        assert main(["ingest", str(small_raw), str(store), "--workers", "1", "--limit", "8", "--no-progress"]) == 2
    assert sorted(p.name for p in store.rglob("*")) == before
    assert open_store(store).complete


def test_a_stale_marker_in_a_users_directory_deletes_nothing(tmp_path, small_raw):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (mine / "data").mkdir()
    (mine / "data" / "x.csv").write_text("1,2")
    (mine / ".cellio-creating").write_bytes(b"")
    with pytest.raises(StoreError, match=r"\.cellio-creating marker .* files cellio does not write \(data/x.csv, "
                                         r"notes.txt\); nothing was changed"):
        ingest(small_raw, mine, workers=1, progress=False, limit=8)
    assert sorted(str(p.relative_to(mine)) for p in mine.rglob("*")) == [".cellio-creating", "data", "data/x.csv",
                                                                          "notes.txt"]


_RACE = textwrap.dedent("""
    # Two `cellio ingest` processes into one path at the same moment, TRIES times; forked from one warm process
    # so each try costs an ingest, not two interpreter start-ups.
    import json, os, sys, traceback
    from cellio.cli import main

    raw, root, tries = sys.argv[1], sys.argv[2], int(sys.argv[3])
    results = []
    for t in range(tries):
        store = os.path.join(root, f"t{t}.zarr")
        r, w = os.pipe()
        kids = []
        for k in range(2):
            pid = os.fork()
            if pid == 0:
                os.close(w)
                os.read(r, 1)  # both start together
                err = open(os.path.join(root, f"t{t}.{k}.err"), "w")
                os.dup2(err.fileno(), 2)
                os.dup2(err.fileno(), 1)
                try:
                    rc = main(["ingest", raw, store, "--workers", "1", "--batch-size", "4", "--limit", "16",
                               "--no-progress"])
                except BaseException:
                    traceback.print_exc()
                    rc = 99
                sys.stdout.flush(); sys.stderr.flush()
                os._exit(rc)
            kids.append(pid)
        os.close(r)
        os.write(w, b"go")
        os.close(w)
        rcs = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in kids]
        errs = [open(os.path.join(root, f"t{t}.{k}.err")).read() for k in range(2)]
        results.append({"store": store, "rcs": rcs, "errs": errs})
    print(json.dumps(results))
""")


def test_twenty_concurrent_ingest_races_never_break_the_store(tmp_path, small_raw):
    from cellio.store.verify import verify_store

    script = tmp_path / "race.py"
    script.write_text(_RACE)
    out = subprocess.run([sys.executable, str(script), str(small_raw), str(tmp_path), "20"], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(results) == 20
    refused = 0
    for r in results:
        for rc, err in zip(r["rcs"], r["errs"]):
            assert rc in (0, 2), f"{r['store']}: exit {rc}\n{err[-2000:]}"
            if rc == 2:  # the only acceptable failure: the lock, naming its holder
                assert "is being written by `cellio ingest` (pid" in err, err[-2000:]
                refused += 1
        assert 0 in r["rcs"], r  # one of the two always finishes the store
        report = verify_store(r["store"], progress=False, record=False)
        assert report.ok and report.n_checked == open_store(r["store"]).attrs["n_sites"], report.summary()
        assert not os.path.exists(os.path.join(r["store"], LOCK_NAME))
    assert refused > 0  # the race really happened
