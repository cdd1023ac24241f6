"""RxRx3-core ingest-side read speed: `read_site` (parquet row groups + JPEG 2000 decode + checks) vs a bare
decode-only loop, in sites/s, on shards written by the independent generator (tests/formats/rxrx3_core.py).

Cases, interleaved, one thread, medians of the repeats:
- decode only: `imagecodecs.jpeg2k_decode(bytes, numthreads=1)` over the six channel images of every site, the
  bytes already in memory (the floor: what any reader of these files pays)
- read_site: cellio's RxRx3-core `read_site` for every row of the site table, starting each repeat with an empty
  per-process shard cache (so it reads every row group from the parquet files, as an ingest worker does)

The generator encodes losslessly (tests check pixels); the real files are lossy (~13 KB an image), so by default the
images are re-encoded at the real size (`--lossless` keeps the generator's). 512x512 as the real set.

    python benchmarks/rxrx3_decode.py [--genes 2] [--compounds 1] [--size 512] [--repeats 3] [--lossless]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import imagecodecs
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests" / "formats"))
sys.path.insert(0, str(ROOT))
import rxrx3_core as gen  # noqa: E402
from _common import Case, compare, environment, report  # noqa: E402

from cellio.datasets.rxrx3_core import shards  # noqa: E402
from cellio.datasets.rxrx3_core.reader import read_site, read_sites  # noqa: E402

LOSSY_LEVEL = 37  # ~12-13 KB a 512x512 image, as the real files (benchmarks/jp2_decode.py)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--genes", type=int, default=2)
    p.add_argument("--compounds", type=int, default=1)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lossless", action="store_true", help="keep the generator's lossless encoding")
    a = p.parse_args(argv)
    if not a.lossless:  # the generator's one encoder, swapped for the real files' kind (lossy) before it writes
        gen.encode_jp2 = lambda image: imagecodecs.jpeg2k_encode(image, level=LOSSY_LEVEL,
                                                                 codecformat=imagecodecs.JPEG2K.CODEC.JP2)
    with tempfile.TemporaryDirectory() as tmp:
        raw = gen.generate(Path(tmp) / "rxrx3-core", size=str(a.size), genes=a.genes, guides=2,
                           compounds=a.compounds, plates=1, rows_per_shard=500)
        table = read_sites(raw)
        rows = [r for _, r in table.iterrows()]
        rows = [{k: r[k] for k in r.index} for r in rows]
        blobs = [b["bytes"] for shard in sorted((raw / "data").glob("*.parquet"))
                 for b in pq.read_table(shard, columns=["jp2"]).column("jp2").to_pylist()]
        source = table.attrs["raw_dir"]

        def decode_only() -> None:
            for b in blobs:
                imagecodecs.jpeg2k_decode(b, numthreads=1)

        def cellio_read_site() -> None:
            shards._CACHE = None  # a fresh worker: every row group read from the files
            for r in rows:
                read_site(source, r)

        n, nbytes = len(rows), len(rows) * a.size * a.size * 6
        extra = {"encoding": "lossless" if a.lossless else "lossy",
                 "mean_kb": round(sum(map(len, blobs)) / len(blobs) / 1024, 1)}
        results = compare([Case("decode only (imagecodecs)", decode_only, items=n, nbytes=nbytes, extra=extra),
                           Case("read_site (cellio)", cellio_read_site, items=n, nbytes=nbytes, extra=extra)],
                          warmup=1, repeats=a.repeats)
    report(results, "rxrx3_decode", baseline="decode only (imagecodecs)",
           title=f"RxRx3-core sites, {n} x {a.size}x{a.size}x6 uint8, 1 thread",
           env=environment(imagecodecs=imagecodecs.__version__))


if __name__ == "__main__":
    main()
