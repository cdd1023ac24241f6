"""Streaming from object storage: the training loader on an s3:// store in random mode (byte ranges) and in stream
mode (whole shards, cellio/loading/streaming.py) against a bulk 16-thread fetch of the store's objects, all from
moto's S3-compatible server in its own process on 127.0.0.1; plus what coalescing a batch's ranges buys.

    python benchmarks/remote_stream.py                          # 288 sites of 128 px, the default store
    python benchmarks/remote_stream.py --sites 96 --repeats 1   # smoke run

The store is what `cellio ingest` makes by default (lz4, sharded, 32 sites per shard, 128 px tiles). Loader rows:
whole sites, no augmentation (preset "none": x / 255 as float32), batch 32, every site once per epoch
(last_batch="partial"), the default backend and worker count (--backend / --workers override). Every row runs in
its own spawned process, as a training script would: obstore's runtime does not survive fork, so a parent that
had used it would push its forked loader workers onto fsspec (cellio/store/remote.py). Each loader row's warm-up
epoch checks every site once and its pixels against the local copy of the store. Rows are timed interleaved
(A B C, A B C, ...), medians reported; results in benchmarks/results/remote_stream.{csv,json,png}. Each row process
runs torch with one intra-op thread (see _serve). `--tag` names the output files (remote_stream_<tag>.*).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, Result, environment, report  # noqa: E402

BULK = "bulk fetch, 16 threads (obstore)"
ROWS = ("bulk", "stream_read", "random", "stream", "stream_w0", "ranges_each", "ranges_get_ranges",
        "ranges_coalesced")


def make_raw(size: int, sites: int) -> Path:
    import shutil

    import cellio

    classes = max(8, -(-sites // 21) * 4)  # a multiple of 4 (plate groups); ~5.4 sites per class here
    root = DATA / f"remote-stream-{size}-c{classes}"
    if not (root / "train.csv").exists():
        if root.exists():
            shutil.rmtree(root)
        cellio.synthesize(root, classes=classes, cell_types=("HUVEC",), train_experiments_per_cell_type=1,
                          test_experiments_per_cell_type=1, size=(size, size), seed=0, progress=False)
    return root


def start_server() -> tuple[Any, str]:
    from store_read import start_local_server

    return start_local_server()


# ------------------------------------------------------------------------------------------ one row, one process
def _setup(row: str, cfg: dict[str, Any]) -> tuple[Any, str]:
    """The row's work as a callable, and its name. Runs in the row's own process."""
    import cellio

    url, options, batch = cfg["url"], cfg["options"], cfg["batch"]
    store = cellio.open_store(url, storage_options=options)
    local = cellio.open_store(cfg["local"])
    n, (H, W, C) = len(store), store.image_shape
    if row == "bulk":
        from concurrent.futures import ThreadPoolExecutor

        import obstore
        from obstore.store import S3Store

        client = cfg["client"]
        ob = S3Store(cfg["bucket"], config=client, client_options={"allow_http": True})
        objects = [o["path"] for page in obstore.list(ob, prefix=cfg["prefix"] + "/images/") for o in page
                   if not o["path"].endswith("zarr.json")]
        pool = ThreadPoolExecutor(16)

        def bulk() -> int:
            return sum(len(g) for g in pool.map(lambda k: obstore.get(ob, k).bytes(), objects))
        return bulk, BULK
    if row == "stream_read":  # stream mode's reads alone: whole shards 4 at a time, decoded to uint8 batches
        units = store.stream_units(np.arange(n))
        windows = np.array_split(np.unique(units), max(1, -(-len(np.unique(units)) // 4)))
        out = np.empty((batch, H, W, C), np.uint8)

        def stream_read() -> int:
            for w in windows:
                fetched = store.fetch_units(w.tolist())
                rows_ = np.flatnonzero(np.isin(units, w))
                for k in range(0, len(rows_), batch):
                    part = rows_[k:k + batch]
                    store.read_fetched(fetched, part, out=out[:len(part)])
            return n
        return stream_read, "stream reads only (whole shards, decoded; no loader)"
    if row in ("random", "stream", "stream_w0"):
        common = dict(augment="none", crop_size=H, datasets=None, last_batch="partial", device="cpu", seed=0,
                      backend=cfg["backend"], num_workers=cfg["workers"])
        if row == "random":
            loader = cellio.create_loader(store, batch, read_mode="random", **common)
        elif row == "stream":  # read_mode="auto": what a training loader on an s3:// store does by default
            loader = cellio.create_loader(store, batch, **common)
            assert loader.read_mode == "stream", "auto did not pick stream mode for an s3:// training loader"
        else:
            loader = cellio.create_loader(store, batch, read_mode="stream",
                                          **{**common, "backend": "torch", "num_workers": 0})
        seen: list[int] = []
        for b in loader:  # the check epoch (also the warm-up)
            idx = b["index"].numpy()
            want = local.read(idx).astype(np.float32).transpose(0, 3, 1, 2) / 255
            if not np.allclose(b["image"].numpy(), want, atol=1e-6, rtol=0):
                raise RuntimeError(f"{row}: pixels differ from the local store for sites {idx[:4]}")
            seen += idx.tolist()
        if sorted(seen) != list(range(n)):
            raise RuntimeError(f"{row}: {len(seen)} sites yielded, {len(set(seen))} distinct, expected {n} once")

        def epoch() -> int:
            return sum(len(b["index"]) for b in loader)
        name = {"random": f"loader random mode ({loader.backend}, W={loader.num_workers})",
                "stream": f"loader stream mode = auto ({loader.backend}, W={loader.num_workers})",
                "stream_w0": "loader stream mode (torch, W=0)"}[row]
        return epoch, name
    # coalescing: the byte ranges of batches of `batch` consecutive sites (one shard each), bytes only, no decode
    import asyncio

    import obstore
    from store_read import remote_ranges

    fetcher = store._reader.fetcher
    assert type(fetcher).__name__ == "ObstoreFetcher", type(fetcher).__name__
    store.read(np.arange(n))  # every shard index cached, as in a running loader
    ranges = [remote_ranges(store, np.arange(k, min(k + batch, n)), None) for k in range(0, n, batch)]
    if row == "ranges_get_ranges":
        client, prefix = fetcher._client(), cfg["bucket"] + "/"

        async def one(reqs: list[Any]) -> None:
            by: dict[str, list[tuple[int, int]]] = {}
            for k, s0, e0 in reqs:
                by.setdefault(k[len(prefix):], []).append((s0, e0))
            await asyncio.gather(*(obstore.get_ranges_async(client, path, starts=[r[0] for r in rs],
                                                            ends=[r[1] for r in rs]) for path, rs in by.items()))

        def get_ranges() -> int:
            for reqs in ranges:
                asyncio.run(one(reqs))
            return n
        return get_ranges, "ranges of shard-order batches, obstore get_ranges"
    fetcher.coalesce_gap = -1 if row == "ranges_each" else 1 << 20

    def fetch_ranges() -> int:
        for reqs in ranges:
            fetcher.fetch(reqs)
        return n
    return fetch_ranges, ("ranges of shard-order batches, one GET each" if row == "ranges_each"
                          else "ranges of shard-order batches, cellio coalesced")


def _serve(conn: Any, row: str, cfg: dict[str, Any], repo: str) -> None:
    sys.path[:0] = [repo, str(Path(repo) / "benchmarks")]
    mp.set_start_method("fork", force=True)  # the row's loader forks its workers, as from a shell script
    import torch

    # one intra-op thread: on this loaded 2-core VM a 2-thread torch.stack of one batch took 0.5 s (the OpenMP
    # barrier waits for a thread the scheduler does not run) against 2 ms with one thread
    torch.set_num_threads(1)
    try:
        fn, name = _setup(row, cfg)
        conn.send({"ok": True, "name": name})
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    while conn.recv() == "run":  # (EOFError when the parent is gone: the row ends)
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        conn.send({"ok": True, "seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0})


class Row:
    def __init__(self, row: str, cfg: dict[str, Any]):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, row, cfg, str(Path(__file__).resolve().parents[1])))
        self.proc.start()
        reply = self.conn.recv()
        if not reply["ok"]:
            raise SystemExit(f"row {row}: {reply['error']}")
        self.name = reply["name"]

    def run(self) -> tuple[float, float]:
        self.conn.send("run")
        reply = self.conn.recv()
        return reply["seconds"], reply["cpu"]

    def close(self) -> None:
        self.conn.send("stop")
        self.proc.join(60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sites", type=int, default=288, help="sites ingested (the first N of the synthetic set)")
    p.add_argument("--size", type=int, default=128, help="site size in pixels (square)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backend", default=None, help="loader backend (default: create_loader's)")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: create_loader's)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {','.join(ROWS)}")
    p.add_argument("--tag", default="", help="suffix of the result files")
    args = p.parse_args()

    import signal

    import boto3

    import cellio

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # killed: still stop the server and the rows (finally)
    raw = make_raw(args.size, args.sites)
    local_path = raw.with_name(f"{raw.name}-{args.sites}.zarr")
    if not (local_path / "zarr.json").exists():
        cellio.ingest(raw, local_path, workers=1, progress=False, limit=args.sites)
    proc, endpoint = start_server()
    rows: list[Row] = []
    try:
        bucket, prefix = "cellio-stream", "default.zarr"
        key, secret, region = "bench", "bench", "us-east-1"
        options = {"key": key, "secret": secret, "client_kwargs": {"endpoint_url": endpoint, "region_name": region}}
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                     region_name=region).create_bucket(Bucket=bucket)
        url = f"s3://{bucket}/{prefix}"
        cellio.ingest(raw, url, workers=1, progress=False, limit=args.sites, storage_options=options)
        store = cellio.open_store(url, storage_options=options)
        n, (H, W, C) = len(store), store.image_shape
        if n < args.sites:
            raise SystemExit(f"{raw}: only {n} sites, --sites {args.sites} asked for")
        fs = store._fs
        objects = [k for k in fs.find(f"{bucket}/{prefix}/images") if not k.endswith("zarr.json")]
        stored = sum(fs.size(k) for k in objects)
        print(f"{store!r}\n{len(objects)} objects, {stored / 1e6:.1f} MB; server {endpoint}", flush=True)
        cfg = {"url": url, "options": options, "local": str(local_path), "batch": args.batch, "bucket": bucket,
               "prefix": prefix, "backend": args.backend, "workers": args.workers,
               "client": {"access_key_id": key, "secret_access_key": secret, "endpoint": endpoint,
                          "region": region}}
        for row in args.rows.split(","):
            rows.append(Row(row, cfg))  # set up (and, for loaders, checked) one after another
            print(f"  ready: {rows[-1].name}", flush=True)
        for r in rows:  # warm-up
            r.run()
        times: list[list[float]] = [[] for _ in rows]
        cpu: list[list[float]] = [[] for _ in rows]
        for _ in range(args.repeats):
            for k, r in enumerate(rows):
                s, c = r.run()
                times[k].append(s)
                cpu[k].append(c)
        group = {BULK: "baseline"}
        results = [Result(r.name, n, n * H * W * C, t, group.get(r.name, "loader" if "loader" in r.name
                                                                      else "coalescing (bytes only)"), {}, c)
                   for r, t, c in zip(rows, times, cpu)]
        env = environment(sites=n, size=args.size, batch=args.batch, repeats=args.repeats, objects=len(objects),
                          stored_bytes=stored, server="moto (own process, 127.0.0.1)", store=repr(store),
                          nice=os.nice(0), note="cpu_ms_per_site: the row process only (loader workers not counted)")
        out = report(results, "remote_stream" + (f"_{args.tag}" if args.tag else ""), baseline=BULK, env=env,
                     title=f"from a local S3 server: {n} sites of {H}x{W}x{C}, the default store "
                           f"({len(objects)} objects, {stored / 1e6:.1f} MB)")
        by = {r["name"]: r for r in out}
        stream = next((r for r in out if r["name"].startswith("loader stream mode = auto")), None)
        random_ = next((r for r in out if r["name"].startswith("loader random mode")), None)
        if stream is not None and BULK in by:
            print(f"\ngoal: the training loader in its remote default (stream) >= 0.8x the bulk fetch: "
                  f"{stream['ratio']:.2f}x ({'met' if stream['ratio'] >= 0.8 else 'NOT met'})"
                  + (f"; stream / random mode: {stream['sites_per_s'] / random_['sites_per_s']:.2f}x"
                     if random_ else ""))
    finally:
        for r in rows:
            try:
                r.close()
            except (OSError, EOFError):
                pass
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
