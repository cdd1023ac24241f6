"""Ingest throughput against a decode-only loop (target >= 0.9x), and 1 vs N workers, on 512x512 RxRx1 PNGs.

    python benchmarks/ingest.py                         # the set store_read.py makes (208 sites at 512x512)
    python benchmarks/ingest.py --classes 8 --size 128 --repeats 1    # quick smoke run

"decode-only" reads and decodes the same six PNGs per site with the same decoder (cv2) and stacks them into
(H, W, 6) in one process, and writes nothing: the floor any PNG ingest pays. Ingest adds header validation,
exact statistics, verification against pixel_stats.csv, encoding and atomic chunk writes; its writer thread
overlaps encode + write with the next decode, so "1 worker" may use more than one core — the N-worker row against
N decode-only processes is the like-for-like comparison when every core is busy.
Results: benchmarks/results/ingest.{csv,json,png}.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, Case, compare, environment, report  # noqa: E402


def _decode_sites(root: str, paths: list[list[str]]) -> int:
    import cv2

    cv2.setNumThreads(1)
    for row in paths:
        np.stack([cv2.imread(os.path.join(root, q), cv2.IMREAD_UNCHANGED) for q in row], axis=-1)
    return len(paths)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--classes", type=int, default=32, help="synth classes (32 -> 208 sites)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=0, help="untimed runs per case (the page cache is warmed anyway)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="the N of '1 vs N workers'")
    p.add_argument("--codecs", default="none,lz4,zstd", help="codecs to time with one worker")
    p.add_argument("--tmp", default=None, help="where to write the stores (default: a temp dir)")
    args = p.parse_args()

    import cellio
    from cellio.ingestion import DEFAULT_CODEC
    from cellio.schema import PATH_COLUMNS

    raw = DATA / f"rxrx1-{args.size}-c{args.classes}"
    if not (raw / "train.csv").exists():
        print(f"synthesizing {raw} ...", flush=True)
        cellio.synthesize(raw, classes=args.classes, cell_types=("HUVEC",), train_experiments_per_cell_type=1,
                          test_experiments_per_cell_type=1, size=(args.size, args.size), seed=0,
                          workers=args.workers, progress=False)
    meta = cellio.read_metadata(raw)
    n = len(meta)
    paths = meta[list(PATH_COLUMNS)].to_numpy().tolist()
    site_bytes = args.size * args.size * 6
    total = n * site_bytes
    tmp = Path(tempfile.mkdtemp(prefix="cellio-ingest-bench-", dir=args.tmp))
    print(f"{n} sites of {args.size}x{args.size}x6 from {raw}; stores under {tmp}")
    for row in paths:  # page cache warm for every case alike
        for q in row:
            (raw / q).read_bytes()
    cases: list[Case] = [Case("decode-only, 1 process", lambda: _decode_sites(str(raw), paths), n, total, "baseline")]
    pool = None
    try:
        if args.workers > 1:
            parts = [paths[k::args.workers] for k in range(args.workers)]
            pool = mp.get_context("forkserver").Pool(args.workers)

            def decode_n() -> None:
                pool.starmap(_decode_sites, [(str(raw), part) for part in parts])
            cases.append(Case(f"decode-only, {args.workers} processes", decode_n, n, total, "baseline"))

        steady: dict[tuple[str, int, bool], list[float]] = {}

        def run_ingest(codec: str, workers: int, verify: bool = True) -> None:
            store = tmp / f"{codec}-{workers}.zarr"
            shutil.rmtree(store, ignore_errors=True)
            rep = cellio.ingest(raw, store, codec=codec, workers=workers, verify=verify, progress=False)
            steady.setdefault((codec, workers, verify), []).append(rep.sites_seconds)

        codecs = list(dict.fromkeys([DEFAULT_CODEC, *args.codecs.split(",")]))  # the default is always timed
        for codec in codecs:
            cases.append(Case(f"ingest {codec}, 1 worker", lambda c=codec: run_ingest(c, 1), n, total, "ingest",
                              {"codec": codec, "workers": 1}))
        cases.append(Case(f"ingest {DEFAULT_CODEC}, 1 worker, no verify",
                          lambda: run_ingest(DEFAULT_CODEC, 1, verify=False), n, total, "ingest",
                          {"codec": DEFAULT_CODEC, "workers": 1}))
        if args.workers > 1:
            cases.append(Case(f"ingest {DEFAULT_CODEC}, {args.workers} workers",
                              lambda: run_ingest(DEFAULT_CODEC, args.workers), n, total, "ingest",
                              {"codec": DEFAULT_CODEC, "workers": args.workers}))
        results = compare(cases, warmup=args.warmup, repeats=args.repeats)
        # steady state: the per-site phase only, without the fixed per-run cost (metadata, skeleton, finalize)
        base = results[0].items_per_s
        for r in results:
            key = (r.extra.get("codec"), r.extra.get("workers"), "no verify" not in r.name)
            if key in steady:
                rate = n / float(np.median(steady[key][-args.repeats:]))
                r.extra.update(steady_sites_per_s=round(rate, 2), steady_ratio=round(rate / base, 3))
    finally:
        if pool is not None:
            pool.close()
        shutil.rmtree(tmp, ignore_errors=True)
    env = environment(sites=n, size=args.size, repeats=args.repeats, warmup=args.warmup, workers=args.workers)
    rows = report(results, "ingest", baseline="decode-only, 1 process", env=env,
                  title=f"ingest of {n} {args.size}x{args.size} RxRx1 sites (6 PNGs each) vs decode-only")
    by = {r["name"]: r for r in rows}
    one = by[f"ingest {DEFAULT_CODEC}, 1 worker"]
    print("\nsteady state (sites phase only, fixed per-run setup excluded), ratio to decode-only, 1 process:")
    for r in rows:
        if "steady_ratio" in r:
            print(f"  {r['name']:<40}{r['steady_sites_per_s']:>10.1f} sites/s {r['steady_ratio']:>7.3f}")
    print(f"\ningest ({DEFAULT_CODEC}, 1 worker) / decode-only = {one['ratio']:.2f} end to end, "
          f"{one['steady_ratio']:.2f} steady state  (target >= 0.9)")
    if args.workers > 1:
        many = by[f"ingest {DEFAULT_CODEC}, {args.workers} workers"]
        print(f"scaling 1 -> {args.workers} workers: {many['sites_per_s'] / one['sites_per_s']:.2f}x; "
              f"ingest / decode-only at {args.workers} processes: "
              f"{many['sites_per_s'] / by[f'decode-only, {args.workers} processes']['sites_per_s']:.2f}")


if __name__ == "__main__":
    main()
