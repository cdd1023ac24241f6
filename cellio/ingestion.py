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
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._format import CODECS, CREATING_MARKER, FORMAT_NAME, FORMAT_VERSION, JOURNAL_DIR, STATUS_FAILED, STATUS_OK, \
    TMP_DIR, FileTarget, chunk_key, column_kind, decode_strings, encode_column, group_metadata, images_metadata, \
    journal_key, numcodec_from_metadata, read_journal, read_small_array
from .errors import ImageError, MetadataError, StoreError
from .schema import CHANNEL_NAMES, CHANNELS, DATASETS, N_CHANNELS, PATH_COLUMNS, PIXEL_MEAN_COLUMNS, \
    PIXEL_STD_COLUMNS

__all__ = ["ingest", "IngestReport", "FailedSite", "DEFAULT_CODEC", "VERIFY_ATOL", "ON_ERROR"]

log = logging.getLogger(__name__)

# Chosen by benchmarks/store_read.py (docs/performance.md): blosc-lz4 stores ~0.65x of raw and decodes several
# times faster than zstd-1, which stores about the same.
DEFAULT_CODEC = "lz4"
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

    codec = numcodec_from_metadata(job.images["codecs"])
    target = FileTarget(job.store, job.storage_options)
    H, W = job.shape
    buffers = [np.empty((H, W, N_CHANNELS), dtype=np.uint8) for _ in range(2)]  # double buffering

    def store(k: int, planes: list[np.ndarray], site: np.ndarray) -> dict[str, Any]:
        sums, sumsq = _site_sums(planes)
        if job.verify:
            _verify(job, k, sums, sumsq, H * W)
        for c, p in enumerate(planes):
            site[:, :, c] = p
        i = job.indices[k]
        target.write(f"images/{chunk_key(job.images, (i, 0, 0, 0))}",
                     memoryview(site).cast("B") if codec is None else codec.encode(site))
        return {"i": i, "ok": True, "sum": sums, "sumsq": sumsq}

    def failed(k: int, exc: ImageError) -> dict[str, Any]:
        if job.on_error == "fail":
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
    # the journal record comes after every chunk of the batch is in place: recorded => durable
    target.write_json(journal_key(job.indices[0], job.indices[-1]), {"entries": entries})
    return entries


def _worker_init() -> None:
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
    from .metadata import read_metadata

    meta = read_metadata(raw)
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
                   limit: int | None) -> dict[str, Any]:
    return {"codec": codec, "verify": verify, "verify_atol": VERIFY_ATOL, "datasets": list(datasets),
            "experiments": list(experiments) if experiments else None,
            "cell_types": list(cell_types) if cell_types else None, "limit": limit}


def _create_skeleton(target: FileTarget, plan: pd.DataFrame, shape: tuple[int, int], params: dict[str, Any],
                     raw: Path) -> dict[str, Any]:
    """Array metadata, the site table and the root attributes (complete=false), guarded by CREATING_MARKER."""
    if target.local:
        os.makedirs(target.root, exist_ok=True)
    target.write(CREATING_MARKER, b"")
    H, W = shape
    target.write_json("images/zarr.json", images_metadata(len(plan), shape, params["codec"]))
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
    }
    _write_root(target, attrs)
    target.remove(CREATING_MARKER)
    return attrs


def _write_root(target: FileTarget, attrs: dict[str, Any]) -> None:
    target.write_json("zarr.json", group_metadata(attrs))


def _read_root(target: FileTarget) -> dict[str, Any] | None:
    try:
        with target.fs.open(target.key("zarr.json"), "rb") as f:
            node = json.loads(f.read())
    except FileNotFoundError:
        return None
    attrs = node.get("attributes", {})
    return attrs if attrs.get("format") == FORMAT_NAME else None


def _prepare(target: FileTarget, plan: pd.DataFrame, raw: Path, params: dict[str, Any],
             image_size: tuple[int, int] | None) -> dict[str, Any]:
    """Create the skeleton, or validate an existing one for resuming."""
    if target.exists(CREATING_MARKER):
        log.info("%s: skeleton of an interrupted run found; rebuilding it", target.path)
        target.remove("", recursive=True)
    attrs = _read_root(target) if target.exists("zarr.json") else None
    if attrs is None:
        if target.exists("") and target.fs.ls(target.root, detail=False):
            raise StoreError(f"{target.path} exists and is not a cellio store; choose a new path or delete it")
        shape = image_size or _probe_shape(raw, plan)
        return _create_skeleton(target, plan, tuple(shape), params, raw)
    if attrs.get("ingest") != params:
        raise StoreError(f"{target.path} was ingested with {attrs.get('ingest')}, this call asks for {params}; "
                         f"rerun with the original arguments to resume, or use a new store path")
    if attrs["n_sites"] != len(plan):
        raise StoreError(f"{target.path} plans {attrs['n_sites']} sites, the raw data now gives {len(plan)}; "
                         f"the source changed since the store was started")
    ids = _decode_ids(target)
    mine = (plan["id_code"] + "_s" + plan["site"].astype(str)).tolist()
    if ids != mine:
        first = next(k for k, (a, b) in enumerate(zip(ids, mine)) if a != b)
        raise StoreError(f"{target.path}: site {first} is {ids[first]} in the store but {mine[first]} in the raw "
                         f"data; the source changed since the store was started")
    return attrs


def _decode_ids(target: FileTarget) -> list[str]:
    idc = decode_strings(read_small_array(target.fs, target.key("sites/id_code")))
    site = read_small_array(target.fs, target.key("sites/site"))
    return [f"{a}_s{int(b)}" for a, b in zip(idc, site)]


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
    npix = float(attrs["pixels_per_site"])
    mean = sums.astype(np.float64) / npix
    std = np.sqrt(np.maximum(sumsq.astype(np.float64) / npix - mean * mean, 0.0))
    target.write_json("stats/zarr.json", group_metadata())
    for name, data in (("status", status), ("stats/sum", sums), ("stats/sumsq", sumsq), ("stats/mean", mean),
                       ("stats/std", std)):
        target.write_small_array(name, data)
    attrs = dict(attrs)
    attrs.update(complete=True, n_ok=int((status == STATUS_OK).sum()), n_failed=len(failed),
                 failed=[f.to_dict() for f in failed])
    _write_root(target, attrs)  # the commit point: from here on the store opens as complete
    target.remove(JOURNAL_DIR, recursive=True)
    target.remove(TMP_DIR, recursive=True)
    return attrs, failed


# ----------------------------------------------------------------------------------------------- entry point
def ingest(raw: str | os.PathLike[str], store_path: str | os.PathLike[str], *, codec: str = DEFAULT_CODEC,
           workers: int | None = None, on_error: str = "fail", experiments: str | Iterable[str] | None = None,
           cell_types: str | Iterable[str] | None = None, datasets: str | Iterable[str] = DATASETS,
           limit: int | None = None, scheduler: Any = None, verify: bool = True, progress: bool = True,
           storage_options: dict[str, Any] | None = None, batch_size: int | None = None,
           image_size: tuple[int, int] | None = None) -> IngestReport:
    """Ingest an RxRx1-layout directory into a Zarr v3 store; resumes an interrupted run of the same call.

    scheduler: a Dask distributed address ("tcp://host:port") or Client; the same batch tasks then run on the
    cluster, whose workers must see `raw` and `store_path` (shared file system or fsspec URL).
    """
    t0 = time.perf_counter()
    if codec not in CODECS:
        raise StoreError(f"codec {codec!r} is unknown; expected one of {', '.join(CODECS)}")
    if on_error not in ON_ERROR:
        raise StoreError(f"on_error {on_error!r} is unknown; expected one of {', '.join(ON_ERROR)}")
    raw = Path(raw)
    if not raw.is_dir():
        raise MetadataError(f"{raw}: raw data directory not found (expected the unzipped RxRx1 layout)")
    ds = _as_tuple(datasets) or DATASETS
    bad = sorted(set(ds) - set(DATASETS))
    if bad:
        raise MetadataError(f"datasets={list(ds)}: {bad} unknown; expected a subset of {list(DATASETS)}")
    exps, cts = _as_tuple(experiments), _as_tuple(cell_types)
    plan = _plan(raw, ds, exps, cts, limit)
    params = _ingest_params(codec, verify, ds, exps, cts, limit)
    target = FileTarget(str(store_path), storage_options)
    attrs = _prepare(target, plan, raw, params, image_size)
    n_workers = max(1, workers if workers is not None else (os.cpu_count() or 1))

    if attrs.get("complete"):
        log.info("%s is already complete", target.path)
        target.remove(JOURNAL_DIR, recursive=True)
        target.remove(TMP_DIR, recursive=True)
        failed = tuple(FailedSite(**f) for f in attrs.get("failed", []))
        return IngestReport(str(store_path), len(plan), attrs["n_ok"], attrs["n_failed"], 0,
                            time.perf_counter() - t0, codec, n_workers, True, failed)

    done = read_journal(target.fs, target.root)
    todo = [i for i in range(len(plan)) if i not in done]
    if done:
        log.info("%s: resuming, %d of %d sites already done", target.path, len(done), len(plan))
    jobs = _make_jobs(plan, todo, raw, target, attrs, verify, on_error, batch_size, n_workers)
    t1 = time.perf_counter()
    _run(jobs, len(todo), n_workers, scheduler, progress)
    sites_seconds = time.perf_counter() - t1
    attrs, failed = _finalize(target, attrs, plan)
    seconds = time.perf_counter() - t0
    log.info("ingested %d sites into %s in %.1f s (%.1f s on sites; %d failed)", len(todo), target.path, seconds,
             sites_seconds, len(failed))
    return IngestReport(str(store_path), len(plan), attrs["n_ok"], attrs["n_failed"], len(todo), seconds, codec,
                        n_workers, True, tuple(failed), sites_seconds)


def _make_jobs(plan: pd.DataFrame, todo: list[int], raw: Path, target: FileTarget, attrs: dict[str, Any],
               verify: bool, on_error: str, batch_size: int | None, n_workers: int) -> list[_BatchJob]:
    if batch_size is None:  # ~4 batches per worker for balance, at most 16 sites lost to a kill per worker
        batch_size = max(1, min(16, math.ceil(len(todo) / (4 * n_workers))))
    paths = plan[list(PATH_COLUMNS)].to_numpy()
    stats = plan[list(PIXEL_MEAN_COLUMNS) + list(PIXEL_STD_COLUMNS)].to_numpy(dtype=np.float64)
    shape = (int(attrs["image_shape"][0]), int(attrs["image_shape"][1]))
    images = images_metadata(int(attrs["n_sites"]), shape, attrs["codec"])
    jobs = []
    for start in range(0, len(todo), batch_size):
        idx = todo[start:start + batch_size]
        jobs.append(_BatchJob(
            store=target.path, storage_options=target.storage_options, raw_dir=str(raw.resolve()), images=images,
            shape=shape, indices=tuple(idx), id_codes=tuple(plan["id_code"].iloc[idx]),
            sites=tuple(int(s) for s in plan["site"].iloc[idx]),
            paths=tuple(tuple(paths[i]) for i in idx),
            expected=tuple(None if np.isnan(stats[i]).all() else tuple(float(v) for v in stats[i]) for i in idx),
            verify=verify, on_error=on_error))
    return jobs


def _run(jobs: list[_BatchJob], total: int, n_workers: int, scheduler: Any, progress: bool) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="site", desc="ingest", disable=not progress)
    try:
        if scheduler is not None:
            _run_dask(jobs, scheduler, bar)
        elif n_workers == 1 or len(jobs) == 1:  # in this process; its global cv2/blosc settings stay untouched
            for job in jobs:
                _run_batch(job)
                bar.update(len(job.indices))
        else:
            _run_pool(jobs, n_workers, bar)
    finally:
        bar.close()


def _run_pool(jobs: list[_BatchJob], n_workers: int, bar: Any) -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    # forkserver: workers fork from a clean server process, never from this one (which may hold zarr's event
    # loop thread); spawn where fork does not exist
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    with ProcessPoolExecutor(min(n_workers, len(jobs)), mp_context=ctx, initializer=_worker_init) as pool:
        pending = {pool.submit(_run_batch, job): job for job in jobs}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in finished:
                    job = pending.pop(fut)
                    fut.result()  # re-raises a worker's ImageError (on_error="fail") here
                    bar.update(len(job.indices))
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


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
