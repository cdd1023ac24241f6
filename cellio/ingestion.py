"""Write path: RxRx1 PNGs -> a cellio Zarr v3 store (spec: docs/data_format.md). Reading lives in cellio/store.py.

Design, in the order things happen:

1. The plan: `read_metadata(raw)` filtered by dataset / experiment / cell type / limit; row i of the plan is
   image i of the store.
2. The skeleton (array metadata, the site table, root attributes with complete=false) is written once, guarded
   by a marker file so a run killed half-way through it is detected and redone.
3. Per-batch tasks (local processes, or a Dask cluster) decode, validate and verify each site, write its chunk to
   a temp file and `os.replace` it into place (atomic), then record the batch in one journal file. A SIGKILL loses
   at most the batches in flight; a rerun redoes exactly the sites with no journal record.
4. Finalization merges the journal into `status` and `stats/*`, flips `complete` to true and deletes the
   journal, so a finished store holds no trace of how many runs built it.

The whole job holds the store's writer lock (cellio/_lock.py): a second ingest of the same path refuses, naming
the holder. Ingest deletes only its own state files (journal, temp files); it never builds over, or deletes,
files it did not write. Free space is checked before any site is written, and ENOSPC during a write becomes a
DiskFullError saying how much the rest of the job needs; `repair_store` re-ingests chosen sites of a finished store
with the same batch tasks (atomic chunk writes, journal) after `cellio verify` found them damaged, and a rerun of a
finished store retries the sites an earlier run skipped (`on_error="skip"`) the same way.
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import math
import os
import signal
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .store.codecs import chunk_codec, get_codec
from .store.columns import column_kind, decode_strings, encode_column
from .store.files import FileTarget, is_url
from .store.format import CREATING_MARKER, FORMAT_NAME, FORMAT_VERSION, JOURNAL_DIR, LOCK_NAME, STATUS_FAILED, \
    STATUS_OK, TMP_DIR, chunk_key, group_metadata, has_checksums, is_store_file
from .store.images import LAYOUTS, image_layout, images_metadata
from .store.journal import journal_key, read_journal
from .store.lock import lock_store
from .store.shards import DEFAULT_SITES_PER_SHARD, DEFAULT_TILE, ShardLayout
from .store.tables import read_small_array
from .datasets import get_dataset
from .processes import require_importable_main
from .params import parse_count
from .errors import DiskFullError, ImageError, MetadataError, StoreDamagedError, StoreError
from .schema import CHANNEL_NAMES, CHANNELS, DATASETS, N_CHANNELS, PATH_COLUMNS, PIXEL_MEAN_COLUMNS, \
    PIXEL_STD_COLUMNS

__all__ = ["ingest", "repair_store", "IngestReport", "RepairReport", "FailedSite", "DEFAULT_CODEC", "DEFAULT_LAYOUT",
           "VERIFY_ATOL", "ON_ERROR"]

log = logging.getLogger(__name__)

# Chosen by benchmarks/store_read.py (docs/performance.md): blosc-lz4 stores ~0.65x of raw and decodes several
# times faster than zstd-1, which stores about the same.
DEFAULT_CODEC = "lz4"
# Chosen by benchmarks/store_read.py and benchmarks/pipeline.py (docs/data_format.md#choosing-a-layout): a shard of
# DEFAULT_SITES_PER_SHARD sites per file, DEFAULT_TILE x DEFAULT_TILE tiles, so a 224 crop of an lz4 site decodes
# the ~9 tiles it overlaps instead of the whole site, and an object store holds 32x fewer objects.
DEFAULT_LAYOUT = "sharded"
# |ours - pixel_stats.csv| allowed on each channel's mean and std (0..255 scale). Kaggle's numbers come from the
# same 8-bit PNGs, so honest differences are rounding of the printed value and ddof; a wrong file, swapped
# channel or truncated image moves them by far more.
VERIFY_ATOL = 0.1
ON_ERROR: tuple[str, ...] = ("fail", "skip")


@dataclass(frozen=True)
class FailedSite:
    """A site ingest could not store (recorded in the store's `failed` attribute)."""

    index: int
    id_code: str
    site: int
    file: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class IngestReport:
    """What one `ingest` call did. `n_ok + n_failed == n_sites` when `complete`."""

    store: str
    n_sites: int          # sites in the plan (= images in the store's array)
    n_ok: int             # sites stored successfully, over all runs
    n_failed: int         # sites skipped with --on-error skip, over all runs
    n_written: int        # sites this call processed (the rest were done by an earlier, interrupted run)
    seconds: float
    codec: str
    workers: int
    complete: bool
    failed: tuple[FailedSite, ...] = field(default_factory=tuple)
    sites_seconds: float = 0.0  # of `seconds`, the time spent on sites (the rest: plan, skeleton, finalize)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failed"] = [f.to_dict() for f in self.failed]
        return d


# ----------------------------------------------------------------------------------------------- per-site work
@dataclass(frozen=True)
class _BatchJob:
    """Everything a worker needs for one batch (picklable; no open handles)."""

    store: str
    storage_options: dict[str, Any]
    raw_dir: str
    images: dict[str, Any]                        # images/zarr.json: where each site's chunk goes and its codecs
    shape: tuple[int, int]
    indices: tuple[int, ...]
    id_codes: tuple[str, ...]
    sites: tuple[int, ...]
    paths: tuple[tuple[str, ...], ...]            # 6 relative PNG paths per site
    expected: tuple[tuple[float, ...] | None, ...]  # 12 numbers (6 means, 6 stds) from pixel_stats.csv, or None
    verify: bool
    on_error: str
    shard: int | None = None                      # sharded layout: the shard this job writes whole
    retried: frozenset[int] = frozenset()         # sites that failed in an earlier run: still bad -> failed again


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}


def _check_png_header(path: str, data: bytes, shape: tuple[int, int]) -> None:
    """Validate the IHDR chunk (always first in a PNG): 8-bit, grayscale, H x W. Costs microseconds."""
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        kind = "empty" if not data else "truncated" if data[:8] == _PNG_SIGNATURE[:len(data[:8])] else "not a PNG"
        raise ImageError(f"{path}: not a readable PNG ({kind}: {len(data)} bytes); the file is corrupt or "
                         f"truncated")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    depth, colour = data[24], data[25]
    if colour != 0 or depth != 8:
        raise ImageError(f"{path}: expected an 8-bit single-channel grayscale PNG, found {depth}-bit "
                         f"{_COLOUR_TYPES.get(colour, f'colour type {colour}')} (PNG colour type {colour})")
    if (height, width) != shape:
        raise ImageError(f"{path}: expected {shape[0]}x{shape[1]} (HxW) pixels, found {height}x{width}")


def _decode_png(path: str, shape: tuple[int, int]) -> np.ndarray:
    """One channel PNG -> (H, W) uint8, or ImageError naming the file and what is wrong with it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageError(f"{path}: channel file is missing") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc})") from None
    _check_png_header(path, data, shape)
    arr = _fast_decode(data)
    if arr is None:  # cv2 missing or refused: PIL decodes and names the problem
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                arr = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(f"{path}: not a readable PNG ({type(exc).__name__}: {exc}); the file is corrupt or "
                             f"truncated") from None
    if arr.shape != shape or arr.dtype != np.uint8:
        raise ImageError(f"{path}: decoded to {arr.dtype} {arr.shape}, expected uint8 {shape}")
    return arr


def _fast_decode(data: bytes) -> np.ndarray | None:
    """cv2 decodes PNG faster than PIL; returns None when unavailable or on any decode failure."""
    try:
        import cv2
    except ImportError:
        return None
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 2 or arr.dtype != np.uint8:
        return None
    return arr


def _site_sums(planes: Sequence[np.ndarray]) -> tuple[list[int], list[int]]:
    """Exact per-channel pixel sum and sum of squares (integers; 255**2 fits uint16, totals uint64)."""
    sums = [int(p.sum(dtype=np.uint64)) for p in planes]
    sumsq = [int(np.square(p, dtype=np.uint16).sum(dtype=np.uint64)) for p in planes]
    return sums, sumsq


def _verify(job: _BatchJob, k: int, sums: list[int], sumsq: list[int], npix: int) -> None:
    exp = job.expected[k]
    if exp is None:
        return
    for c in range(N_CHANNELS):
        mean = sums[c] / npix
        std = math.sqrt(max(sumsq[c] / npix - mean * mean, 0.0))
        for what, ours, theirs in (("mean", mean, exp[c]), ("std", std, exp[N_CHANNELS + c])):
            if not math.isnan(theirs) and abs(ours - theirs) > VERIFY_ATOL:
                raise ImageError(
                    f"{os.path.join(job.raw_dir, job.paths[k][c])}: pixel {what} {ours:.4f} differs from "
                    f"pixel_stats.csv ({theirs:.4f}) by more than {VERIFY_ATOL}; the file does not match the "
                    f"data set's statistics (wrong, swapped or damaged image)")


def _run_batch(job: _BatchJob) -> list[dict[str, Any]]:
    """Decode, validate, verify and store the sites of one batch; then journal the batch. Runs in a worker.

    This thread only reads and decodes PNGs; a writer thread computes the statistics, verifies, interleaves the
    channels, encodes and writes site k while site k+1 decodes (decode, numpy reductions, compression and file
    I/O all release the GIL), so on a machine with a spare core ingest runs at nearly decode speed.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    sharded = job.shard is not None
    layout = ShardLayout.from_metadata(job.images) if sharded else None
    codec = layout.codec if layout is not None else chunk_codec(job.images["codecs"])
    target = FileTarget(job.store, job.storage_options)
    tiles: dict[int, list[bytes]] = {}  # sharded: encoded tiles by site within the shard
    H, W = job.shape
    buffers = [np.empty((H, W, N_CHANNELS), dtype=np.uint8) for _ in range(2)]  # double buffering

    def store(k: int, planes: list[np.ndarray], site: np.ndarray) -> dict[str, Any]:
        sums, sumsq = _site_sums(planes)
        if job.verify:
            _verify(job, k, sums, sumsq, H * W)
        for c, p in enumerate(planes):
            site[:, :, c] = p
        i = job.indices[k]
        if layout is not None:  # the shard is written whole once every site of it is encoded
            tiles[layout.locate(i)[1]] = layout.encode_tiles(site)
        else:
            target.write(f"images/{chunk_key(job.images, (i, 0, 0, 0))}", codec.encode(site))
        return {"i": i, "ok": True, "sum": sums, "sumsq": sumsq}

    def failed(k: int, exc: ImageError) -> dict[str, Any]:
        if job.on_error == "fail" and job.indices[k] not in job.retried:
            raise exc
        return {"i": job.indices[k], "ok": False, "id_code": job.id_codes[k], "site": job.sites[k],
                "file": str(exc).split(": ", 1)[0], "reason": str(exc)}

    results: list[Future[dict[str, Any]] | dict[str, Any]] = []
    slots: list[Future[dict[str, Any]] | None] = [None, None]
    with ThreadPoolExecutor(1, thread_name_prefix="cellio-writer") as writer:
        for k in range(len(job.indices)):
            try:
                planes = [_decode_png(os.path.join(job.raw_dir, rel), job.shape) for rel in job.paths[k]]
            except ImageError as exc:
                results.append(failed(k, exc))
                continue
            slot = k % 2
            prev = slots[slot]
            if prev is not None:  # the buffer is free once its previous site is written
                try:
                    prev.result()
                except ImageError:
                    pass  # recorded (or raised) below, in site order
            slots[slot] = writer.submit(store, k, planes, buffers[slot])
            results.append(slots[slot])
        entries = []
        for k, r in enumerate(results):  # exactly one result per site, in site order
            if isinstance(r, dict):
                entries.append(r)
                continue
            try:
                entries.append(r.result())
            except ImageError as exc:
                entries.append(failed(k, exc))
    if layout is not None:  # one atomic write of the whole shard (failed sites are simply not stored in it)
        target.write(f"images/{layout.shard_key(job.shard)}", layout.assemble(tiles))
    # the journal record comes after every chunk of the batch is in place: recorded => durable
    target.write_json(journal_key(job.indices[0], job.indices[-1]), {"entries": entries})
    return entries


def _worker_init() -> None:
    # Ctrl-C reaches the whole process group: only the parent acts on it (finishes or stops the batches in
    # flight); a worker killed mid-batch would print its traceback and could leave the pool hanging
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread (a Dask worker): Dask handles its own signals
        pass
    try:  # one decode per process; cv2's own threads would fight the other workers for the cores
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    import numcodecs.blosc

    numcodecs.blosc.use_threads = False


# ----------------------------------------------------------------------------------------------- the plan
def _as_tuple(value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    out = tuple(v.strip() for v in value if v.strip())
    return out or None


def _plan(raw: Path, datasets: tuple[str, ...], experiments: tuple[str, ...] | None,
          cell_types: tuple[str, ...] | None, limit: int | None) -> pd.DataFrame:
    meta = get_dataset("rxrx1").read_sites(raw)
    for name, wanted, col in (("datasets", datasets, "dataset"), ("experiments", experiments, "experiment"),
                              ("cell_types", cell_types, "cell_type")):
        if wanted is None:
            continue
        unknown = sorted(set(wanted) - set(meta[col]))
        if unknown and col == "dataset" and set(wanted) & set(meta[col]):
            # a split with no sites (a train-only set, say) is not an error; an empty selection is, below
            log.warning("%s: no %s sites; ingesting %s", raw, "/".join(unknown), sorted(set(wanted) - set(unknown)))
        elif unknown:
            raise MetadataError(f"{name}={list(wanted)}: {unknown} not found in {raw}; available: "
                                f"{sorted(set(meta[col]))}")
        meta = meta[meta[col].isin(wanted)]
    if limit is not None:
        if limit < 1:
            raise MetadataError(f"limit={limit}: expected a positive number of sites")
        meta = meta.head(limit)
    if meta.empty:
        raise MetadataError(f"{raw}: no sites left after filtering (datasets={datasets}, experiments={experiments}, "
                            f"cell_types={cell_types})")
    return meta.reset_index(drop=True)


def _probe_shape(raw: Path, plan: pd.DataFrame) -> tuple[int, int]:
    """The (H, W) most of the plan's w1 images have (headers only); a wrong-size file then fails on its own."""
    from PIL import Image

    found: Counter[tuple[int, int]] = Counter()
    for rel in plan[PATH_COLUMNS[0]].iloc[np.linspace(0, len(plan) - 1, min(len(plan), 25)).astype(int)]:
        try:
            with Image.open(raw / rel) as im:
                found[(im.size[1], im.size[0])] += 1
        except (OSError, SyntaxError, ValueError):
            continue
    if not found:
        raise ImageError(f"{raw}: none of the probed w1 images could be read to find the image size")
    return found.most_common(1)[0][0]


# ----------------------------------------------------------------------------------------------- skeleton
def _ingest_params(codec: str, verify: bool, datasets: tuple[str, ...],
                   experiments: tuple[str, ...] | None, cell_types: tuple[str, ...] | None,
                   limit: int | None, layout: dict[str, Any] | None = None) -> dict[str, Any]:
    params = {"codec": codec, "verify": verify, "verify_atol": VERIFY_ATOL, "datasets": list(datasets),
              "experiments": list(experiments) if experiments else None,
              "cell_types": list(cell_types) if cell_types else None, "limit": limit}
    if layout is not None and layout["layout"] != "chunked":  # chunked stores keep the 1.1 params (resumable)
        params["layout"] = dict(layout)
    return params


def _layout_params(layout: str, sites_per_shard: int, tile: int | tuple[int, int] | None) -> dict[str, Any]:
    """The image layout as recorded in the ingest arguments (tile as asked; clipped to the sites later)."""
    if layout not in LAYOUTS:
        raise StoreError(f"layout {layout!r} is unknown; expected one of {', '.join(LAYOUTS)}")
    if layout == "chunked":
        return {"layout": "chunked"}
    if int(sites_per_shard) < 1:
        raise StoreError(f"sites_per_shard={sites_per_shard}: expected a positive number of sites per shard")
    t = DEFAULT_TILE if tile is None else tile
    t = [int(t), int(t)] if isinstance(t, int) else [int(v) for v in t]
    if len(t) != 2 or min(t) < 1:
        raise StoreError(f"tile={tile!r}: expected a positive tile size in pixels, or (height, width)")
    return {"layout": "sharded", "sites_per_shard": int(sites_per_shard), "tile": t}


def _images_meta_for(attrs: dict[str, Any], n: int, shape: tuple[int, int], codec: str,
                     checksum: bool) -> dict[str, Any]:
    """images/zarr.json of a store from its ingest arguments (chunked when they name no layout: format <= 1.1)."""
    lay = attrs.get("ingest", {}).get("layout") or {"layout": "chunked"}
    if lay["layout"] == "sharded":
        return images_metadata(n, (*shape, N_CHANNELS), codec, checksum, "sharded", int(lay["sites_per_shard"]),
                               tuple(lay["tile"]))
    return images_metadata(n, (*shape, N_CHANNELS), codec, checksum)


def _create_skeleton(target: FileTarget, plan: pd.DataFrame, shape: tuple[int, int], params: dict[str, Any],
                     raw: Path) -> dict[str, Any]:
    """Array metadata, the site table and the root attributes (complete=false), guarded by CREATING_MARKER.

    Every file is written in place (atomic replace), so rebuilding over an interrupted skeleton deletes nothing.
    """
    target.write(CREATING_MARKER, b"")
    H, W = shape
    images = _images_meta_for({"ingest": params}, len(plan), shape, params["codec"], True)
    target.write_json("images/zarr.json", images)
    target.write_json("sites/zarr.json", group_metadata())
    columns = []
    for name in plan.columns:
        kind = column_kind(plan[name])
        target.write_small_array(f"sites/{name}", encode_column(plan[name], kind))
        columns.append({"name": name, "dtype": kind})
    attrs = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "complete": False,
        "layout": "NHWC",
        "image_chunks": _image_chunks(images),
        "image_shape": [H, W, N_CHANNELS],
        "channels": list(CHANNELS),
        "channel_names": list(CHANNEL_NAMES),
        "codec": params["codec"],
        "n_sites": len(plan),
        "pixels_per_site": H * W,
        "site_columns": columns,
        "source": {"raw_dir": str(raw.resolve()), "kind": "rxrx1-png"},
        "ingest": params,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dataset_layout": get_dataset("rxrx1").layout.replace(site_shape=(H, W)).to_dict(),
    }
    _write_root(target, attrs)
    target.remove(CREATING_MARKER)
    return attrs


def _image_chunks(images: dict[str, Any]) -> dict[str, Any]:
    """The root attribute `image_chunks` (format 1.2): how sites are laid out in images/."""
    if image_layout(images) != "sharded":
        return {"layout": "chunked"}
    lay = ShardLayout.from_metadata(images)
    return {"layout": "sharded", "sites_per_shard": lay.sites, "tile": list(lay.tile)}


def _write_root(target: FileTarget, attrs: dict[str, Any]) -> None:
    target.write_json("zarr.json", group_metadata(attrs))


def _read_root(target: FileTarget) -> dict[str, Any] | None:
    """The root attributes of a cellio store; None when zarr.json is missing, torn or not cellio's."""
    try:
        with target.fs.open(target.key("zarr.json"), "rb") as f:
            node = json.loads(f.read())
    except (FileNotFoundError, ValueError):
        return None
    attrs = node.get("attributes", {}) if isinstance(node, dict) else {}
    return attrs if attrs.get("format") == FORMAT_NAME else None


def _examples(items: Sequence[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _prepare(target: FileTarget, plan: pd.DataFrame, raw: Path, params: dict[str, Any],
             image_size: tuple[int, int] | None) -> dict[str, Any]:
    """Create the skeleton, or validate an existing one for resuming. Never deletes a file cellio did not write."""
    files = target.files(skip=("images/c",))
    foreign = [f for f in files if not is_store_file(f)]
    if CREATING_MARKER in files:
        if foreign:
            raise StoreError(f"{target.path} holds a {CREATING_MARKER} marker (a `cellio ingest` stopped while "
                             f"creating a store here) and files cellio does not write ({_examples(foreign)}); "
                             f"nothing was changed: move those files away, or choose a new store path")
        log.info("%s: skeleton of an interrupted run found; rebuilding it in place", target.path)
        target.remove(JOURNAL_DIR, recursive=True)  # cellio's own; no batch can have finished before a skeleton
        return _new_store(target, plan, raw, params, image_size)
    attrs = _read_root(target) if "zarr.json" in files else None
    if attrs is None:
        if foreign or "zarr.json" in files:
            shown = foreign or ["zarr.json"]
            raise StoreError(f"{target.path} exists and is not a cellio store (it holds {_examples(shown)}); choose "
                             f"a new path or delete it")
        ours = [f for f in files if f != LOCK_NAME and not f.startswith(TMP_DIR + "/")]
        if ours:
            raise StoreError(f"{target.path} holds cellio store files ({_examples(ours)}) but no root zarr.json: a "
                             f"damaged store, not resumable; delete it or choose a new path")
        return _new_store(target, plan, raw, params, image_size)
    if attrs.get("ingest") != params:
        raise StoreError(f"{target.path} was ingested with {attrs.get('ingest')}, this call asks for {params}; "
                         f"rerun with the original arguments to resume, or use a new store path")
    _check_plan(target, attrs, plan)
    return attrs


def _new_store(target: FileTarget, plan: pd.DataFrame, raw: Path, params: dict[str, Any],
               image_size: tuple[int, int] | None) -> dict[str, Any]:
    shape = tuple(image_size or _probe_shape(raw, plan))
    _check_space(target, shape, params["codec"], len(plan))  # before the first byte
    return _create_skeleton(target, plan, shape, params, raw)


def _check_plan(target: FileTarget, attrs: dict[str, Any], plan: pd.DataFrame) -> None:
    if attrs["n_sites"] != len(plan):
        raise StoreError(f"{target.path} plans {attrs['n_sites']} sites, the raw data now gives {len(plan)}; "
                         f"the source changed since the store was started")
    ids = _decode_ids(target)
    mine = (plan["id_code"] + "_s" + plan["site"].astype(str)).tolist()
    if ids != mine:
        first = next(k for k, (a, b) in enumerate(zip(ids, mine)) if a != b)
        raise StoreError(f"{target.path}: site {first} is {ids[first]} in the store but {mine[first]} in the raw "
                         f"data; the source changed since the store was started")


def _decode_ids(target: FileTarget) -> list[str]:
    idc = decode_strings(read_small_array(target.fs, target.key("sites/id_code")))
    site = read_small_array(target.fs, target.key("sites/site"))
    return [f"{a}_s{int(b)}" for a, b in zip(idc, site)]


def _write_tables(target: FileTarget, status: np.ndarray, sums: np.ndarray, sumsq: np.ndarray,
                  npix: float, checksum: bool = True) -> None:
    """status and stats/* from per-site integer sums (finalize, repair), in the store's format version."""
    mean = sums.astype(np.float64) / npix
    std = np.sqrt(np.maximum(sumsq.astype(np.float64) / npix - mean * mean, 0.0))
    target.write_json("stats/zarr.json", group_metadata())
    for name, data in (("status", status), ("stats/sum", sums), ("stats/sumsq", sumsq), ("stats/mean", mean),
                       ("stats/std", std)):
        target.write_small_array(name, data, checksum)


def _finalize(target: FileTarget, attrs: dict[str, Any], plan: pd.DataFrame) -> tuple[dict[str, Any], list[FailedSite]]:
    done = read_journal(target.fs, target.root)
    n = len(plan)
    missing = [i for i in range(n) if i not in done]
    if missing:
        raise StoreError(f"{target.path}: {len(missing)} sites have no completion record (first: {missing[0]}); "
                         f"rerun `cellio ingest` to finish them")
    status = np.zeros(n, dtype=np.uint8)
    sums = np.zeros((n, N_CHANNELS), dtype=np.uint64)
    sumsq = np.zeros((n, N_CHANNELS), dtype=np.uint64)
    failed: list[FailedSite] = []
    for i in range(n):
        e = done[i]
        if e["ok"]:
            status[i] = STATUS_OK
            sums[i], sumsq[i] = e["sum"], e["sumsq"]
        else:
            status[i] = STATUS_FAILED
            failed.append(FailedSite(i, e["id_code"], int(e["site"]), e["file"], e["reason"]))
    _write_tables(target, status, sums, sumsq, float(attrs["pixels_per_site"]), has_checksums(attrs))
    attrs = dict(attrs)
    attrs.update(complete=True, n_ok=int((status == STATUS_OK).sum()), n_failed=len(failed),
                 failed=[f.to_dict() for f in failed])
    _write_root(target, attrs)  # the commit point: from here on the store opens as complete
    target.remove(JOURNAL_DIR, recursive=True)
    target.remove(TMP_DIR, recursive=True)
    return attrs, failed


def _estimate_bytes(shape: Sequence[int], codec: str, n_sites: int) -> int:
    """Bytes `n_sites` more sites take: chunks (COMPRESSION_ESTIMATE of raw), checksums, journal, tables."""
    H, W = int(shape[0]), int(shape[1])
    return int(n_sites * (H * W * N_CHANNELS * get_codec(codec).size_estimate + 4 + 512))


def _check_space(target: FileTarget, shape: Sequence[int], codec: str, n_sites: int) -> None:
    free = target.free_bytes()
    needed = _estimate_bytes(shape, codec, n_sites)
    if free is not None and free < needed:
        raise DiskFullError(target.path, needed, free, what=f"writing {n_sites} sites ({codec}, estimated at "
                            f"{get_codec(codec).size_estimate}x of raw)",
                            hint="no site was written; free some space (or choose another path) and rerun")


# ----------------------------------------------------------------------------------------------- entry point
def ingest(raw: str | os.PathLike[str], store_path: str | os.PathLike[str], *, codec: str = DEFAULT_CODEC,
           workers: int | None = None, on_error: str = "fail", experiments: str | Iterable[str] | None = None,
           cell_types: str | Iterable[str] | None = None, datasets: str | Iterable[str] = DATASETS,
           limit: int | None = None, scheduler: Any = None, verify: bool = True, progress: bool = True,
           storage_options: dict[str, Any] | None = None, batch_size: int | None = None,
           image_size: tuple[int, int] | None = None, layout: str = DEFAULT_LAYOUT,
           sites_per_shard: int = DEFAULT_SITES_PER_SHARD, tile: int | tuple[int, int] | None = None) -> IngestReport:
    """Ingest an RxRx1-layout directory into a Zarr v3 store; resumes an interrupted run of the same call.

    A rerun of a finished store retries the sites an earlier run skipped (on_error="skip"; their files may have
    been fixed since): each is stored now, or recorded as failed again; nothing else is redone (a sharded store
    rewrites their shards whole, with the same bytes for the other sites).

    scheduler: a Dask distributed address ("tcp://host:port") or Client; the same batch tasks then run on the
    cluster, whose workers must see `raw` and `store_path` (shared file system or fsspec URL, e.g. s3://; pass
    credentials and endpoints in `storage_options`, fsspec form, or the usual environment variables).
    layout: "sharded" (default: `sites_per_shard` sites per shard file, an inner chunk per `tile` x `tile` tile)
    or "chunked" (one chunk file per site, the format 1.1 layout); docs/data_format.md says which to choose.
    Raises StoreLockedError (naming the holder) while another ingest writes the same store, DiskFullError when the
    estimate does not fit or a write hits ENOSPC (the rerun resumes), ImageError for a bad PNG (on_error="fail").
    """
    t0 = time.perf_counter()
    workers, batch_size = parse_count("workers", workers), parse_count("batch_size", batch_size)
    n_workers = workers or os.cpu_count() or 1
    if scheduler is None and n_workers > 1:  # before any work: a worker would run an unguarded script again
        require_importable_main(f"cellio.ingest(workers={n_workers})", _pool_method())
    get_codec(codec)  # StoreError naming the registered codecs
    if on_error not in ON_ERROR:
        raise StoreError(f"on_error {on_error!r} is unknown; expected one of {', '.join(ON_ERROR)}")
    raw = Path(raw)
    if not raw.is_dir():
        raise MetadataError(f"{raw}: raw data directory not found (expected the unzipped RxRx1 layout)")
    _check_outside(raw, store_path)
    ds = _as_tuple(datasets) or DATASETS
    bad = sorted(set(ds) - set(DATASETS))
    if bad:
        raise MetadataError(f"datasets={list(ds)}: {bad} unknown; expected a subset of {list(DATASETS)}")
    exps, cts = _as_tuple(experiments), _as_tuple(cell_types)
    plan = _plan(raw, ds, exps, cts, limit)
    params = _ingest_params(codec, verify, ds, exps, cts, limit, _layout_params(layout, sites_per_shard, tile))
    target = FileTarget(str(store_path), storage_options)
    with _locked_root(target, "ingest") as lock:
        attrs = _prepare(target, plan, raw, params, image_size)
        if attrs.get("complete"):
            target.remove(JOURNAL_DIR, recursive=True)  # a retry killed earlier: its records are not committed
            target.remove(TMP_DIR, recursive=True)
            retried = sorted(int(f["index"]) for f in attrs.get("failed", []))
            if not retried:
                log.info("%s is already complete", target.path)
                return IngestReport(str(store_path), len(plan), attrs["n_ok"], attrs["n_failed"], 0,
                                    time.perf_counter() - t0, codec, n_workers, True)
            # sites skipped (on_error="skip") by an earlier run: their files may have been fixed since
            log.info("%s is complete but for %d failed sites: trying them again", target.path, len(retried))
            t1 = time.perf_counter()
            todo = _store_again(target, attrs, plan, raw, retried, verify, batch_size, n_workers, scheduler,
                                progress, lock)
            sites_seconds = time.perf_counter() - t1
            lock.check()
            attrs, failed = _commit_sites(target, attrs, todo)
            still = [f.index for f in failed if f.index in set(retried)]
            log.info("%s: %d of %d failed sites stored now", target.path, len(retried) - len(still), len(retried))
            return IngestReport(str(store_path), len(plan), attrs["n_ok"], attrs["n_failed"], len(todo),
                                time.perf_counter() - t0, codec, n_workers, True, tuple(failed), sites_seconds)

        done = read_journal(target.fs, target.root)
        todo = [i for i in range(len(plan)) if i not in done]
        if done:
            log.info("%s: resuming, %d of %d sites already done", target.path, len(done), len(plan))
        _check_space(target, attrs["image_shape"], attrs["codec"], len(todo))
        jobs = _make_jobs(plan, todo, raw, target, attrs, verify, on_error, batch_size, n_workers)
        t1 = time.perf_counter()
        _run_checked(target, attrs, jobs, len(todo), n_workers, scheduler, progress, lock)
        sites_seconds = time.perf_counter() - t1
        lock.check()  # nobody took the store from us: safe to commit
        attrs, failed = _finalize_checked(target, attrs, plan)
    seconds = time.perf_counter() - t0
    log.info("ingested %d sites into %s in %.1f s (%.1f s on sites; %d failed)", len(todo), target.path, seconds,
             sites_seconds, len(failed))
    return IngestReport(str(store_path), len(plan), attrs["n_ok"], attrs["n_failed"], len(todo), seconds, codec,
                        n_workers, True, tuple(failed), sites_seconds)


def _check_outside(raw: Path, store_path: str | os.PathLike[str]) -> None:
    """A local store must not lie in the raw directory it is made from: the raw set would then hold a store of
    itself (a copy or a re-download of the raw data carries it along, a cleanup of either touches the other)."""
    if is_url(str(store_path)):
        return
    src, dst = raw.resolve(), Path(store_path).resolve()
    if dst == src or src in dst.parents:
        raise StoreError(f"{store_path}: the store would be written inside the raw directory {raw} it is made "
                         f"from; choose a store path outside it (e.g. {src.parent / (src.name + '.zarr')})")


@contextmanager
def _locked_root(target: FileTarget, purpose: str) -> Iterator[Any]:
    """The store's writer lock, creating the root directory for it (and removing it again if still empty)."""
    created = False
    if target.local:
        if os.path.exists(target.root) and not os.path.isdir(target.root):
            raise StoreError(f"{target.path} is a file, not a store directory; choose another path")
        if not os.path.isdir(target.root):
            os.makedirs(target.root, exist_ok=True)
            created = True
    try:
        with lock_store(target, purpose) as lock:
            yield lock
    finally:
        if created:
            try:
                os.rmdir(target.root)  # only if nothing was written: rmdir refuses non-empty directories
            except OSError:
                pass


def _run_checked(target: FileTarget, attrs: dict[str, Any], jobs: list[_BatchJob], total: int, n_workers: int,
                 scheduler: Any, progress: bool, lock: Any) -> None:
    """`_run`, with ENOSPC reported as what the rest of the job needs (the rerun resumes from the journal)."""
    try:
        _run(jobs, total, n_workers, scheduler, progress, lock)
    except DiskFullError as exc:
        left = int(attrs["n_sites"]) - len(read_journal(target.fs, target.root))
        raise DiskFullError(target.path, _estimate_bytes(attrs["image_shape"], attrs["codec"], left),
                            target.free_bytes(),
                            what=f"the rest of the ingest ({left} sites; writing {exc.path} failed)") from None


def _finalize_checked(target: FileTarget, attrs: dict[str, Any],
                      plan: pd.DataFrame) -> tuple[dict[str, Any], list[FailedSite]]:
    try:
        return _finalize(target, attrs, plan)
    except DiskFullError as exc:
        raise DiskFullError(target.path, 64 * len(plan) * N_CHANNELS, target.free_bytes(),
                            what=f"finishing the store (writing {exc.path} failed)") from None


def _make_jobs(plan: pd.DataFrame, todo: list[int], raw: Path, target: FileTarget, attrs: dict[str, Any],
               verify: bool, on_error: str, batch_size: int | None, n_workers: int,
               retried: Iterable[int] = ()) -> list[_BatchJob]:
    if batch_size is None:  # ~4 batches per worker for balance, at most 16 sites lost to a kill per worker
        batch_size = max(1, min(16, math.ceil(len(todo) / (4 * n_workers))))
    paths = plan[list(PATH_COLUMNS)].to_numpy()
    stats = plan[list(PIXEL_MEAN_COLUMNS) + list(PIXEL_STD_COLUMNS)].to_numpy(dtype=np.float64)
    shape = (int(attrs["image_shape"][0]), int(attrs["image_shape"][1]))
    images = _read_images_meta(target, attrs, shape)
    retried = frozenset(int(i) for i in retried)
    jobs = []
    if image_layout(images) == "sharded":  # a job per shard, written whole (a shard is also the resume unit)
        per = ShardLayout.from_metadata(images).sites
        by_shard: dict[int, list[int]] = {}
        for i in todo:
            by_shard.setdefault(i // per, []).append(i)
        for shard, idx in sorted(by_shard.items()):
            jobs.append(_BatchJob(
                store=target.path, storage_options=target.storage_options, raw_dir=str(raw.resolve()),
                images=images, shape=shape, indices=tuple(idx), id_codes=tuple(plan["id_code"].iloc[idx]),
                sites=tuple(int(s) for s in plan["site"].iloc[idx]), paths=tuple(tuple(paths[i]) for i in idx),
                expected=tuple(None if np.isnan(stats[i]).all() else tuple(float(v) for v in stats[i])
                               for i in idx),
                verify=verify, on_error=on_error, shard=shard, retried=retried & set(idx)))
        return jobs
    for start in range(0, len(todo), batch_size):
        idx = todo[start:start + batch_size]
        jobs.append(_BatchJob(
            store=target.path, storage_options=target.storage_options, raw_dir=str(raw.resolve()), images=images,
            shape=shape, indices=tuple(idx), id_codes=tuple(plan["id_code"].iloc[idx]),
            sites=tuple(int(s) for s in plan["site"].iloc[idx]),
            paths=tuple(tuple(paths[i]) for i in idx),
            expected=tuple(None if np.isnan(stats[i]).all() else tuple(float(v) for v in stats[i]) for i in idx),
            verify=verify, on_error=on_error, retried=retried & set(idx)))
    return jobs


def _read_images_meta(target: FileTarget, attrs: dict[str, Any], shape: tuple[int, int]) -> dict[str, Any]:
    """The store's own images/zarr.json (a 1.0 store resumed or repaired keeps its codecs: no checksums)."""
    try:
        with target.fs.open(target.key("images/zarr.json"), "rb") as f:
            return json.loads(f.read())
    except (FileNotFoundError, ValueError):
        return _images_meta_for(attrs, int(attrs["n_sites"]), shape, attrs["codec"], has_checksums(attrs))


def _run(jobs: list[_BatchJob], total: int, n_workers: int, scheduler: Any, progress: bool,
         lock: Any = None) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="site", desc="ingest", disable=not progress)
    check = lock.check if lock is not None else (lambda: None)
    try:
        if scheduler is not None:
            _run_dask(jobs, scheduler, bar)
        elif n_workers == 1 or len(jobs) == 1:  # in this process; its global cv2/blosc settings stay untouched
            for job in jobs:
                check()
                _run_batch(job)
                bar.update(len(job.indices))
        else:
            _run_pool(jobs, n_workers, bar, check)
    finally:
        bar.close()


def _start_forkserver_ignoring_sigint() -> None:
    """Start the forkserver with SIGINT ignored, so every worker it forks ignores SIGINT from birth: a Ctrl-C that
    lands while a worker is still starting (before `_worker_init` runs) would print that worker's traceback. An
    ignored SIGINT survives exec, and the forkserver hands its children the disposition it started with (a
    forkserver some other code started earlier is reused as it is: then `_worker_init` is the only guard)."""
    import threading
    from multiprocessing import forkserver

    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)


def _pool_method() -> str:
    """forkserver: workers fork from a clean server process, never from this one (which may hold zarr's event loop
    thread); spawn where fork does not exist. Both run the main module again in every worker
    (cellio/processes/main_module.py)."""
    import multiprocessing as mp

    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def _run_pool(jobs: list[_BatchJob], n_workers: int, bar: Any, check: Any = lambda: None) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    method = _pool_method()
    ctx = mp.get_context(method)
    if method == "forkserver":
        _start_forkserver_ignoring_sigint()
    with ProcessPoolExecutor(min(n_workers, len(jobs)), mp_context=ctx, initializer=_worker_init) as pool:
        pending = {pool.submit(_run_batch, job): job for job in jobs}
        try:
            # each batch as it completes: the bar moves and the lock is checked batch by batch (waiting for
            # FIRST_EXCEPTION returned only when every batch was done, so the bar sat at 0 for the whole ingest)
            checked = time.monotonic()
            for fut in as_completed(list(pending)):
                job = pending.pop(fut)
                fut.result()  # re-raises a worker's ImageError (on_error="fail") here
                bar.update(len(job.indices))
                if time.monotonic() - checked >= 0.5 or not pending:  # (a remote lock's check is a read)
                    check()
                    checked = time.monotonic()
        except KeyboardInterrupt:
            # workers ignore SIGINT (_worker_init): let the batches in flight finish and journal themselves, so
            # one Ctrl-C stops cleanly and the rerun redoes only what never started; a second Ctrl-C stops now
            running = sum(f.running() for f in pending)
            for fut in pending:
                fut.cancel()
            log.warning("interrupted: finishing the %d batches in flight (Ctrl-C again to stop them now); rerun "
                        "the same command to resume", running)
            try:
                pool.shutdown(wait=True, cancel_futures=True)
            except KeyboardInterrupt:
                _terminate(pool)
            raise
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


def _terminate(pool: Any) -> None:
    """Kill a ProcessPoolExecutor's workers now (their unfinished batches have no journal record: redone)."""
    for proc in list(getattr(pool, "_processes", {}).values()):  # the executor has no public kill
        proc.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
@dataclass(frozen=True)
class RepairReport:
    """What `repair_store` did: the sites re-ingested, the arrays rewritten, and the verification afterwards."""

    store: str
    repaired: tuple[int, ...]    # site indices re-ingested from the PNGs
    rewritten: tuple[str, ...]   # arrays / metadata files rewritten
    seconds: float
    after: Any                   # cellio.verification.VerifyReport of the repaired store

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "repaired": list(self.repaired), "rewritten": list(self.rewritten),
                "seconds": round(self.seconds, 3), "after": self.after.to_dict()}


def repair_store(raw: str | os.PathLike[str], store_path: str | os.PathLike[str], *, report: Any = None,
           workers: int | None = None, threads: int | None = None, progress: bool = True,
           batch_size: int | None = None, storage_options: dict[str, Any] | None = None) -> RepairReport:
    """Rewrite what `cellio.verification.verify_store` found damaged in a finished store, then verify it again.

    Damaged sites are re-ingested from `raw` with the ingest's own batch tasks (same decode, checks, atomic chunk
    writes and journal; the store's codec); a damaged site-table column or images/zarr.json is rewritten from the
    plan of the store's original ingest arguments; status and stats/ are rewritten from the stored (or, when those
    are damaged, the freshly verified) per-site sums. Holds the store's writer lock throughout. `report`: a full
    VerifyReport of the store to act on (None: verify first). The returned report's `after` says whether the
    store is whole now; `last_verified` records it.
    """
    from .store.verify import verify_store, write_last_verified

    t0 = time.perf_counter()
    workers, batch_size = parse_count("workers", workers), parse_count("batch_size", batch_size)
    threads = parse_count("threads", threads)
    n_workers = workers or os.cpu_count() or 1
    if n_workers > 1:
        require_importable_main(f"cellio.repair_store(workers={n_workers})", _pool_method())
    raw = Path(raw)
    if not raw.is_dir():
        raise MetadataError(f"{raw}: raw data directory not found (repair re-ingests damaged sites from the PNGs)")
    target = FileTarget(str(store_path), storage_options)
    with lock_store(target, "repair") as lock:
        if report is None:
            report = verify_store(store_path, threads=threads, progress=progress, record=False,
                                  storage_options=storage_options)
        attrs = _read_root(target)
        if attrs is None:
            raise StoreDamagedError(f"{target.key('zarr.json')}: the root document is unreadable, so the store's "
                                    f"plan is unknown: not repairable; ingest again into a new path",
                                    file=target.key("zarr.json"))
        params = attrs["ingest"]
        plan = _plan(raw, tuple(params["datasets"]), _as_tuple(params["experiments"]),
                     _as_tuple(params["cell_types"]), params["limit"])
        n = int(attrs["n_sites"])
        if len(plan) != n:
            raise StoreError(f"{target.path} plans {n} sites, {raw} now gives {len(plan)}: not the raw data this "
                             f"store was ingested from")
        H, W, _ = attrs["image_shape"]
        damaged = {d.file for d in report.arrays}

        def hit(name: str) -> bool:
            return any(f == name or f.startswith(name + "/") for f in damaged)

        rewritten: list[str] = []
        if hit("images/zarr.json"):
            target.write_json("images/zarr.json", _images_meta_for(attrs, n, (H, W), attrs["codec"],
                                                                   has_checksums(attrs)))
            rewritten.append("images/zarr.json")
        for spec in attrs["site_columns"]:
            name, kind = spec["name"], spec["dtype"]
            if hit(f"sites/{name}"):
                target.write_small_array(f"sites/{name}", encode_column(plan[name], kind), has_checksums(attrs))
                rewritten.append(f"sites/{name}")
        _check_plan(target, attrs, plan)  # the (repaired) site table is this raw data's plan

        # the damaged sites, and the sites ingest skipped (their files may have been fixed since)
        missing = [int(f["index"]) for f in attrs.get("failed", [])]
        if report.damaged_indices or missing:
            log.info("%s: re-ingesting %d damaged and %d missing sites from %s", target.path,
                     len(report.damaged_indices), len(missing), raw)
        todo = _store_again(target, attrs, plan, raw, [*report.damaged_indices, *missing], bool(params["verify"]),
                            batch_size, n_workers, None, progress, lock)
        tables = [name for name in ("status", "stats/sum", "stats/sumsq", "stats/mean", "stats/std") if hit(name)]
        if todo or tables:
            _commit_sites(target, attrs, todo, report, tables)
            rewritten += ["status", "stats/sum", "stats/sumsq", "stats/mean", "stats/std"]
        target.remove(JOURNAL_DIR, recursive=True)
        target.remove(TMP_DIR, recursive=True)
        lock.check()
        after = verify_store(store_path, threads=threads, progress=progress, record=False,
                             storage_options=storage_options)
        write_last_verified(store_path, after, storage_options=storage_options, lock=False)  # we hold the lock
    return RepairReport(str(store_path), tuple(todo), tuple(rewritten), time.perf_counter() - t0, after)


def _whole_shards(target: FileTarget, attrs: dict[str, Any], sites: Iterable[int], shape: tuple[int, int]) -> list[int]:
    """Sites to ingest again for `sites`: themselves, or in the sharded layout every site of their shards (a shard
    is rewritten whole; its failed sites are tried again with it)."""
    sites = sorted(set(sites))
    images = _read_images_meta(target, attrs, shape)
    if not sites or image_layout(images) != "sharded":
        return sites
    per = ShardLayout.from_metadata(images).sites
    n = int(attrs["n_sites"])
    shards = sorted({i // per for i in sites})
    return [i for s in shards for i in range(s * per, min(n, (s + 1) * per))]


def _store_again(target: FileTarget, attrs: dict[str, Any], plan: pd.DataFrame, raw: Path, sites: Iterable[int],
                 verify: bool, batch_size: int | None, n_workers: int, scheduler: Any, progress: bool,
                 lock: Any) -> list[int]:
    """Ingest `sites` of a finished store again (whole shards) with the ingest's own batch tasks, journalled;
    `_commit_sites` then makes them part of the store. The store's failed sites among them are retried: one still
    bad is recorded as failed again. A stored site that fails now (its PNG deleted or changed since) is an
    ImageError naming the file, whatever on_error: a retry never turns a stored site into a failed one, and nothing
    is committed. Returns the sites ingested."""
    shape = (int(attrs["image_shape"][0]), int(attrs["image_shape"][1]))
    todo = _whole_shards(target, attrs, sites, shape)
    if todo:
        _check_space(target, attrs["image_shape"], attrs["codec"], len(todo))
        failed = [int(f["index"]) for f in attrs.get("failed", [])]
        jobs = _make_jobs(plan, todo, raw, target, attrs, verify, "fail", batch_size, n_workers, retried=failed)
        _run_checked(target, attrs, jobs, len(todo), n_workers, scheduler, progress, lock)
    return todo


def _commit_sites(target: FileTarget, attrs: dict[str, Any], todo: list[int], report: Any = None,
                  damaged: Sequence[str] = ()) -> tuple[dict[str, Any], list[FailedSite]]:
    """After `_store_again`: status, stats/ and the root's failed list with the journal's record of `todo` (stored
    values elsewhere; `damaged` tables rebuilt, stats/ from `report`'s freshly verified sums), then the journal
    deleted. Writes the tables, then the root (the commit point: a run killed before it retries again)."""
    n = int(attrs["n_sites"])
    failed = {int(f["index"]): FailedSite(**f) for f in attrs.get("failed", [])}
    if "status" in damaged:
        status = np.full(n, STATUS_OK, dtype=np.uint8)
        status[list(failed)] = STATUS_FAILED
    else:
        status = read_small_array(target.fs, target.key("status"))
    if "stats/sum" in damaged or "stats/sumsq" in damaged:
        stored_before = int((status == STATUS_OK).sum())
        if report is None or report.sums is None or \
                report.n_checked + len(set(todo) - set(failed)) < stored_before:
            raise StoreError(f"{target.path}: stats/ is damaged and the verification report does not cover every "
                             f"site; run `cellio verify --repair` without site selections")
        sums, sumsq = report.sums.copy(), report.sumsq.copy()  # exact, from chunks that passed their checksums
    else:
        sums = read_small_array(target.fs, target.key("stats/sum"))
        sumsq = read_small_array(target.fs, target.key("stats/sumsq"))
    done = read_journal(target.fs, target.root)
    for i in todo:
        e = done[i]
        if e["ok"]:
            status[i] = STATUS_OK
            sums[i], sumsq[i] = e["sum"], e["sumsq"]
            failed.pop(i, None)
        else:
            status[i] = STATUS_FAILED
            sums[i] = sumsq[i] = 0
            failed[i] = FailedSite(i, e["id_code"], int(e["site"]), e["file"], e["reason"])
    _write_tables(target, status, sums, sumsq, float(attrs["pixels_per_site"]), has_checksums(attrs))
    listed = [failed[i] for i in sorted(failed)]
    attrs = dict(attrs)
    attrs.update(n_ok=int((status == STATUS_OK).sum()), n_failed=len(listed), failed=[f.to_dict() for f in listed])
    _write_root(target, attrs)
    target.remove(JOURNAL_DIR, recursive=True)
    target.remove(TMP_DIR, recursive=True)
    return attrs, listed


def _run_dask(jobs: list[_BatchJob], scheduler: Any, bar: Any) -> None:
    try:
        from distributed import Client, as_completed
    except ImportError:
        from .errors import MissingDependencyError

        raise MissingDependencyError("distributed", "dask", "ingest --scheduler") from None
    own = not isinstance(scheduler, Client)
    client = Client(scheduler) if own else scheduler
    try:
        client.run(_worker_init)
        futures = client.map(_run_batch, jobs, pure=False)
        sizes = {f.key: len(j.indices) for f, j in zip(futures, jobs)}
        try:
            for fut in as_completed(futures):
                fut.result()
                bar.update(sizes[fut.key])
        except BaseException:
            client.cancel(futures)
            raise
    finally:
        if own:
            client.close()
