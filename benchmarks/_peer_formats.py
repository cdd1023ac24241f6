"""The peers benchmark's data: one synthetic RxRx1 set of PNG sites, converted into every loader's own format.

    fmt = prepare(Path("benchmarks/data/peers-512-256"), sites=256, size=512)
    fmt.store, fmt.npy, fmt.wds, fmt.wds_lz4, fmt.litdata      # where each format lives
    fmt.conversion_s["litdata"], fmt.disk_bytes["wds"]          # what it cost to make and what it weighs

Every conversion starts from the raw PNGs (6 grey PNGs per site, RxRx1's layout) and decodes them itself, with the
same number of processes (`workers`), so the conversion times compare like with like:
  store     `cellio.ingest` with its default options (what `cellio ingest RAW STORE` writes)
  npy       one uncompressed (6, H, W) uint8 `.npy` per site: the seed's form (CHW, ready for torchvision)
  wds       WebDataset tar shards of per-site `.npy` entries (`{id:06d}.npy`), 32 sites per shard
  wds_lz4   the same shards with each `.npy` lz4-frame compressed (`{id:06d}.npy.lz4`): the compressed variant
  litdata   `litdata.optimize` output: chunked binary files of {"index": id, "image": (6, H, W) uint8}

A site's id everywhere is its row in the cellio store (`store.sites` row i <-> image i): the loaders' batches carry
it, and the benchmark checks every row's batches against the PNGs by that id.
"""
from __future__ import annotations

import functools
import io
import json
import logging
import multiprocessing as mp
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

SITES_PER_SHARD = 32       # tar shards and litdata chunks hold about as many sites as a default cellio shard
LITDATA_CHUNK_BYTES = "64MB"  # litdata's README default (optimize(..., chunk_bytes="64MB"))
FORMATS = ("store", "npy", "wds", "wds_lz4", "litdata")


def synth_options(sites: int, size: int) -> dict[str, Any]:
    """cellio.synthesize arguments for about `sites` train sites (2 sites per well, one train experiment per cell
    type, no test set): sites per experiment = 2 x (classes + 4 plates x (positive controls + 1 negative))."""
    if sites < 8:
        raise ValueError(f"sites: expected at least 8 (one plate group per class), found {sites}")
    cell_types = ("HUVEC", "RPE") if sites >= 64 else ("HUVEC",)
    wells = sites / len(cell_types) / 2
    positive = 2 if wells >= 16 else 0
    classes = max(4, 4 * round((wells - 4 * (positive + 1)) / 4))
    return dict(classes=classes, train_experiments_per_cell_type=1, test_experiments_per_cell_type=0,
                cell_types=cell_types, size=(size, size), positive_controls=positive, seed=0, check=False,
                progress=False)


def read_site(raw: Path, paths: list[str]) -> np.ndarray:
    """(6, H, W) uint8 from a site's six channel PNGs (cv2 when installed, else Pillow)."""
    try:
        import cv2

        chans = [cv2.imread(str(raw / p), cv2.IMREAD_UNCHANGED) for p in paths]
    except ImportError:
        from PIL import Image

        chans = [np.asarray(Image.open(raw / p)) for p in paths]
    for p, c in zip(paths, chans):
        if c is None or c.ndim != 2 or c.dtype != np.uint8:
            raise ValueError(f"{raw / p}: expected a grey 8-bit PNG, found "
                             f"{None if c is None else (c.dtype, c.shape)}")
    return np.stack(chans, axis=0)


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# --- writers: each one a top-level function so a process pool (fork) can run it -----------------------------------
def _write_npy(i: int, raw: Path, paths: list[list[str]], out: Path) -> None:
    np.save(out / f"{i:06d}.npy", read_site(raw, paths[i]), allow_pickle=False)


def _write_shard(k: int, raw: Path, paths: list[list[str]], out: Path, lz4: bool) -> None:
    import webdataset as wds

    ids = range(k * SITES_PER_SHARD, min(len(paths), (k + 1) * SITES_PER_SHARD))
    with wds.TarWriter(str(out / f"shard-{k:05d}.tar")) as sink:
        for i in ids:
            site = read_site(raw, paths[i])
            if lz4:
                import lz4.frame

                sink.write({"__key__": f"{i:06d}", "npy.lz4": lz4.frame.compress(npy_bytes(site))})
            else:
                sink.write({"__key__": f"{i:06d}", "npy": site})  # TarWriter's npy encoder: np.save


def _litdata_item(i: int, raw: Path, paths: list[list[str]]) -> dict[str, Any]:
    return {"index": i, "image": read_site(raw, paths[i])}


def _pool_map(fn: Callable[[int], None], items: range, workers: int) -> None:
    if workers <= 1:
        for i in items:
            fn(i)
        return
    with mp.get_context("fork").Pool(workers) as pool:
        pool.map(fn, items, chunksize=1)


def write_npy(raw: Path, paths: list[list[str]], out: Path, workers: int) -> None:
    out.mkdir(parents=True)
    _pool_map(functools.partial(_write_npy, raw=raw, paths=paths, out=out), range(len(paths)), workers)


def write_shards(raw: Path, paths: list[list[str]], out: Path, workers: int, lz4: bool) -> None:
    out.mkdir(parents=True)
    shards = range(-(-len(paths) // SITES_PER_SHARD))
    _pool_map(functools.partial(_write_shard, raw=raw, paths=paths, out=out, lz4=lz4), shards, workers)


def write_litdata(raw: Path, paths: list[list[str]], out: Path, workers: int) -> None:
    # litdata README ("Option 2: Optimize for maximum performance"): optimize(fn, inputs, output_dir, num_workers,
    # chunk_bytes="64MB"); numpy leaves are stored as raw arrays (JPEG, its preferred image codec, has 3 channels)
    import litdata

    # optimize() sets the process-wide multiprocessing start method to "spawn" (force=True) and leaves it so: every
    # DataLoader made afterwards in this process would spawn its workers (seconds each). Put the default back.
    method = mp.get_start_method(allow_none=True)
    try:
        litdata.optimize(fn=functools.partial(_litdata_item, raw=raw, paths=paths), inputs=list(range(len(paths))),
                         output_dir=str(out), chunk_bytes=LITDATA_CHUNK_BYTES, num_workers=max(1, workers),
                         verbose=False, mode="overwrite")
    finally:
        mp.set_start_method(method, force=True)


# --- the whole set ----------------------------------------------------------------------------------------------
@dataclass
class Formats:
    root: Path
    raw: Path
    store: Path
    npy: Path
    wds: Path
    wds_lz4: Path
    litdata: Path
    sites: int
    size: int
    conversion_s: dict[str, float] = field(default_factory=dict)
    disk_bytes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def _paths(store: Path) -> list[list[str]]:
    import cellio
    from cellio.schema import PATH_COLUMNS

    return cellio.open_store(store).sites[list(PATH_COLUMNS)].to_numpy().tolist()


def prepare(root: Path, *, sites: int, size: int, workers: int = 2, formats: tuple[str, ...] = FORMATS,
            rebuild: bool = False) -> Formats:
    """Synthesize the PNG set under root/raw (once) and convert it into each format not yet there.

    Conversion times are measured when a format is made and kept in root/formats.json, so a rerun reuses the data
    and still reports them; `rebuild` converts everything again (the PNG set is kept)."""
    import cellio

    root = Path(root)
    fmt = Formats(root=root, raw=root / "raw", store=root / "store.zarr", npy=root / "npy", wds=root / "wds",
                  wds_lz4=root / "wds_lz4", litdata=root / "litdata", sites=0, size=size)
    record = root / "formats.json"
    known: dict[str, Any] = json.loads(record.read_text()) if record.exists() and not rebuild else {}
    if not (fmt.raw / "train.csv").exists():
        if fmt.raw.exists():
            shutil.rmtree(fmt.raw)
        log.info("synthesizing %s (about %d sites of %d px)", fmt.raw, sites, size)
        cellio.synthesize(fmt.raw, workers=workers, **synth_options(sites, size))
        known = {}
    steps: dict[str, Callable[[list[list[str]] | None], None]] = {
        "store": lambda _: cellio.ingest(fmt.raw, fmt.store, workers=workers, progress=False),
        "npy": lambda p: write_npy(fmt.raw, p, fmt.npy, workers),
        "wds": lambda p: write_shards(fmt.raw, p, fmt.wds, workers, lz4=False),
        "wds_lz4": lambda p: write_shards(fmt.raw, p, fmt.wds_lz4, workers, lz4=True),
        "litdata": lambda p: write_litdata(fmt.raw, p, fmt.litdata, workers),
    }
    paths: list[list[str]] | None = None
    for name in ("store", *[f for f in formats if f != "store"]):  # the store first: it fixes the site ids
        target = getattr(fmt, name)
        if name in known.get("conversion_s", {}) and target.exists():
            fmt.conversion_s[name] = known["conversion_s"][name]
        else:
            if target.exists():
                shutil.rmtree(target)
            if name != "store" and paths is None:
                paths = _paths(fmt.store)
            log.info("converting the PNGs into %s", target)
            t0 = time.perf_counter()
            steps[name](paths)
            fmt.conversion_s[name] = time.perf_counter() - t0
        fmt.disk_bytes[name] = disk_bytes(target)
        record.write_text(json.dumps(fmt.to_json(), indent=1))
    fmt.disk_bytes["png"] = disk_bytes(fmt.raw / "train")
    fmt.sites = len(cellio.open_store(fmt.store))
    record.write_text(json.dumps(fmt.to_json(), indent=1))
    return fmt
