"""The store on object storage: a real S3-compatible server (moto's standalone server on 127.0.0.1, started and
stopped by a session fixture) that ingest writes to and every reader reads from, killed mid-read and mid-ingest.

Nothing here reaches the network: the server listens on 127.0.0.1 only, with made-up credentials.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import cellio
from cellio.errors import RemoteStoreError, StoreError, StoreIncompleteError
from cellio.ingestion import ingest
from cellio.store import RetryPolicy, open_store

pytest.importorskip("moto.server", reason="needs moto[server] (pip install -e '.[test]')")
pytest.importorskip("s3fs", reason="needs s3fs")

BUCKET = "cellio-test"
LIMIT = 45                        # sites per store: 6 shards of 8 (the last one partial)
SHARDED = dict(layout="sharded", sites_per_shard=8, tile=(8, 4))  # 17x11 sites: 3x3 tiles, edge tiles padded
FAST_FAIL = RetryPolicy(attempts=2, backoff=0.05)


class _Front:
    """A TCP front for the server that can be killed like a server process: the listening socket closes and every
    open connection is reset (a stopped werkzeug server would keep serving its keep-alive connections), then it
    starts again on the same port. moto keeps its objects meanwhile, so a restarted server serves the same data."""

    def __init__(self, backend_port: int):
        self.backend = backend_port
        self.port = 0
        self.sock: Any = None
        self.conns: set[Any] = set()
        self.lock = threading.Lock()

    def start(self) -> None:
        import socket

        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        self.sock = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _accept(self, sock: Any) -> None:
        import socket

        while True:
            try:
                client, _ = sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.backend))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: Any, b: Any) -> None:
        try:
            while data := a.recv(1 << 16):
                b.sendall(data)
        except OSError:
            pass
        finally:
            self._close(a, b)

    def _close(self, *socks: Any) -> None:
        import socket

        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
            with self.lock:
                self.conns.discard(s)

    def kill(self) -> None:
        self._close(self.sock)
        with self.lock:
            conns = list(self.conns)
        self._close(*conns)


@dataclass
class Server:
    endpoint: str
    env: dict[str, str]
    options: dict[str, Any]         # fsspec storage_options (credentials and endpoint)
    front: _Front
    server: Any

    def stop(self) -> None:
        """Kill the server as its clients see it: connections refused, open ones reset."""
        self.front.kill()

    def start(self) -> None:
        self.front.start()

    def url(self, name: str) -> str:
        return f"s3://{BUCKET}/{name}"


def _options(endpoint: str) -> dict[str, Any]:
    # botocore's own retries off: cellio's RetryPolicy is what is tested; short timeouts so a dead server fails fast
    return {"key": "testing", "secret": "testing",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2, "read_timeout": 10}}


@pytest.fixture(scope="session")
def s3():
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    front = _Front(server.get_host_and_port()[1])
    front.start()
    endpoint = f"http://127.0.0.1:{front.port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true",
           "AWS_MAX_ATTEMPTS": "1"}
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket=BUCKET)
    srv = Server(endpoint, env, _options(endpoint), front, server)
    yield srv
    front.kill()
    server.stop()


@pytest.fixture(scope="session")
def s3_stores(s3, tiny_raw):
    """The tiny set's first LIMIT sites ingested into the server, lz4, in both layouts: {layout: url}."""
    urls = {}
    for layout, kw in (("chunked", dict(layout="chunked")), ("sharded", SHARDED)):
        url = s3.url(f"{layout}.zarr")
        ingest(tiny_raw, url, codec="lz4", workers=1, progress=False, limit=LIMIT, storage_options=s3.options,
               batch_size=8, **kw)
        urls[layout] = url
    return urls


def _objects(s3: Server, url: str) -> dict[str, bytes]:
    """Every object of a store (relative key -> bytes), created_at removed from the root document."""
    import json

    import s3fs

    fs = s3fs.S3FileSystem(**s3.options, skip_instance_cache=True)
    root = url[len("s3://"):]
    out = {}
    for key in fs.find(root):
        data = fs.cat_file(key)
        rel = key[len(root) + 1:]
        if rel == "zarr.json":
            node = json.loads(data)
            node["attributes"].pop("created_at")
            data = json.dumps(node, sort_keys=True).encode()
        out[rel] = data
    return out


# ----------------------------------------------------------------------------------------------- reading
@pytest.mark.parametrize("layout,client", [("chunked", "auto"), ("sharded", "auto"), ("sharded", "fsspec")])
def test_reads_from_the_server_equal_the_local_store(s3, s3_stores, tiny_store, layout, client):
    s = open_store(s3_stores[layout], storage_options=s3.options, client=client)
    assert len(s) == LIMIT and s._mode == "remote" and s.image_layout == layout
    assert type(s._fetcher).__name__ == ("RangeFetcher" if client == "fsspec" else "ObstoreFetcher")
    idx = np.random.default_rng(3).permutation(LIMIT)[:19]
    np.testing.assert_array_equal(s.read(idx), tiny_store.read(idx))  # one batch: every range in one fetch
    crops = np.stack([np.random.default_rng(4).integers(0, 17 - 9 + 1, len(idx)),
                      np.random.default_rng(5).integers(0, 11 - 5 + 1, len(idx)),
                      np.full(len(idx), 9), np.full(len(idx), 5)], 1)
    np.testing.assert_array_equal(s.read(idx, crop=crops), tiny_store.read(idx, crop=crops))
    two_views = [(0, 0, 9, 5), (8, 6, 9, 5)]  # one site twice in a batch, two windows (TTA does this)
    np.testing.assert_array_equal(s.read([5, 5], crop=two_views), tiny_store.read([5, 5], crop=two_views))
    np.testing.assert_array_equal(s.channel_stats("site")[0], tiny_store.channel_stats("site")[0][:LIMIT])
    assert s.sites["id_code"].tolist() == tiny_store.sites["id_code"].iloc[:LIMIT].tolist()
    # the store pickles by URL and options (a DALI or DataLoader worker reopens it with its own client)
    import pickle

    again = pickle.loads(pickle.dumps(s))
    np.testing.assert_array_equal(again.read([44, 0]), tiny_store.read([44, 0]))


def test_zarr_python_and_tensorstore_read_the_server_stores(s3, s3_stores, tiny_store, monkeypatch):
    import tensorstore as ts
    import zarr

    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    for layout, url in s3_stores.items():
        z = zarr.open_array(url + "/images", mode="r", storage_options=s3.options)
        np.testing.assert_array_equal(z[7], tiny_store.read_one(7))
        t = ts.open({"driver": "zarr3", "kvstore": {"driver": "s3", "bucket": BUCKET, "path": f"{layout}.zarr/images/",
                                                    "endpoint": s3.endpoint, "aws_region": "us-east-1"}}).result()
        np.testing.assert_array_equal(t[40].read().result(), tiny_store.read_one(40))


@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=pytest.mark.skipif(
    not __import__("cellio").dali_available(), reason="needs nvidia-dali"))])
def test_loader_from_the_server_every_site_once_over_three_ranks(s3, s3_stores, tiny_store, backend):
    store = open_store(s3_stores["sharded"], storage_options=s3.options)
    train = np.flatnonzero((store.sites["dataset"] == "train").to_numpy())
    seen = []
    for rank in range(3):
        loader = cellio.create_loader(store, 4, backend=backend, device="cpu", num_workers=0, crop_size=7,
                                      rank=rank, world_size=3, last_batch="partial", seed=2)
        batches = list(loader)
        seen += [int(i) for b in batches for i in b["index"]]
    assert sorted(seen) == train.tolist()  # exactly once; LIMIT sites over 3 ranks leaves uneven tails


# ----------------------------------------------------------------------------------------------- failures
def test_bad_urls_and_parameters_fail_naming_them(s3, tmp_path):
    with pytest.raises(StoreError, match=f"s3://{BUCKET}/no-such.zarr"):
        open_store(s3.url("no-such.zarr"), storage_options=s3.options)
    with pytest.raises(StoreError, match="s3://no-such-bucket-cellio/x.zarr"):
        open_store("s3://no-such-bucket-cellio/x.zarr", storage_options=s3.options)
    with pytest.raises(StoreError, match="client 'boto' is unknown"):
        open_store(s3.url("chunked.zarr"), storage_options=s3.options, client="boto")
    dead = _options("http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(RemoteStoreError, match="s3://cellio-test/chunked.zarr.*endpoint") as info:
        open_store(s3.url("chunked.zarr"), storage_options=dead)
    assert "testing" not in str(info.value)  # never a credential in a message


def test_a_server_killed_mid_read_gives_a_named_error_and_the_read_works_once_it_is_back(s3, s3_stores,
                                                                                         tiny_store):
    s = open_store(s3_stores["sharded"], storage_options=s3.options, retry=FAST_FAIL)
    s.read([1, 2])  # indexes of the first shard cached: the next read fetches tiles only
    s3.stop()
    try:
        with pytest.raises(RemoteStoreError, match=r"s3://cellio-test/sharded.zarr/images/c/\d+/0/0/0: the object "
                                                   r"store did not answer after 2 attempts") as info:
            s.read([3, 30, 11])
        assert info.value.attempts == 2 and info.value.url.startswith("s3://cellio-test/sharded.zarr/")
    finally:
        s3.start()
    np.testing.assert_array_equal(s.read([3, 30, 11]), tiny_store.read([3, 30, 11]))


def test_a_transient_outage_is_retried_with_backoff(s3, s3_stores, tiny_store, caplog):
    s = open_store(s3_stores["chunked"], storage_options=s3.options,
                   retry=RetryPolicy(attempts=8, backoff=0.2, max_backoff=1.0))
    s3.stop()
    timer = threading.Timer(0.8, s3.start)  # the server comes back while the reader is still retrying
    timer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="cellio.store.remote"):
            got = s.read([5, 6, 7, 40])
    finally:
        timer.join()
    np.testing.assert_array_equal(got, tiny_store.read([5, 6, 7, 40]))
    assert any("retrying" in r.getMessage() for r in caplog.records)


def _ingest_cmd(raw: Any, url: str, per_shard: int) -> list[str]:
    return [sys.executable, "-m", "cellio", "ingest", str(raw), url, "--codec", "lz4", "--layout", "sharded",
            "--sites-per-shard", str(per_shard), "--tile", "8", "--limit", str(LIMIT), "--workers", "1",
            "--no-progress"]


def _journal_count(s3: Server, url: str) -> int:
    import s3fs

    fs = s3fs.S3FileSystem(**s3.options, skip_instance_cache=True)
    try:
        return len(fs.ls(url[len("s3://"):] + "/.cellio-journal", refresh=True))
    except (FileNotFoundError, OSError):
        return 0


def _env(s3: Server) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), **s3.env)


def test_sigkill_mid_ingest_into_the_server_resumes_to_the_clean_store(s3, s3_stores, tiny_raw):
    url = s3.url("killed.zarr")
    # 2 sites per shard: 23 shards, each a put and a journal record, so the kill lands part way
    proc = subprocess.Popen(_ingest_cmd(tiny_raw, url, 2), env=_env(s3), start_new_session=True,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and _journal_count(s3, url) < 2:
        time.sleep(0.05)
    assert proc.poll() is None, "the ingest finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with pytest.raises(StoreIncompleteError):
        open_store(url, storage_options=s3.options)
    # the killed process's lock record names a dead pid on this host: the rerun takes it over and resumes
    report = ingest(tiny_raw, url, codec="lz4", workers=1, progress=False, limit=LIMIT, storage_options=s3.options,
                    layout="sharded", sites_per_shard=2, tile=8)
    assert report.complete and 0 < report.n_written < LIMIT
    clean = s3.url("clean.zarr")
    ingest(tiny_raw, clean, codec="lz4", workers=1, progress=False, limit=LIMIT, storage_options=s3.options,
           layout="sharded", sites_per_shard=2, tile=8)
    a, b = _objects(s3, clean), _objects(s3, url)
    assert sorted(a) == sorted(b) and [k for k in a if a[k] != b[k]] == []


def test_a_server_killed_mid_ingest_gives_a_named_error_and_the_rerun_finishes(s3, tiny_raw, s3_stores):
    url = s3.url("outage.zarr")
    proc = subprocess.Popen(_ingest_cmd(tiny_raw, url, 2), env=_env(s3), start_new_session=True,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and _journal_count(s3, url) < 1:
        time.sleep(0.05)
    assert proc.poll() is None, "the ingest finished before the server could be stopped"
    s3.stop()
    try:
        _, err = proc.communicate(timeout=90)
    finally:
        s3.start()
    assert proc.returncode == 2, err
    last = err.strip().splitlines()[-1]  # (aiohttp may log its own connection tracebacks above it)
    assert last.startswith("cellio ingest: error: s3://cellio-test/outage.zarr/") and "did not answer" in last, err
    report = ingest(tiny_raw, url, codec="lz4", workers=1, progress=False, limit=LIMIT, storage_options=s3.options,
                    layout="sharded", sites_per_shard=2, tile=8)
    assert report.complete and report.n_ok == LIMIT and 0 < report.n_written < LIMIT
    assert cellio.verify_store(url, storage_options=s3.options, progress=False, record=False).ok


def test_cli_ingest_inspect_verify_show_on_a_url(s3, tiny_raw, tmp_path, monkeypatch, capsys):
    from cellio.cli import main

    for k, v in s3.env.items():  # the CLI takes credentials and the endpoint from the environment
        monkeypatch.setenv(k, v)
    url = s3.url("cli.zarr")
    assert main(["ingest", str(tiny_raw), url, "--limit", "11", "--workers", "1", "--no-progress",
                 "--sites-per-shard", "4"]) == 0
    assert main(["inspect", url]) == 0
    out = capsys.readouterr().out
    assert "sharded: 4 sites per shard" in out and "11 of 11 sites stored" in out
    assert main(["verify", url]) == 0
    assert "OK: no damage found" in capsys.readouterr().out
    s = open_store(url)
    png = tmp_path / "site.png"
    assert main(["show", url, s.sites["id_code"].iloc[3], "--site", str(int(s.sites["site"].iloc[3])),
                 "-o", str(png)]) == 0
    assert png.stat().st_size > 0


def test_ingest_on_dask_workers_into_the_server_gives_the_same_store(s3, s3_stores, tiny_raw):
    distributed = pytest.importorskip("distributed")
    url = s3.url("dask.zarr")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None,
                                  silence_logs=40) as cluster:
        report = ingest(tiny_raw, url, codec="lz4", workers=1, progress=False, limit=LIMIT, batch_size=8,
                        storage_options=s3.options, scheduler=cluster.scheduler_address, **SHARDED)
    assert report.complete
    a, b = _objects(s3, s3_stores["sharded"]), _objects(s3, url)
    assert sorted(a) == sorted(b) and [k for k in a if a[k] != b[k]] == []
