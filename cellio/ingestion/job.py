"""`ingest(raw, store)`: a raw data set -> a cellio Zarr v3 store (spec: docs/data_format.md), the job that runs the
other modules of this package in the order things happen:

1. the plan (plan.py): the data set's site table filtered by split / experiment / cell type / limit; row i of the
   plan is image i of the store;
2. the skeleton (skeleton.py: array metadata, the site table, root attributes with complete=false and the data
   set layout), written once, guarded by a marker file so a run killed half-way through it is detected and redone;
3. per-batch tasks (batch.py, run by backends.py on local processes or a Dask cluster) decode, validate and
   verify each site, write its chunk to a temp file and `os.replace` it into place (atomic), then record the batch
   in one journal file. A SIGKILL loses at most the batches in flight; a rerun redoes exactly the sites with no
   journal record;
4. finalization (finalize.py) merges the journal into `status` and `stats/*`, flips `complete` to true and
   deletes the journal, so a finished store holds no trace of how many runs built it.

The whole job holds the store's writer lock (cellio/store/lock.py): a second ingest of the same path refuses,
naming the holder. Ingest deletes only its own state files (journal, temp files); it never builds over, or
deletes, files it did not write. Free space is checked before any site is written (space.py), and ENOSPC during a
write becomes a DiskFullError saying how much the rest of the job needs; a rerun of a finished store retries the
sites an earlier run skipped (`on_error="skip"`, retry.py), and `repair_store` (repair.py) re-ingests the sites
`cellio verify` found damaged. Reading lives in cellio/store/reader.py.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..datasets import DatasetReader, find_dataset, get_dataset, list_datasets
from ..errors import MetadataError, StoreError
from ..params import parse_count
from ..processes import require_importable_main
from ..records import to_dict
from ..store.codecs import get_codec
from ..store.files import FileTarget, is_url
from ..store.format import JOURNAL_DIR, TMP_DIR
from ..store.journal import read_journal
from ..store.lock import lock_store
from ..store.shards import DEFAULT_SITES_PER_SHARD
from .backends import pool_method, run_checked
from .batch import make_jobs
from .finalize import FailedSite, commit_sites, finalize_checked
from .plan import as_tuple, ingest_params, layout_params, plan_sites
from .retry import store_again
from .skeleton import prepare
from .source import open_source
from .space import check_space

__all__ = ["ingest", "detect_reader", "IngestReport", "DEFAULT_CODEC", "DEFAULT_LAYOUT", "ON_ERROR"]

log = logging.getLogger(__name__)

# Chosen by benchmarks/store_read.py (docs/performance.md): blosc-lz4 stores ~0.65x of raw and decodes several
# times faster than zstd-1, which stores about the same.
DEFAULT_CODEC = "lz4"

# Chosen by benchmarks/store_read.py and benchmarks/pipeline.py (docs/data_format.md#choosing-a-layout): a shard of
# DEFAULT_SITES_PER_SHARD sites per file, DEFAULT_TILE x DEFAULT_TILE tiles, so a 224 crop of an lz4 site decodes
# the ~9 tiles it overlaps instead of the whole site, and an object store holds 32x fewer objects.
DEFAULT_LAYOUT = "sharded"
ON_ERROR: tuple[str, ...] = ("fail", "skip")


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
        return to_dict(self)


def ingest(raw: str | os.PathLike[str], store_path: str | os.PathLike[str], *, codec: str = DEFAULT_CODEC,
           workers: int | None = None, on_error: str = "fail", experiments: str | Iterable[str] | None = None,
           cell_types: str | Iterable[str] | None = None, datasets: str | Iterable[str] | None = None,
           limit: int | None = None, scheduler: Any = None, verify: bool = True, progress: bool = True,
           storage_options: dict[str, Any] | None = None, batch_size: int | None = None,
           image_size: tuple[int, int] | None = None, layout: str = DEFAULT_LAYOUT,
           sites_per_shard: int = DEFAULT_SITES_PER_SHARD, tile: int | tuple[int, int] | None = None,
           reader: str | DatasetReader | None = "rxrx1", channels: str | Iterable[str] | None = None,
           plates: str | Iterable[str] | None = None, metadata: str | os.PathLike[str] | None = None) -> IngestReport:
    """Ingest a raw data set into a Zarr v3 store; resumes an interrupted run of the same call.

    raw: the data set's local directory, or (a reader with read_site) an object-storage URL, passed to the reader
    as given. reader: the data set (a registered name, `cellio.list_datasets()`, or a DatasetReader; None: the
    registered reader whose raw directory `raw` looks like, `find_dataset`): how its site table is read and what
    layout the store records. datasets: the splits to ingest (default: all of the layout's). channels: keep only
    these channels (names or keys, in this order; the store's layout lists just them), default all. plates: only
    these plates (compared as text).

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
        require_importable_main(f"cellio.ingest(workers={n_workers})", pool_method())
    get_codec(codec)  # StoreError naming the registered codecs
    if on_error not in ON_ERROR:
        raise StoreError(f"on_error {on_error!r} is unknown; expected one of {', '.join(ON_ERROR)}")
    reader = detect_reader(raw) if reader is None else get_dataset(reader) if isinstance(reader, str) else reader
    # a data set whose layout comes from the data (JUMP, OME-Zarr) reads it now, before any store is touched
    reader = reader.for_source(str(raw), metadata=None if metadata is None else str(metadata),
                               channels=as_tuple(channels))
    splits = reader.layout.splits
    source = open_source(raw, reader, as_tuple(channels))
    if source.local:
        _check_outside(Path(source.location), store_path)
    ds = as_tuple(datasets) or splits
    bad = sorted(set(ds) - set(splits))
    if bad:
        raise MetadataError(f"datasets={list(ds)}: {bad} unknown; expected a subset of {list(splits)}")
    exps, cts, plate_list = as_tuple(experiments), as_tuple(cell_types), as_tuple(plates)
    plan = plan_sites(source, ds, exps, cts, limit, plate_list)
    params = ingest_params(codec, verify, ds, exps, cts, limit, layout_params(layout, sites_per_shard, tile),
                           source.layout.channel_names if source.pick is not None else None, plate_list,
                           None if metadata is None else str(metadata))
    target = FileTarget(str(store_path), storage_options)
    with _locked_root(target, "ingest") as lock:
        attrs = prepare(target, plan, source, params, image_size)
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
            todo = store_again(target, attrs, plan, source, retried, verify, batch_size, n_workers,
                               scheduler, progress, lock)
            sites_seconds = time.perf_counter() - t1
            lock.check()
            attrs, failed = commit_sites(target, attrs, todo)
            still = [f.index for f in failed if f.index in set(retried)]
            log.info("%s: %d of %d failed sites stored now", target.path, len(retried) - len(still), len(retried))
            return IngestReport(str(store_path), len(plan), attrs["n_ok"], attrs["n_failed"], len(todo),
                                time.perf_counter() - t0, codec, n_workers, True, tuple(failed), sites_seconds)

        done = read_journal(target.fs, target.root)
        todo = [i for i in range(len(plan)) if i not in done]
        if done:
            log.info("%s: resuming, %d of %d sites already done", target.path, len(done), len(plan))
        check_space(target, attrs["image_shape"], attrs["codec"], len(todo), source.layout.pixel_dtype)
        jobs = make_jobs(plan, todo, source, target, attrs, verify, on_error, batch_size, n_workers)
        t1 = time.perf_counter()
        run_checked(target, attrs, jobs, len(todo), n_workers, scheduler, progress, lock)
        sites_seconds = time.perf_counter() - t1
        lock.check()  # nobody took the store from us: safe to commit
        attrs, failed = finalize_checked(target, attrs, plan)
    seconds = time.perf_counter() - t0
    log.info("ingested %d sites into %s in %.1f s (%.1f s on sites; %d failed)", len(todo), target.path, seconds,
             sites_seconds, len(failed))
    return IngestReport(str(store_path), len(plan), attrs["n_ok"], attrs["n_failed"], len(todo), seconds, codec,
                        n_workers, True, tuple(failed), sites_seconds)


def detect_reader(raw: str | os.PathLike[str]) -> DatasetReader:
    """The registered reader whose raw directory `raw` looks like (`find_dataset`); MetadataError listing the data
    sets and what their directories look like when none does (name one: `reader=` / `--from`)."""
    found = find_dataset(raw) if not is_url(str(raw)) else None
    if found is None:
        looks = "; ".join(f"{name}: {get_dataset(name).raw_description}" for name in list_datasets())
        raise MetadataError(f"{raw}: not recognised as the raw directory of a data set cellio knows ({looks}); name "
                            f"the data set (reader=NAME, `cellio ingest --from NAME`)")
    log.info("%s: read as %s (detected)", raw, found.name)
    return found


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
