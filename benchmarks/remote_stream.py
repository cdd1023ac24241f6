"""Streaming from object storage: the training loader on an s3:// store in random mode (byte ranges) and in stream
mode (whole shards, cellio/loading/streaming.py) against a bulk 16-thread fetch of the store's objects, all from
moto's S3-compatible server in its own process on 127.0.0.1; plus what coalescing a batch's ranges buys.

    python benchmarks/remote_stream.py                       # 320 sites of 128 px, the default store, 3 repeats
    python benchmarks/remote_stream.py --sites 96 --repeats 1   # smoke run

The store is what `cellio ingest` makes by default (lz4, sharded, 32 sites per shard, 128 px tiles). Loader rows:
whole sites, no augmentation (preset "none": x / 255 as float32), batch 32, every site once per epoch
(last_batch="partial"); the default backend and worker count unless --backend / --workers say otherwise. Before
timing, every row's pixels are checked against the local copy of the same store. Rows are timed interleaved
(benchmarks/_common.compare); results in benchmarks/results/remote_stream.{csv,json,png}.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, Case, compare, environment, report  # noqa: E402
from store_read import start_local_server  # noqa: E402

BULK = "bulk fetch, 16 threads (obstore)"


def make_raw(size: int, sites: int) -> Path:
    import cellio

    root = DATA / f"remote-stream-{size}"
    if not (root / "train.csv").exists():
        if root.exists():
            shutil.rmtree(root)
        # 2 sites per well; enough classes for `sites` (one HUVEC train + test experiment, 4 plates each)
        cellio.synthesize(root, classes=max(8, sites // 12), cell_types=("HUVEC",), train_experiments_per_cell_type=1,
                          test_experiments_per_cell_type=1, size=(size, size), seed=0, progress=False)
    return root


def epoch(loader: Any) -> int:
    return sum(len(b["index"]) for b in loader)


def check(loader: Any, local: Any) -> None:
    """One epoch: every site exactly once, pixels equal to the local store's (x / 255)."""
    seen = []
    for b in loader:
        idx = b["index"].numpy()
        want = local.read(idx).astype(np.float32).transpose(0, 3, 1, 2) / 255
        if not np.allclose(b["image"].numpy(), want, atol=1e-6, rtol=0):
            raise SystemExit(f"{loader.read_mode} loader: pixels differ from the local store for sites {idx[:4]}")
        seen += idx.tolist()
    if sorted(seen) != list(range(len(local))):
        raise SystemExit(f"{loader.read_mode} loader: {len(seen)} sites yielded, {len(set(seen))} distinct, "
                         f"expected each of {len(local)} once")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sites", type=int, default=320, help="sites ingested (the first N of the synthetic set)")
    p.add_argument("--size", type=int, default=128, help="site size in pixels (square)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backend", default=None, help="loader backend (default: create_loader's)")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: create_loader's)")
    args = p.parse_args()

    import boto3
    import obstore
    from obstore.store import S3Store

    import cellio

    raw = make_raw(args.size, args.sites)
    local_path = DATA / f"remote-stream-{args.size}-{args.sites}.zarr"
    if not (local_path / "zarr.json").exists():
        cellio.ingest(raw, local_path, workers=1, progress=False, limit=args.sites)
    local = cellio.open_store(local_path)

    proc, endpoint = start_local_server()
    try:
        bucket = "cellio-stream"
        key, secret, region = "bench", "bench", "us-east-1"
        options = {"key": key, "secret": secret, "client_kwargs": {"endpoint_url": endpoint, "region_name": region}}
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                     region_name=region).create_bucket(Bucket=bucket)
        url = f"s3://{bucket}/default.zarr"
        cellio.ingest(raw, url, workers=1, progress=False, limit=args.sites, storage_options=options)
        store = cellio.open_store(url, storage_options=options)
        n, (H, W, C) = len(store), store.image_shape
        print(f"{store!r}\nserver {endpoint}", flush=True)

        ob = S3Store(bucket, config={"access_key_id": key, "secret_access_key": secret, "endpoint": endpoint,
                                     "region": region}, client_options={"allow_http": True})
        objects = [o["path"] for page in obstore.list(ob, prefix="default.zarr/images/") for o in page
                   if not o["path"].endswith("zarr.json")]
        stored = sum(o["size"] for page in obstore.list(ob, prefix="default.zarr/images/") for o in page)
        pool = ThreadPoolExecutor(16)

        def bulk() -> None:
            got = list(pool.map(lambda k: obstore.get(ob, k).bytes(), objects))
            assert sum(len(g) for g in got) > 0

        common = dict(augment="none", crop_size=H, datasets=None, last_batch="partial", device="cpu", seed=0,
                      backend=args.backend, num_workers=args.workers)
        random_mode = cellio.create_loader(store, args.batch, read_mode="random", **common)
        stream_mode = cellio.create_loader(store, args.batch, **common)  # read_mode="auto": the remote default
        stream_w0 = cellio.create_loader(store, args.batch, read_mode="stream",
                                         **{**common, "backend": "torch", "num_workers": 0})
        assert stream_mode.read_mode == "stream", "auto did not pick stream mode for an s3:// training loader"
        for loader in (random_mode, stream_mode, stream_w0):
            check(loader, local)
        print(f"pixels checked: every site once per epoch, equal to the local store ({n} sites)", flush=True)

        # coalescing: batches of 32 consecutive sites (one shard each), the ranges sent as they are or merged
        plain = cellio.open_store(url, storage_options=options)
        plain._reader.fetcher.coalesce_gap = -1
        ordered = [np.arange(k, min(k + args.batch, n)) for k in range(0, n, args.batch)]
        out = np.empty((args.batch, H, W, C), np.uint8)

        def read_ordered(s: Any) -> None:
            for b in ordered:
                s.read(b, out=out[:len(b)])

        desc = f"{store.backend_name if hasattr(store, 'backend_name') else ''}"
        nbytes = n * H * W * C
        cases = [Case(BULK, bulk, items=n, nbytes=nbytes, group="baseline", extra={"stored_bytes": stored}),
                 Case(f"loader random mode ({random_mode.backend}, W={random_mode.num_workers})",
                      lambda: epoch(random_mode), items=n, nbytes=nbytes, group="loader"),
                 Case(f"loader stream mode = auto ({stream_mode.backend}, W={stream_mode.num_workers})",
                      lambda: epoch(stream_mode), items=n, nbytes=nbytes, group="loader"),
                 Case("loader stream mode (torch, W=0)", lambda: epoch(stream_w0), items=n, nbytes=nbytes,
                      group="loader"),
                 Case("store.read, shard-order batches, one request per site", lambda: read_ordered(plain), items=n,
                      nbytes=nbytes, group="coalescing"),
                 Case("store.read, shard-order batches, coalesced", lambda: read_ordered(store), items=n,
                      nbytes=nbytes, group="coalescing")]
        del desc
        results = compare(cases, warmup=1, repeats=args.repeats)
        env = environment(sites=n, size=args.size, batch=args.batch, repeats=args.repeats, objects=len(objects),
                          stored_bytes=stored, server="moto (own process, 127.0.0.1)", store=repr(store),
                          nice=os.nice(0))
        rows = report(results, "remote_stream", baseline=BULK, env=env,
                      title=f"from a local S3 server: {n} sites of {H}x{W}x{C}, the default store "
                            f"({len(objects)} objects, {stored / 1e6:.1f} MB)")
        by = {r["name"]: r for r in rows}
        goal = by[cases[2].name]["ratio"]
        print(f"\ngoal (stream mode, the remote default, >= 0.8x the bulk fetch): {goal:.2f}x "
              f"({'met' if goal >= 0.8 else 'NOT met'}); stream / random: "
              f"{by[cases[2].name]['sites_per_s'] / by[cases[1].name]['sites_per_s']:.2f}x")
        pool.shutdown()
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
