"""Shuffled batch reads of 512x512x6 sites, side by side: PNG (PIL, cv2), per-site .npy, raw chunk files,
zarr-python, tensorstore and the cellio reader for each codec, with and without crc32c verification (format 1.1
stores checksum every chunk; `open_store(verify=False)` skips the check). Target P1: cellio (uncompressed)
>= 0.8x raw files, reported for both.

    python benchmarks/store_read.py                      # >= 200 sites at 512x512, made with cellio.synthesize
    python benchmarks/store_read.py --classes 8 --size 128 --repeats 2   # quick smoke run
    python benchmarks/store_read.py --url --repeats 3    # object storage: a local S3-compatible server (moto)

Data lives in benchmarks/data/ (git-ignored); results in benchmarks/results/store_read.{csv,json,png}.
Page cache is warm (every method reads everything once untimed), order is one fixed shuffle, batches of --batch.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, Case, compare, environment, report  # noqa: E402

BASELINE = "raw chunk file (open/read/frombuffer)"


def make_data(args: argparse.Namespace) -> tuple[Path, Path]:
    import cellio

    root = DATA / f"rxrx1-{args.size}-c{args.classes}"
    if not (root / "train.csv").exists():
        print(f"synthesizing {root} ...", flush=True)
        if root.exists():
            shutil.rmtree(root)
        cellio.synthesize(root, classes=args.classes, cell_types=("HUVEC",), train_experiments_per_cell_type=1,
                          test_experiments_per_cell_type=1, size=(args.size, args.size), seed=0, workers=args.workers,
                          progress=False)
    stores = root.with_name(root.name + "-stores")
    for codec in ("none", "lz4", "zstd"):
        path = stores / f"{codec}.zarr"
        old = cellio.open_store(path, allow_incomplete=True) if (path / "zarr.json").exists() else None
        if old is None or not old.complete or not old.checksums or old.image_layout != "chunked":
            # missing, unfinished, written by an older cellio (format 1.0: no checksums to measure), or sharded:
            # the local rows compare readers of one chunk file per site (the remote rows cover both layouts)
            print(f"ingesting {path} ...", flush=True)
            if path.exists():
                shutil.rmtree(path)
            cellio.ingest(root, path, codec=codec, workers=args.workers, progress=False, layout="chunked")
    return root, stores


def chunk_nbytes(store_path: Path) -> int:
    return sum(f.stat().st_size for f in (store_path / "images").rglob("*") if f.is_file() and f.name != "zarr.json")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512, help="site height = width")
    p.add_argument("--classes", type=int, default=32, help="synth classes (32 -> 208 sites)")
    p.add_argument("--batch", type=int, default=32, help="sites per batch read")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up passes")
    p.add_argument("--png-sites", type=int, default=48, help="sites per repeat for the slow PNG decoders")
    p.add_argument("--crop", type=int, default=224, help="crop size for the crop-read rows (0: skip)")
    p.add_argument("--workers", type=int, default=2, help="processes for synth/ingest of missing data")
    p.add_argument("--url", nargs="?", const="local", default=None,
                   help="remote rows instead: 'local' starts an S3-compatible server (moto) on 127.0.0.1; or an "
                        "s3://bucket/prefix (endpoint and credentials from AWS_*)")
    p.add_argument("--url-sites", type=int, default=96, help="sites per remote store (the first N of the set)")
    p.add_argument("--url-zarr-sites", type=int, default=32, help="sites per repeat for the slow zarr-python rows")
    p.add_argument("--url-stores", default=",".join(REMOTE_STORES),
                   help=f"comma list of remote stores from {tuple(REMOTE_STORES)}")
    args = p.parse_args()
    if args.url:
        remote_main(args)
        return

    import cellio
    from cellio.schema import PATH_COLUMNS

    raw, stores = make_data(args)
    ref = cellio.open_store(stores / "none.zarr")
    n = len(ref)
    H, W, C = ref.image_shape
    site_bytes = H * W * C
    order = np.random.default_rng(0).permutation(n)
    batches = [order[k:k + args.batch] for k in range(0, n, args.batch)]
    total = n * site_bytes
    print(f"{n} sites of {H}x{W}x{C} uint8 ({total / 1e6:.0f} MB), batches of {args.batch}, shuffled")

    # per-site .npy files (one (H, W, 6) array per file: a common way to keep RxRx1 sites)
    npy = stores / "npy"
    if not (npy / f"{n - 1}.npy").exists():
        npy.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            np.save(npy / f"{i}.npy", ref.read_one(i))
    chunk_paths = [ref._chunk_path(int(i)) for i in range(n)]
    cases: list[Case] = []

    # the chunk file holds the pixels then a 4-byte crc32c: the baseline reads the file, uses the pixels
    def raw_files() -> None:
        for b in batches:
            for i in b:
                with open(chunk_paths[i], "rb") as f:
                    np.frombuffer(f.read(), np.uint8, count=site_bytes).reshape(H, W, C)
    cases.append(Case(BASELINE, raw_files, n, total, "baseline"))

    def raw_files_stacked() -> None:
        out = np.empty((args.batch, H, W, C), np.uint8)
        for b in batches:
            for k, i in enumerate(b):
                with open(chunk_paths[i], "rb") as f:
                    out[k] = np.frombuffer(f.read(), np.uint8, count=site_bytes).reshape(H, W, C)
    cases.append(Case("raw chunk file, copied into a batch", raw_files_stacked, n, total, "baseline"))

    def npy_files() -> None:
        for b in batches:
            for i in b:
                np.load(npy / f"{i}.npy")
    cases.append(Case("per-site .npy (np.load)", npy_files, n, total, "baseline"))

    png_idx = order[:min(args.png_sites, n)]
    paths = ref.sites[list(PATH_COLUMNS)].to_numpy()

    def pil_png() -> None:
        from PIL import Image

        for i in png_idx:
            np.stack([np.asarray(Image.open(raw / q)) for q in paths[i]], axis=-1)
    cases.append(Case("PNG, PIL", pil_png, len(png_idx), len(png_idx) * site_bytes, "baseline"))

    def cv2_png() -> None:
        import cv2

        cv2.setNumThreads(1)
        for i in png_idx:
            np.stack([cv2.imread(str(raw / q), cv2.IMREAD_UNCHANGED) for q in paths[i]], axis=-1)
    cases.append(Case("PNG, cv2", cv2_png, len(png_idx), len(png_idx) * site_bytes, "baseline"))

    import zarr

    for codec in ("none", "lz4"):
        z = zarr.open_array(stores / f"{codec}.zarr" / "images", mode="r")

        def zarr_read(z=z) -> None:
            for b in batches:
                np.stack([z[int(i)] for i in b])
        cases.append(Case(f"zarr-python z[i], {codec}", zarr_read, n, total, "zarr-python"))

    import tensorstore as ts

    for codec in ("none", "lz4"):
        t = ts.open({"driver": "zarr3", "kvstore": {"driver": "file",
                                                    "path": str(stores / f"{codec}.zarr" / "images")}}).result()

        def ts_read(t=t) -> None:
            for b in batches:
                futs = [t[int(i)].read() for i in b]
                np.stack([f.result() for f in futs])
        cases.append(Case(f"tensorstore, {args.batch} futures, {codec}", ts_read, n, total, "tensorstore"))

    out = np.empty((args.batch, H, W, C), np.uint8)  # a loader reuses its batch buffers: no page faults per batch
    for codec in ("none", "lz4", "zstd"):
        for threads, verify in ((None, True), (None, False), (1, True), (1, False)):
            s = cellio.open_store(stores / f"{codec}.zarr", threads=threads, verify=verify)

            def cellio_read(s=s) -> None:
                for b in batches:
                    s.read(b, out=out[:len(b)])
            label = f"cellio {codec}" + (", 1 thread" if threads == 1 else "") + \
                (" (verify)" if verify else " (no verify)")
            cases.append(Case(label, cellio_read, n, total, "cellio" if verify else "cellio, no verify",
                              {"codec": codec, "threads": s._threads, "verify": verify,
                               "stored_bytes": chunk_nbytes(stores / f"{codec}.zarr")}))
    s_none = cellio.open_store(stores / "none.zarr")

    def cellio_alloc() -> None:
        for b in batches:
            s_none.read(b)
    cases.append(Case("cellio none, new array per batch", cellio_alloc, n, total, "cellio"))
    if args.crop and args.crop < H:
        c = args.crop
        rng = np.random.default_rng(1)
        crops = [np.stack([rng.integers(0, H - c + 1, len(b)), rng.integers(0, W - c + 1, len(b)),
                           np.full(len(b), c), np.full(len(b), c)], 1) for b in batches]
        cout = np.empty((args.batch, c, c, C), np.uint8)
        for codec in ("none", "lz4"):
            for verify in (True, False):  # verify reads whole uncompressed chunks; no verify only the crop's rows
                s = cellio.open_store(stores / f"{codec}.zarr", verify=verify)

                def cellio_crop(s=s) -> None:
                    for b, cr in zip(batches, crops):
                        s.read(b, crop=cr, out=cout[:len(b)])
                cases.append(Case(f"cellio {codec}, {c}x{c} random crops" + (" (verify)" if verify else
                                                                              " (no verify)"),
                                  cellio_crop, n, n * c * c * C, "cellio crop", {"verify": verify}))
    results = compare(cases, warmup=args.warmup, repeats=args.repeats)

    sizes = {codec: chunk_nbytes(stores / f"{codec}.zarr") / total for codec in ("none", "lz4", "zstd")}
    png_bytes = sum(os.path.getsize(raw / q) for row in paths for q in row) / total
    print("\nsize on disk relative to raw uint8: " + ", ".join(f"{k} {v:.3f}" for k, v in sizes.items())
          + f", PNG {png_bytes:.3f}")
    env = environment(sites=n, site_shape=[H, W, C], batch=args.batch, repeats=args.repeats, warmup=args.warmup,
                      size_ratio=sizes, png_size_ratio=png_bytes, reader_threads=ref._threads)
    rows = report(results, "store_read", baseline=BASELINE, env=env,
                  title=f"shuffled batch reads of {n} {H}x{W}x{C} sites (batch {args.batch}, warm cache)")
    for verify in ("verify", "no verify"):
        p1 = next(r["ratio"] for r in rows if r["name"] == f"cellio none ({verify})")
        print(f"P1 (cellio uncompressed / raw files), {verify:9s} = {p1:.2f}  (target >= 0.8)")
    for codec in ("none", "lz4", "zstd"):
        on = next(r for r in rows if r["name"] == f"cellio {codec} (verify)")
        off = next(r for r in rows if r["name"] == f"cellio {codec} (no verify)")
        print(f"checksum cost, {codec:4s}: {on['sites_per_s']:.0f} vs {off['sites_per_s']:.0f} sites/s "
              f"({on['sites_per_s'] / off['sites_per_s']:.2f}x)")



# ----------------------------------------------------------------------------------------------- object storage
REMOTE_STORES = {"chunked-none": dict(codec="none", layout="chunked"),
                 "chunked-lz4": dict(codec="lz4", layout="chunked"),
                 "sharded-none": dict(codec="none", layout="sharded"),
                 "sharded-lz4": dict(codec="lz4", layout="sharded")}


def start_local_server() -> tuple[Any, str]:
    """moto's S3-compatible server in its own process on 127.0.0.1 (so it does not share this process's GIL)."""
    import socket
    import subprocess
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    return proc, endpoint


def remote_ranges(store: Any, batch: np.ndarray, crops: np.ndarray | None) -> list[tuple[str, int, int | None]]:
    """The byte ranges cellio's reader fetches for one batch (shard indexes already cached): the ceiling's work."""
    H, W, C = store.image_shape
    lay = store._reader.ctx.shards  # the reader's own read path: the same ranges it fetches
    out: list[tuple[str, int, int | None]] = []
    for k, p in enumerate(store._rows[batch].tolist()):
        y, x, h, w = (0, 0, H, W) if crops is None else (int(v) for v in crops[k])
        if lay is None:
            out.append((f"{store._root}/images/c/{p}/0/0/0", 0, None))
            continue
        shard, j = lay.locate(p)
        start, end = lay.site_span(store._reader._indexes[shard][j], lay.tile_range(y, x, h, w), file="")
        out.append((f"{store._root}/images/{lay.shard_key(shard)}", start, end))
    return out


def remote_main(args: argparse.Namespace) -> None:
    """Remote rows, side by side against one server: plain concurrent range GETs (s3fs cat_ranges, obstore) as the
    ceiling, cellio, zarr-python and tensorstore, for each layout and codec, full sites and crops."""
    import asyncio

    import cellio

    proc = None
    if args.url == "local":
        proc, endpoint = start_local_server()
        bucket, prefix = "cellio-bench", "stores"
    else:
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
        bucket, _, prefix = args.url[len("s3://"):].partition("/")
    key = os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")  # tensorstore takes them from the environment
    secret = os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    region = os.environ.setdefault("AWS_REGION", "us-east-1")
    options = {"key": key, "secret": secret, "client_kwargs": {"region_name": region,
                                                               **({"endpoint_url": endpoint} if endpoint else {})}}
    try:
        import boto3
        import s3fs

        if proc is not None:
            boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                         region_name=region).create_bucket(Bucket=bucket)
        raw, stores = make_data(args)
        n = args.url_sites
        fs = s3fs.S3FileSystem(**options)
        batches = [np.random.default_rng(0).permutation(n)[k:k + args.batch] for k in range(0, n, args.batch)]
        c = args.crop
        rng = np.random.default_rng(1)
        crops = [np.stack([rng.integers(0, args.size - c + 1, len(b)), rng.integers(0, args.size - c + 1, len(b)),
                           np.full(len(b), c), np.full(len(b), c)], 1) for b in batches]
        local = {codec: cellio.open_store(stores / f"{codec}.zarr") for codec in ("none", "lz4")}
        cases: list[Case] = []
        import obstore
        from obstore.store import S3Store

        ost = S3Store(bucket, endpoint=endpoint or None, access_key_id=key, secret_access_key=secret, region=region,
                      client_options={"allow_http": True})

        async def ob_fetch(reqs: list[tuple[str, int, int | None]]) -> list[Any]:
            async def one(k: str, s: int, e: int | None) -> Any:
                path = k[len(bucket) + 1:]
                if e is None:
                    return await (await obstore.get_async(ost, path)).bytes_async()
                return await obstore.get_range_async(ost, path, start=s, end=e)
            return await asyncio.gather(*(one(*r) for r in reqs))

        chosen = [x for x in args.url_stores.split(",") if x]
        for name in chosen:
            if name not in REMOTE_STORES:
                raise SystemExit(f"--url-stores: unknown store {name!r}; expected some of {tuple(REMOTE_STORES)}")
        for name in chosen:
            kw = REMOTE_STORES[name]
            url = f"s3://{bucket}/{prefix}/{name}.zarr"
            if not fs.exists(f"{bucket}/{prefix}/{name}.zarr/zarr.json"):
                print(f"ingesting {url} ({n} sites) ...", flush=True)
                cellio.ingest(raw, url, workers=args.workers, progress=False, limit=n, storage_options=options, **kw)
            s = cellio.open_store(url, storage_options=options)
            ref = local[kw["codec"]]
            for b in batches:  # pixels equal the local store (and every shard index is cached from here on)
                assert np.array_equal(s.read(b), ref.read(b)), f"{url}: pixels differ from the local store"
            H, W, C = s.image_shape
            site = H * W * C
            for crop in (False, True):
                what = f"{name}, {c} crops" if crop else f"{name}, {H} px"
                reqs = [remote_ranges(s, b, cr if crop else None) for b, cr in zip(batches, crops)]
                nbytes = n * (c * c * C if crop else site)
                cases.append(Case(f"range GETs s3fs cat_ranges, {what}",
                                  lambda reqs=reqs: [fs.cat_ranges(*map(list, zip(*r))) for r in reqs],
                                  n, nbytes, "ceiling", {"store": name, "crop": crop}))
                cases.append(Case(f"range GETs obstore, {what}",
                                  lambda reqs=reqs: [asyncio.run(ob_fetch(r)) for r in reqs],
                                  n, nbytes, "ceiling", {"store": name, "crop": crop}))
                out = np.empty((args.batch, c, c, C) if crop else (args.batch, H, W, C), np.uint8)

                def cellio_read(s=s, crop=crop, out=out) -> None:
                    for b, cr in zip(batches, crops):
                        s.read(b, crop=cr if crop else None, out=out[:len(b)])
                cases.append(Case(f"cellio, {what}", cellio_read, n, nbytes, "cellio", {"store": name, "crop": crop}))
                if name == "sharded-lz4":  # the other range client, for the choice in cellio/store/remote.py
                    sf = cellio.open_store(url, storage_options=options, client="fsspec")
                    sf.read(batches[0])
                    [sf.read(b) for b in batches]  # every shard index cached

                    def cellio_fsspec(s=sf, crop=crop, out=out) -> None:
                        for b, cr in zip(batches, crops):
                            s.read(b, crop=cr if crop else None, out=out[:len(b)])
                    cases.append(Case(f"cellio (fsspec client), {what}", cellio_fsspec, n, nbytes, "cellio",
                                      {"store": name, "crop": crop, "client": "fsspec"}))
            import zarr

            z = zarr.open_array(url + "/images", mode="r", storage_options=options)
            zn = min(n, args.url_zarr_sites)

            def zarr_read(z=z, zn=zn) -> None:
                for i in np.random.default_rng(0).permutation(n)[:zn]:
                    z[int(s._rows[i])]
            cases.append(Case(f"zarr-python z[i], {name}, {H} px", zarr_read, zn, zn * site, "zarr-python",
                              {"store": name}))
            import tensorstore as ts

            t = ts.open({"driver": "zarr3", "kvstore": {"driver": "s3", "bucket": bucket,
                                                        "path": f"{prefix}/{name}.zarr/images/",
                                                        **({"endpoint": endpoint} if endpoint else {}),
                                                        "aws_region": region}}).result()

            def ts_read(t=t) -> None:
                for b in batches:
                    futs = [t[int(i)].read() for i in s._rows[b]]
                    [f.result() for f in futs]
            cases.append(Case(f"tensorstore, {args.batch} futures, {name}, {H} px", ts_read, n, n * site,
                              "tensorstore", {"store": name}))
        results = compare(cases, warmup=args.warmup, repeats=args.repeats)
        env = environment(sites=n, batch=args.batch, repeats=args.repeats, endpoint="local moto server (own process)"
                          if proc is not None else "given", url_zarr_sites=args.url_zarr_sites)
        base = f"range GETs obstore, {chosen[-1]}, {c} crops"
        rows = report(results, "store_read_remote", baseline=base, env=env,
                      title=f"shuffled batch reads of {n} sites from an S3-compatible server (batch {args.batch})")
        by = {r["name"]: r["sites_per_s"] for r in rows}
        print()
        for name in chosen:
            for what in (f"{args.size} px", f"{c} crops"):
                ceil = max(by[f"range GETs s3fs cat_ranges, {name}, {what}"], by[f"range GETs obstore, {name}, {what}"])
                mine = by[f"cellio, {name}, {what}"]
                zr = by[f"zarr-python z[i], {name}, {args.size} px"]
                print(f"{name:13s} {what:10s} cellio {mine:8.1f} sites/s = {mine / ceil:.2f}x the best range-GET loop "
                      f"({ceil:.1f}), {mine / zr:.1f}x zarr-python ({zr:.1f}, full sites)")
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
