"""Read path of the cellio store: `open_store(path) -> Store` (spec: docs/data_format.md).

The store is a plain Zarr v3 group any client can read. For speed this reader bypasses zarr-python's per-call
overhead: it computes each site's bytes from the array metadata and reads them itself.

- chunked layout (one chunk per site), local: one `pread` per site copied into the batch (uncompressed), or the
  file read and decoded with numcodecs (blosc-lz4 / zstd);
- sharded layout (a shard per group of sites, a tile per inner chunk), local: the shard index (read once per
  shard, cached) gives the byte range of the tiles a crop overlaps: one `pread`, and only those tiles decoded;
- fsspec URLs (S3, GCS, ...), either layout: for a whole batch, the missing shard indexes and then every site's
  byte range are fetched concurrently in one call each (`cellio.store.remote.RangeFetcher`, with retries; ranges
  of one object within 1 MiB of each other coalesced into one request), then decoded and checksum-verified on the
  reader's threads straight into the batch;
- anything else (rechunked, foreign sharding) goes through zarr-python with concurrent per-site reads, never fancy
  indexing.

Integrity (format 1.1): every chunk ends with a crc32c checksum, verified on every read by default
(`verify=False` skips it on trusted local disks). Uncompressed crops then read the whole chunk (the checksum
covers all of it); with verify=False they read only rows y..y+h. A mismatch, a missing chunk or undecodable bytes
raise StoreDamagedError naming the chunk file and the site's id_code; a missing chunk is never read as zeros.
Format 1.0 stores (no checksums) still open; their damage shows only as decode errors or in `cellio verify`.

Streaming (the loader's read_mode="stream"): `stream_units` groups rows into units of whole objects (a shard, or a
run of chunk objects), `fetch_units` fetches units whole, `read_fetched` decodes a batch from them
(cellio/store/paths/objects.py).

Each of those read paths is a module of cellio/store/paths/; this module opens a store, holds its tables (the
site table, failures, statistics) and its data set layout (`Store.layout`), and runs a batch's reads on its threads.
Nothing here writes: ingest lives in cellio/ingestion/, and the byte layout both follow in this package's modules.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from ..datasets import DatasetLayout
from ..errors import CellioError, StoreDamagedError, StoreError, StoreIncompleteError
from ..params import parse_count
from .attributes import check_format, store_layout
from .codecs import ChunkCodec, chunk_codec
from .columns import decode_column, decode_strings
from .files import get_fs, is_url
from .format import AXES, CREATING_MARKER, STATUS_OK, chunk_key, has_checksums, read_json
from .images import image_layout
from .journal import read_journal
from .paths import LocalChunks, LocalShards, ReadContext, ReadPath, RemoteObjects, ZarrFallback
from .remote import RetryPolicy, make_fetcher, remote_error
from .shards import ShardLayout
from .stats import STATS_LEVELS, pooled_stats
from .tables import read_small_array

__all__ = ["STATS_LEVELS", "Store", "open_store", "RetryPolicy"]

log = logging.getLogger(__name__)

# A batch smaller than this is read on the calling thread: pool hand-off costs more than it saves.
_MIN_PARALLEL_BATCH = 4


class Store:
    """A read-only cellio store. Rows of `sites` are the successfully ingested sites, row i <-> image i.

    Picklable (only path and options travel; the child reopens lazily), fork-, spawn- and thread-safe.
    `verify`: check each chunk's crc32c on read (default; see the module docstring for the cost).
    """

    def __init__(self, path: str | os.PathLike[str], *, allow_incomplete: bool = False,
                 storage_options: dict[str, Any] | None = None, threads: int | None = None, verify: bool = True,
                 retry: RetryPolicy | None = None, concurrency: int = 64, client: str = "auto"):
        self.path = str(path)
        self._client = client
        self.verify = bool(verify)
        self._retry = retry or RetryPolicy()
        self._concurrency = int(concurrency)
        self._allow_incomplete = allow_incomplete
        self._storage_options = dict(storage_options or {})
        self._threads = parse_count("threads", threads) or min(8, os.cpu_count() or 1)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._pool: ThreadPoolExecutor | None = None
        self._sites: pd.DataFrame | None = None
        self._sums: tuple[np.ndarray, np.ndarray] | None = None
        self._journal: dict[int, dict[str, Any]] = {}  # incomplete stores: the journal as read at open
        self._names: np.ndarray | None = None            # "id_code s<site>" by array position, for error messages
        self._local_scratch = threading.local()
        self._open()

    # -- open / pickle ------------------------------------------------------------------------------------
    def _open(self) -> None:
        if not is_url(self.path):
            self._open_store()
            return
        try:  # an unreachable endpoint, a missing bucket or refused credentials: say which URL, and what to check
            self._open_store()
        except CellioError:
            raise
        except Exception as exc:
            raise remote_error(self.path, exc, 1, 0.0) from None

    def _open_store(self) -> None:
        fs, root = get_fs(self.path, self._storage_options)
        self._fs, self._root = fs, root
        try:
            self._fetcher = make_fetcher(fs, self.path, self._storage_options, self._retry, self._concurrency,
                                         self._client) if is_url(self.path) else None
        except ValueError as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        if fs.exists(f"{root}/{CREATING_MARKER}"):
            raise StoreIncompleteError(f"{self.path}: the store skeleton was never finished; rerun `cellio ingest`")
        try:
            group = read_json(fs, f"{root}/zarr.json")
        except StoreDamagedError:
            raise
        except StoreError as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        attrs = check_format(group, self.path)
        self.attrs: dict[str, Any] = attrs
        self.checksums: bool = has_checksums(attrs)
        if not self.checksums:
            log.debug("%s: format %s store: its chunks carry no checksums (re-ingest to add them)", self.path,
                      attrs.get("format_version"))
        self.complete: bool = bool(attrs.get("complete"))
        if not self.complete and not self._allow_incomplete:
            raise StoreIncompleteError(
                f"{self.path}: ingest did not finish ({attrs.get('n_sites')} sites planned); rerun `cellio ingest` "
                f"with the same arguments to complete it, or open with allow_incomplete=True")
        self._n_all = int(attrs["n_sites"])
        self._meta = read_json(fs, f"{root}/images/zarr.json")
        shape = tuple(self._meta["shape"])
        self.axes: str = attrs.get("layout", AXES)  # the root attribute `layout` is the axis order
        if self.axes != AXES:
            raise StoreError(f"{self.path}: layout {self.axes!r} is not supported (expected {AXES!r})")
        self.image_shape: tuple[int, int, int] = (int(shape[1]), int(shape[2]), int(shape[3]))
        self.layout: DatasetLayout = store_layout(attrs, self.image_shape, self._meta.get("data_type", "uint8"),
                                                  self.path)
        self.dtype: np.dtype = self.layout.dtype  # the pixel type `read` returns (checked against the array)
        self._rows = self._load_rows()
        self._reader = self._read_path()
        self._mode = self._reader.mode
        log.debug("opened %s: %d sites, reader %s, verify %s", self.path, len(self._rows), self._mode, self.verify)

    def _load_rows(self) -> np.ndarray:
        """Array positions of the sites that were ingested successfully (sorted)."""
        if self.complete:
            status = self._zarr_read("status")
            if status.shape != (self._n_all,):
                raise StoreDamagedError(f"{self._root}/status holds {status.shape} values, expected ({self._n_all},) "
                                        f"(n_sites); the store is damaged", file=f"{self._root}/status")
            return np.flatnonzero(status == STATUS_OK).astype(np.int64)
        # one snapshot of the journal serves rows, stats and failures alike, even if the ingest finishes (and
        # deletes its journal) while this Store is in use
        self._journal = read_journal(self._fs, self._root)
        return np.array(sorted(i for i, e in self._journal.items() if e.get("ok")), dtype=np.int64)

    def _read_path(self) -> ReadPath:
        """The read path of this store: "local" (pread the chunk files), "sharded" (pread the tiles from local shard
        files), "remote" (ranges of objects fetched per batch, either layout) or "zarr" (anything else)."""
        m = self._meta
        self.image_layout: str = image_layout(m)
        shards: ShardLayout | None = None
        codec: ChunkCodec | None = None
        try:
            if self.image_layout == "sharded":
                shards = ShardLayout.from_metadata(m)
                codec = shards.codec
            elif self.image_layout == "chunked":
                codec = chunk_codec(m["codecs"])
            else:
                raise StoreError(f"chunk grid {m['chunk_grid']} / codecs are not a cellio layout")
            chunk_key(m, (0, 0, 0, 0))
        except StoreError as exc:
            log.info("%s: %s; reading through zarr-python", self.path, exc)
            shards = codec = None
        ctx = ReadContext(path=self.path, root=self._root, meta=m, image_shape=self.image_shape,
                          dtype=self.dtype, codec=codec, shards=shards, verify=self.verify, scratch=self._scratch,
                          name_site=self._name_site)
        if codec is None:
            return ZarrFallback(ctx, self._storage_options)
        if is_url(self.path):
            return RemoteObjects(ctx, self._fetcher, self._new_fetcher)
        return LocalShards(ctx) if shards is not None else LocalChunks(ctx)

    def _new_fetcher(self) -> Any:
        self._fs, self._root = get_fs(self.path, self._storage_options)
        self._fetcher = make_fetcher(self._fs, self.path, self._storage_options, self._retry, self._concurrency,
                                     self._client)
        return self._fetcher

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "allow_incomplete": self._allow_incomplete,
                "storage_options": self._storage_options, "threads": self._threads, "verify": self.verify,
                "retry": self._retry, "concurrency": self._concurrency, "client": self._client}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], allow_incomplete=state["allow_incomplete"],  # type: ignore[misc]
                      storage_options=state["storage_options"], threads=state["threads"],
                      verify=state.get("verify", True), retry=state.get("retry"),
                      concurrency=state.get("concurrency", 64), client=state.get("client", "auto"))

    def with_verify(self, verify: bool) -> "Store":
        """This store with checksum verification on or off (self when already so; otherwise a new Store)."""
        if bool(verify) == self.verify:
            return self
        return Store(self.path, allow_incomplete=self._allow_incomplete, storage_options=self._storage_options,
                     threads=self._threads, verify=verify, retry=self._retry, concurrency=self._concurrency,
                     client=self._client)

    def __repr__(self) -> str:
        codec = self.attrs.get("codec", "?")
        return (f"Store({self.path!r}, sites={len(self)}, image_shape={self.image_shape}, layout={self.axes}, "
                f"dataset={self.layout.name}, image_layout={self.image_layout}, codec={codec}, "
                f"complete={self.complete}, verify={self.verify})")

    def __len__(self) -> int:
        return len(self._rows)

    # -- tables ---------------------------------------------------------------------------------------------
    def _zarr_read(self, name: str) -> np.ndarray:
        return read_small_array(self._fs, f"{self._root}/{name}", self._storage_options)

    @property
    def sites(self) -> pd.DataFrame:
        """Site table of the ingested sites, row i <-> image i (index 0..len-1), every metadata column."""
        if self._sites is None:
            with self._lock:
                if self._sites is None:
                    self._sites = self._load_sites()
        return self._sites

    def _load_sites(self) -> pd.DataFrame:
        cols: dict[str, Any] = {}
        for spec in self.attrs["site_columns"]:
            name, kind = spec["name"], spec["dtype"]
            cols[name] = decode_column(self._zarr_read(f"sites/{name}")[self._rows], kind)
        df = pd.DataFrame(cols)
        df.attrs["raw_dir"] = self.attrs.get("source", {}).get("raw_dir")
        df.attrs["store"] = self.path
        df.attrs["layout"] = self.layout  # the loader's filters check against it (cellio.select_sites)
        return df

    @property
    def failed(self) -> pd.DataFrame:
        """Sites the ingest skipped (`--on-error skip`): id_code, site, file, reason."""
        rows = self.attrs.get("failed", [])
        if not self.complete:
            rows = [e for e in self._journal.values() if not e.get("ok")]
        return pd.DataFrame([{k: r[k] for k in ("id_code", "site", "file", "reason")} for r in rows],
                            columns=["id_code", "site", "file", "reason"])

    def _stat_sums(self) -> tuple[np.ndarray, np.ndarray]:
        if self._sums is None:
            if self.complete:
                s, q = self._zarr_read("stats/sum"), self._zarr_read("stats/sumsq")
                for name, a in (("stats/sum", s), ("stats/sumsq", q)):
                    if a.shape != (self._n_all, self.image_shape[2]):
                        raise StoreDamagedError(f"{self._root}/{name} has shape {a.shape}, expected "
                                                f"({self._n_all}, {self.image_shape[2]}); the store is damaged",
                                                file=f"{self._root}/{name}")
                s, q = s[self._rows], q[self._rows]
            else:
                done = self._journal
                C = self.image_shape[2]
                s = np.array([done[int(i)]["sum"] for i in self._rows], dtype=np.uint64).reshape(-1, C)
                q = np.array([done[int(i)]["sumsq"] for i in self._rows], dtype=np.uint64).reshape(-1, C)
            self._sums = (s, q)
        return self._sums

    def channel_stats(self, level: str = "site") -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (mean, std), float32 (len(store), C), each site getting its group's statistics.

        Groups: "site" (itself), "plate" (experiment + plate), "experiment", "global". Pooled exactly over the
        group's pixels from integer per-site sums and sums of squares: mean = S/n, std = sqrt(Q/n - mean^2).
        """
        if level not in STATS_LEVELS:
            raise StoreError(f"channel_stats level {level!r} is unknown; expected one of {', '.join(STATS_LEVELS)}")
        s, q = self._stat_sums()
        codes: np.ndarray | None = None
        if level == "global":
            codes = np.zeros(len(s), dtype=np.int64)
        elif level != "site":
            keys = ["experiment", "plate"] if level == "plate" else ["experiment"]
            codes = self.sites.groupby(keys, sort=False).ngroup().to_numpy()
        return pooled_stats(s, q, codes, float(self.image_shape[0] * self.image_shape[1]))

    # -- images -----------------------------------------------------------------------------------------------
    def _check_fork(self) -> None:
        if os.getpid() != self._pid:  # a forked child must not reuse the parent's threads or zarr handles
            self._pid = os.getpid()
            self._lock = threading.Lock()
            self._pool = None
            self._local_scratch = threading.local()
            self._reader = self._reader.after_fork()  # fresh clients and zarr handles: the parent's stay its own

    def _get_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="cellio-store")
        return self._pool

    def _scratch(self, nbytes: int) -> np.ndarray:
        buf = getattr(self._local_scratch, "buf", None)
        if buf is None or buf.nbytes < nbytes:
            buf = np.empty(nbytes, dtype=np.uint8)
            self._local_scratch.buf = buf
        return buf[:nbytes]

    def _normalize_crops(self, n: int, crop: Any) -> tuple[np.ndarray, int, int]:
        H, W, _ = self.image_shape
        if crop is None:
            crops = np.tile(np.array([0, 0, H, W], dtype=np.int64), (n, 1))
        else:
            arr = np.asarray(crop, dtype=np.int64)
            if arr.shape == (4,):
                crops = np.tile(arr, (n, 1))
            elif arr.shape == (n, 4):
                crops = arr
            else:
                raise StoreError(f"crop must be one (y, x, h, w) or a sequence of {n} of them; found shape "
                                 f"{arr.shape}")
        if n:
            hs, ws = np.unique(crops[:, 2]), np.unique(crops[:, 3])
            if len(hs) != 1 or len(ws) != 1:
                raise StoreError(f"all crops of one batch must have the same (h, w); found h={hs.tolist()} "
                                 f"w={ws.tolist()}")
            bad = (crops[:, 0] < 0) | (crops[:, 1] < 0) | (crops[:, 2] < 1) | (crops[:, 3] < 1) \
                | (crops[:, 0] + crops[:, 2] > H) | (crops[:, 1] + crops[:, 3] > W)
            if bad.any():
                raise StoreError(f"crop {tuple(crops[bad][0].tolist())} (y, x, h, w) does not fit inside the "
                                 f"{H}x{W} site")
            return crops, int(hs[0]), int(ws[0])
        return crops, H, W

    def channel_indices(self, channels: Sequence[str] | str | None) -> np.ndarray | None:
        """Store indices of the channels named `channels` (names or keys of the layout, in the order given), or
        None for all of them; LayoutError naming the unknown ones and listing the store's channels."""
        return None if channels is None else np.asarray(self.layout.channel_selection(channels), dtype=np.int64)

    def read(self, indices: Sequence[int] | np.ndarray, crop: Any = None,
             out: np.ndarray | None = None, channels: Sequence[str] | str | None = None) -> np.ndarray:
        """(B, h, w, C) batch of sites `indices` (rows of `sites`) in the layout's pixel type (`Store.dtype`),
        optionally cropped (y, x, h, w). channels: only these channels (names or keys, in that order; C is their
        number), None all.

        Raises StoreDamagedError (ChecksumError for a checksum mismatch) naming the chunk file and the site.
        """
        pick = self.channel_indices(channels)
        if pick is not None:  # a chunk interleaves every channel: read them all, keep those asked for
            whole = self.read(indices, crop)
            picked = whole[..., pick]
            if out is None:
                return np.ascontiguousarray(picked)
            if out.shape != picked.shape or out.dtype != self.dtype or not out.flags.c_contiguous:
                raise StoreError(f"out must be a C-contiguous {self.dtype} array of shape {picked.shape}; found "
                                 f"{out.dtype} {out.shape}")
            out[...] = picked
            return out
        self._check_fork()
        # remote: every byte range fetched here (coalesced), decoded by site(b) on the threads
        return self._run_batch(indices, crop, out, self._reader.batch)

    # -- whole objects (the loader's stream mode) ------------------------------------------------------------
    def _objects(self) -> Any:
        self._check_fork()
        return self._reader.objects()

    def stream_units(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The unit (whole objects fetched together: a shard, or a run of chunk objects) of each row `indices`;
        StoreError for a store whose images are not in a cellio layout (cellio/store/paths/objects.py)."""
        idx = self._check_indices(indices)
        return self._objects().unit_of(self._rows[idx])

    def fetch_units(self, units: Sequence[int]) -> dict[int, Any]:
        """Every object of `units` (see stream_units), whole, in one concurrent call: unit -> FetchedUnit, for
        read_fetched. Remote failures raise RemoteStoreError naming the object after the retries."""
        return self._objects().fetch([int(u) for u in units])

    def read_fetched(self, fetched: dict[int, Any], indices: Sequence[int] | np.ndarray, crop: Any = None,
                     out: np.ndarray | None = None) -> np.ndarray:
        """Like read(), from units already fetched by fetch_units (each row's unit must be in `fetched`):
        decoded and checksum-verified on this store's threads, damage raised naming the object and the site."""
        objects = self._objects()

        def prepare(pos: np.ndarray, crops: np.ndarray, out: np.ndarray) -> Any:
            units = objects.unit_of(pos)
            missing = sorted(set(units.tolist()) - set(fetched))
            if missing:
                raise StoreError(f"read_fetched: units {missing[:5]} were not fetched (fetch_units first)")

            def site(b: int) -> None:
                objects.decode(fetched[int(units[b])], int(pos[b]), crops[b], out[b])

            return site

        return self._run_batch(indices, crop, out, prepare)

    def _check_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self._rows)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            bad = idx[(idx < -n) | (idx >= n)][0]
            raise StoreError(f"site index {int(bad)} is out of range for a store of {n} sites")
        return idx

    def _run_batch(self, indices: Sequence[int] | np.ndarray, crop: Any, out: np.ndarray | None,
                   prepare: Any) -> np.ndarray:
        """Check the batch, then run prepare(pos, crops, out)'s site(b) for every slot on this store's threads."""
        self._check_fork()
        idx = self._check_indices(indices)
        pos = self._rows[idx]
        crops, h, w = self._normalize_crops(len(idx), crop)
        C = self.image_shape[2]
        if out is None:
            out = np.empty((len(idx), h, w, C), dtype=self.dtype)
        elif out.shape != (len(idx), h, w, C) or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise StoreError(f"out must be a C-contiguous {self.dtype} array of shape {(len(idx), h, w, C)}; found "
                             f"{out.dtype} {out.shape}")
        site = prepare(pos, crops, out)

        def run(part: range) -> None:
            for b in part:
                try:
                    site(b)
                except StoreDamagedError as exc:
                    raise self._name_site(exc, int(pos[b])) from None

        n_parts = min(self._threads, len(idx) // _MIN_PARALLEL_BATCH) if self._mode != "zarr" \
            else min(self._threads * 4, len(idx))
        if n_parts > 1:
            # one contiguous slice of the batch per thread: pool hand-offs cost ~tens of us, a site read ~100s
            bounds = np.linspace(0, len(idx), n_parts + 1).astype(int)
            list(self._get_pool().map(run, [range(bounds[k], bounds[k + 1]) for k in range(n_parts)]))
        else:
            run(range(len(idx)))
        return out

    def read_one(self, i: int, crop: Any = None, channels: Sequence[str] | str | None = None) -> np.ndarray:
        """(h, w, C) of site i, in the layout's pixel type."""
        return self.read([i], crop, channels=channels)[0]

    # -- damage reports --------------------------------------------------------------------------------------------
    def site_name(self, pos: int) -> tuple[str | None, int | None]:
        """(id_code, site) of array position `pos` (None, None if the site table itself is unreadable)."""
        if self._names is None:
            try:
                ids = decode_strings(self._zarr_read("sites/id_code"))
                sites = self._zarr_read("sites/site")
                self._names = np.array(list(zip(ids, sites.tolist())), dtype=object)
            except StoreError:
                return None, None
        if not 0 <= pos < len(self._names):
            return None, None
        id_code, site = self._names[pos]
        return str(id_code), int(site)

    def _name_site(self, exc: StoreDamagedError, pos: int) -> StoreDamagedError:
        id_code, site = self.site_name(pos)
        who = f"site {pos}" + (f" ({id_code} site {site})" if id_code else "")
        msg = (f"{exc} [{who}; run `cellio verify {self.path}` to list every damaged site, and "
               f"`--repair RAW` to rewrite them from the PNGs]")
        return type(exc)(msg, file=exc.file, id_code=id_code, site=site)


def open_store(path: str | os.PathLike[str], *, allow_incomplete: bool = False,
               storage_options: dict[str, Any] | None = None, threads: int | None = None,
               verify: bool = True, retry: RetryPolicy | None = None, concurrency: int = 64,
               client: str = "auto") -> Store:
    """Open a cellio store read-only: a local path, or an fsspec URL (s3://bucket/rxrx1.zarr, gs://...).

    Raises StoreIncompleteError for an unfinished ingest unless allowed.
    verify: check every chunk's crc32c checksum on read (default). Turn it off only for trusted local disks: the
    cost is measured in benchmarks/store_read.py (docs/performance.md).
    storage_options: fsspec options for URLs (e.g. {"client_kwargs": {"endpoint_url": ...}, "key": ..., "secret":
    ...}); without them the client reads the environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS). Never logged.
    retry: how transient object-store failures are retried (RetryPolicy: 5 attempts, backoff from 0.25 s);
    concurrency: range requests in flight at once per batch. client: "auto" (obstore for s3:// when installed,
    fsspec otherwise), "obstore" or "fsspec" (cellio/store/remote.py says why). All three apply to URLs only.
    A URL that cannot be reached raises RemoteStoreError naming it.
    """
    return Store(path, allow_incomplete=allow_incomplete, storage_options=storage_options, threads=threads,
                 verify=verify, retry=retry, concurrency=concurrency, client=client)
