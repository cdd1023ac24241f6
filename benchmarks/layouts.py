"""Throughput per layout: for each data set cellio reads (rxrx1, jump, ome-zarr, rxrx3-core, rxrx2), on a small set at
the real site size written by its generator, side by side:

- decode only: one process, one thread, the format's own decoder over every site's files, stacked into (H, W, C),
  nothing written: PNG with cv2 (what the ingest's PNG route uses), TIFF with tifffile, OME-Zarr with zarr, JPEG 2000
  with imagecodecs (the bytes already in memory, as in benchmarks/rxrx3_decode.py). The floor any reader pays.
- ingest: `cellio.ingest(src, store, reader=NAME)` with the defaults of `cellio ingest SRC STORE --from NAME` (all
  cores as workers, lz4, sharded), a fresh store each repeat: end to end (binding the reader, plan, skeleton,
  finalize: a fixed cost that weighs on a set this small) and steady (the sites phase only, `sites_seconds`). It
  does more than decode: JUMP divides by the illumination functions, every site's exact statistics, checksums,
  encoding, atomic writes.
- loader: `create_loader(store, B, backend=..., device="cpu")` with the defaults (preset d4_shift: 224 crops, D4,
  shift; normalisation per plate; min(4, cores) workers) over the ingested store, a training epoch of `--samples`
  sites drawn from the set (`samples_per_epoch`), torch and DALI CPU; MB/s counts each yielded site at its stored
  size (H x W x C x bytes per pixel: the site-equivalent rate, comparable with decode and ingest), not the crop.

Cases are interleaved repeat by repeat (_common.compare) so load changes hit each alike; medians reported. The
generated sets are kept under benchmarks/data/layouts/ (a rerun skips generation).

    python benchmarks/layouts.py [--repeats 2] [--samples 256] [--batch-size 16] [--layouts jump,rxrx2]

Results: benchmarks/results/layouts.{csv,json,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests" / "formats"))
sys.path.insert(0, str(ROOT))
from _common import DATA, RESULTS, Case, compare, environment, write_csv  # noqa: E402

LAYOUTS = ("rxrx1", "jump", "ome-zarr", "rxrx3-core", "rxrx2")
JP2_LOSSY_LEVEL = 37  # ~12-13 KB a 512x512 image, as RxRx3-core's real files (benchmarks/jp2_decode.py)


@dataclass
class RawSet:
    """A generated set: `src` what `cellio ingest` takes, `reader` the data set's name, `decode` the decode-only
    loop over all its sites (returns the number decoded), `site` (H, W, C) and `dtype` as stored, `decoder` what
    decodes it."""

    layout: str
    src: Path
    reader: str
    n_sites: int
    site: tuple[int, int, int]
    dtype: str
    decoder: str
    decode: Callable[[], int]

    @property
    def site_bytes(self) -> int:
        h, w, c = self.site
        return h * w * c * np.dtype(self.dtype).itemsize


def _generated(path: Path, write: Callable[[Path], Any]) -> Path:
    """`path` after `write(path)` once: a `.done` marker beside it makes a rerun skip generation."""
    done = path.with_name(path.name + ".done")
    if not done.exists():
        shutil.rmtree(path, ignore_errors=True)
        print(f"generating {path} ...", flush=True)
        write(path)
        done.write_text("ok\n")
    return path


def _cv2_sites(root: Path, paths: list[list[str]]) -> Callable[[], int]:
    import cv2

    def decode() -> int:
        cv2.setNumThreads(1)
        for row in paths:
            np.stack([cv2.imread(str(root / q), cv2.IMREAD_UNCHANGED) for q in row], axis=-1)
        return len(paths)
    return decode


def rxrx1_set(base: Path) -> RawSet:
    import cellio
    from cellio.schema import PATH_COLUMNS

    raw = _generated(base / "rxrx1-512", lambda p: cellio.synthesize(
        p, classes=4, cell_types=("HUVEC",), train_experiments_per_cell_type=1, test_experiments_per_cell_type=0,
        positive_controls=1, sites=2, size=(512, 512), seed=0, workers=1, progress=False, check=False))
    meta = cellio.read_metadata(raw)
    paths = meta[list(PATH_COLUMNS)].to_numpy().tolist()
    return RawSet("rxrx1", raw, "rxrx1", len(meta), (512, 512, 6), "uint8", "cv2 PNG", _cv2_sites(raw, paths))


def jump_set(base: Path) -> RawSet:
    import jump
    import pandas as pd
    import tifffile

    out = _generated(base / "jump-1080", lambda p: jump.write_jump(p, plates=1, size="1080", wells=4, fields=4,
                                                                   brightfield=False, seed=0))
    table = pd.read_csv(jump.load_data_dir(out, 0) / "load_data.csv")
    channels = jump.FLUORESCENCE
    files = [[out / jump.PROJECT / row[f"PathName_Orig{c}"].split(jump.PROJECT + "/", 1)[1] / row[f"FileName_Orig{c}"]
              for c in channels] for _, row in table.iterrows()]

    def decode() -> int:
        for site in files:
            np.stack([tifffile.imread(f) for f in site], axis=-1)
        return len(files)
    return RawSet("jump", out / jump.PROJECT, "jump", len(files), (1080, 1080, len(channels)), "uint16",
                  "tifffile TIFF", decode)


def ome_zarr_set(base: Path) -> RawSet:
    import ome_zarr_plate
    import zarr

    folder = base / "ome-zarr-1080"
    _generated(folder, lambda p: ome_zarr_plate.write_ome_zarr_plate(
        p, version="0.4", dtype="uint16", size="1080", rows=2, columns=3, fields=3, levels=1, name="plate1", seed=0))
    plate = folder / "plate1.ome.zarr"
    wells = ome_zarr_plate.well_names(2, 3)
    arrays = [f"{r}/{c}/{f}/s0" for r, c in wells for f in range(3)]  # ome-zarr-py names level 0 "s0"
    root = zarr.open_group(str(plate), mode="r")

    def decode() -> int:
        for path in arrays:
            np.ascontiguousarray(np.moveaxis(root[path][:], 0, -1))  # (C, Y, X) -> (H, W, C), as a site is stored
        return len(arrays)
    return RawSet("ome-zarr", plate, "ome-zarr", len(arrays), (1080, 1080, len(ome_zarr_plate.CHANNELS)), "uint16",
                  "zarr (blosc) OME-Zarr 0.4", decode)


def rxrx3_set(base: Path) -> RawSet:
    import imagecodecs
    import pyarrow.parquet as pq
    import rxrx3_core

    def write(p: Path) -> None:
        original = rxrx3_core.encode_jp2  # the generator encodes losslessly; the real files are lossy, ~13 KB
        rxrx3_core.encode_jp2 = lambda image: imagecodecs.jpeg2k_encode(image, level=JP2_LOSSY_LEVEL,
                                                                        codecformat=imagecodecs.JPEG2K.CODEC.JP2)
        try:
            rxrx3_core.generate(p, size="512", genes=1, guides=1, compounds=1, plates=1, rows_per_shard=500, seed=0)
        finally:
            rxrx3_core.encode_jp2 = original

    raw = _generated(base / "rxrx3-core-512", write)
    blobs = [b["bytes"] for shard in sorted((raw / "data").glob("*.parquet"))
             for b in pq.read_table(shard, columns=["jp2"]).column("jp2").to_pylist()]
    n = len(blobs) // 6

    def decode() -> int:
        for k in range(n):
            np.stack([imagecodecs.jpeg2k_decode(b, numthreads=1) for b in blobs[6 * k:6 * k + 6]], axis=-1)
        return n
    return RawSet("rxrx3-core", raw, "rxrx3-core", n, (512, 512, 6), "uint8", "imagecodecs JPEG 2000 (lossy)",
                  decode)


def rxrx2_set(base: Path) -> RawSet:
    import pandas as pd
    import rxrx2

    raw = _generated(base / "rxrx2-1024", lambda p: rxrx2.generate(
        p, size="1024", experiments=1, factors=1, concentrations=1, replicates=2, controls=2, sites=4, seed=0))
    meta = pd.read_csv(raw / "rxrx2-metadata.csv")
    paths = [[str(rxrx2.image_path(Path("."), r["experiment"], int(r["plate"]), r["well"], int(r["site"]), c))
              for c in range(1, 7)] for _, r in meta.iterrows()]
    return RawSet("rxrx2", raw, "rxrx2", len(meta), (1024, 1024, 6), "uint8", "cv2 PNG", _cv2_sites(raw, paths))


SETS: dict[str, Callable[[Path], RawSet]] = {"rxrx1": rxrx1_set, "jump": jump_set, "ome-zarr": ome_zarr_set,
                                             "rxrx3-core": rxrx3_set, "rxrx2": rxrx2_set}


def _read_all_files(root: Path) -> None:
    """Warm the page cache for every case alike."""
    for p in sorted(root.rglob("*")):
        if p.is_file():
            p.read_bytes()


def measure_layout(raw: RawSet, tmp: Path, repeats: int, batch_size: int, samples: int) -> dict[str, Any]:
    import cellio
    from cellio.loading.pipeline import dali_available
    from cellio.loading.transforms import get_preset

    print(f"\n== {raw.layout}: {raw.n_sites} sites of {raw.site[0]}x{raw.site[1]}x{raw.site[2]} {raw.dtype} "
          f"({raw.decoder}) from {raw.src}", flush=True)
    _read_all_files(raw.src if raw.src.is_dir() else raw.src.parent)
    n, nbytes = raw.n_sites, raw.n_sites * raw.site_bytes
    store = tmp / f"{raw.layout}.zarr"
    steady: list[float] = []
    reports: list[Any] = []

    def ingest() -> None:
        shutil.rmtree(store, ignore_errors=True)
        rep = cellio.ingest(raw.src, store, reader=raw.reader, progress=False)
        assert rep.n_ok == n and rep.n_failed == 0, rep
        steady.append(rep.sites_seconds)
        reports.append(rep)

    assert raw.decode() == n
    results = compare([Case("decode only", raw.decode, n, nbytes, "decode"),
                       Case("cellio ingest", ingest, n, nbytes, "ingest")], warmup=1, repeats=repeats)
    decode, ing = results
    steady_rate = n / float(np.median(steady[-repeats:]))
    opened = cellio.open_store(store)
    assert opened.image_shape == raw.site and opened.dtype == np.dtype(raw.dtype), (opened.image_shape, opened.dtype)

    backends = ["torch"] + (["dali"] if dali_available() else [])
    loaders = {b: cellio.create_loader(store, batch_size, backend=b, device="cpu", datasets=None,
                                       samples_per_epoch=samples, seed=0) for b in backends}
    epoch = {b: 0 for b in backends}

    def run_epoch(b: str) -> None:
        loaders[b].set_epoch(epoch[b])
        epoch[b] += 1
        got = sum(int(batch["image"].shape[0]) for batch in loaders[b])
        assert got == samples, (b, got)

    loaded = compare([Case(f"loader {b}", lambda b=b: run_epoch(b), samples, samples * raw.site_bytes, "loader")
                      for b in backends], warmup=1, repeats=repeats)
    for ld in loaders.values():
        ld.close()
    rate = {r.name.removeprefix("loader "): r for r in loaded}
    row = {
        "layout": raw.layout, "sites": n, "site": f"{raw.site[0]}x{raw.site[1]}x{raw.site[2]}", "dtype": raw.dtype,
        "site_mb": round(raw.site_bytes / 1e6, 2), "decoder": raw.decoder,
        "decode_sites_per_s": round(decode.items_per_s, 2),
        "ingest_sites_per_s": round(ing.items_per_s, 2), "ingest_steady_sites_per_s": round(steady_rate, 2),
        "ingest_workers": reports[-1].workers, "steady_ingest_over_decode": round(steady_rate / decode.items_per_s, 3),
        "ingest_over_decode": round(ing.items_per_s / decode.items_per_s, 3),
        "store_mb": round(sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) / 1e6, 2),
    }
    for b in ("torch", "dali"):
        r = rate.get(b)
        row[f"loader_{b}_sites_per_s"] = round(r.items_per_s, 1) if r else None
        row[f"loader_{b}_mb_per_s"] = round(r.items_per_s * raw.site_bytes / 1e6, 1) if r else None
    row["crop"] = get_preset("d4_shift").crop_size  # create_loader's default augment
    row["_raw"] = [asdict(r) for r in (*results, *loaded)]
    shutil.rmtree(store, ignore_errors=True)
    return row


COLUMNS = (("layout", "layout", "{}"), ("sites", "n", "{}"), ("site", "site HxWxC", "{}"), ("dtype", "dtype", "{}"),
           ("decode_sites_per_s", "decode/s", "{:.1f}"), ("ingest_sites_per_s", "ingest/s", "{:.1f}"),
           ("ingest_steady_sites_per_s", "steady/s", "{:.1f}"), ("steady_ingest_over_decode", "st/dec", "{:.2f}"),
           ("loader_torch_sites_per_s", "torch/s", "{:.1f}"), ("loader_torch_mb_per_s", "torch MB/s", "{:.0f}"),
           ("loader_dali_sites_per_s", "DALI/s", "{:.1f}"), ("loader_dali_mb_per_s", "DALI MB/s", "{:.0f}"))


def print_rows(rows: list[dict[str, Any]]) -> None:
    widths = [max(len(head), 10) for _, head, _ in COLUMNS]
    print("\nthroughput per layout (sites/s; MB/s = sites/s x stored site size)")
    print("  ".join(head.rjust(w) for (_, head, _), w in zip(COLUMNS, widths)))
    for r in rows:
        print("  ".join(("n/a" if r.get(k) is None else fmt.format(r[k])).rjust(w)
                        for (k, _, fmt), w in zip(COLUMNS, widths)))


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["layout"] for r in rows]
    x = np.arange(len(rows))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    for k, (key, label) in enumerate((("decode_sites_per_s", "decode only, 1 process"),
                                      ("ingest_steady_sites_per_s", "ingest, steady (default workers)"),
                                      ("ingest_sites_per_s", "ingest, end to end"))):
        a.bar(x + (k - 1) * 0.27, [r[key] for r in rows], 0.27, label=label)
    a.set_xticks(x, names)
    a.set_ylabel("sites/s")
    a.set_yscale("log")
    a.set_title("ingest vs decode only", fontsize=10)
    a.legend(fontsize=8)
    for k, (key, label) in enumerate((("loader_torch_mb_per_s", "torch"), ("loader_dali_mb_per_s", "DALI CPU"))):
        b.bar(x + (k - 0.5) * 0.4, [r[key] or 0 for r in rows], 0.4, label=label)
    b.set_xticks(x, names)
    b.set_ylabel("MB/s of stored sites")
    b.set_title("loader from the default store (224 crops, d4_shift)", fontsize=10)
    b.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layouts", default=",".join(LAYOUTS), help="comma list among " + ", ".join(LAYOUTS))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--samples", type=int, default=256, help="sites per loader epoch (samples_per_epoch)")
    p.add_argument("--tmp", default=None, help="where the stores go (default: a temp dir)")
    p.add_argument("--out", default="layouts", help="result file stem under benchmarks/results/")
    a = p.parse_args(argv)
    chosen = [s.strip() for s in a.layouts.split(",") if s.strip()]
    bad = [s for s in chosen if s not in SETS]
    if bad:
        sys.exit(f"--layouts: unknown {bad}; expected among {list(LAYOUTS)}")
    base = DATA / "layouts"
    base.mkdir(parents=True, exist_ok=True)
    env_before = environment()["load_avg_1m"]
    tmp = Path(tempfile.mkdtemp(prefix="cellio-layouts-bench-", dir=a.tmp))
    rows = []
    try:
        for name in chosen:
            rows.append(measure_layout(SETS[name](base), tmp, a.repeats, a.batch_size, a.samples))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_rows(rows)
    import cellio

    env = environment(repeats=a.repeats, batch_size=a.batch_size, samples_per_epoch=a.samples,
                      load_avg_1m_at_start=env_before, ingest_workers=os.cpu_count(), cellio_dir=str(
                          Path(cellio.__file__).parent))
    flat = [{k: v for k, v in r.items() if k != "_raw"} for r in rows]
    write_csv(RESULTS / f"{a.out}.csv", flat)
    title = (f"cellio per layout: ingest ({env['cpu_count']} workers) vs decode only, loader from the default store; "
             f"load avg {env['load_avg_1m']:.1f}")
    (RESULTS / f"{a.out}.json").write_text(json.dumps({"title": title, "environment": env, "rows": flat,
                                                       "raw": {r["layout"]: r["_raw"] for r in rows}}, indent=2))
    plot(flat, RESULTS / f"{a.out}.png", title)
    print(f"\nwrote {RESULTS / (a.out + '.csv')}, .json and .png")


if __name__ == "__main__":
    main()
