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

`--index-wells N` instead times `read_sites` (the key index) at the real cardinality: N wells (the real set: 222,601)
in 35 shards whose image cells hold 16 placeholder bytes (the index never reads them), reporting wall time and the
growth of the process's peak RSS.

    python benchmarks/rxrx3_decode.py --index-wells 222601
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
import tempfile
from pathlib import Path

import imagecodecs
import pandas as pd
import pyarrow as pa
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


def index_scale(n_wells: int, out: Path, shards: int = 35) -> dict[str, float]:
    """Write N wells of metadata and keys (placeholder images) in `shards` shards; time read_sites on them."""
    per_plate = 1536
    wells = pd.DataFrame({"i": range(n_wells)})
    wells["experiment_name"] = "gene-" + (wells["i"] // (per_plate * 48) + 1).map("{:03d}".format)
    wells["plate"] = wells["i"] // per_plate % 48 + 1
    wells["address"] = [gen.address_1536(i % per_plate) for i in wells["i"]]
    wells["well_id"] = wells["experiment_name"] + "_" + wells["plate"].astype(str) + "_" + wells["address"]
    wells = wells.assign(gene="GENE1", treatment="GENE1_guide_1", SMILES="", concentration="",
                         perturbation_type="CRISPR", cell_type="HUVEC")[list(gen.METADATA_COLUMNS)]
    (out / "data").mkdir(parents=True)
    wells.to_csv(out / "metadata_rxrx3_core.csv", index=False)
    keys = [gen.image_key(e, p, a, c) for e, p, a in zip(wells["experiment_name"], wells["plate"], wells["address"])
            for c in range(1, 7)]
    per = math.ceil(len(keys) / shards)
    blob = {"bytes": b"\x00" * 16, "path": "x.jp2"}
    for k in range(shards):
        part = keys[k * per:(k + 1) * per]
        table = pa.Table.from_arrays([pa.array(part, pa.string()), pa.array([blob] * len(part), gen.SCHEMA.field("jp2").type)],
                                     schema=gen.SCHEMA)
        pq.write_table(table, out / "data" / f"train-{k:05d}-of-{shards:05d}.parquet", row_group_size=gen.ROW_GROUP_ROWS)
    del keys
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    table = read_sites(out)
    wall = time.perf_counter() - t0
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert len(table) == n_wells
    return {"wells": n_wells, "parquet_rows": 6 * n_wells, "shards": shards, "read_sites_s": round(wall, 2),
            "peak_rss_growth_mib": round(grew, 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--genes", type=int, default=2)
    p.add_argument("--compounds", type=int, default=1)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lossless", action="store_true", help="keep the generator's lossless encoding")
    p.add_argument("--index-wells", type=int, default=None, help="time read_sites on N wells instead")
    a = p.parse_args(argv)
    if a.index_wells:
        with tempfile.TemporaryDirectory() as tmp:
            result = index_scale(a.index_wells, Path(tmp) / "rxrx3-core")
        print(json.dumps(result))
        return
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
