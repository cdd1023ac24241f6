"""Read path of the cellio store: `open_store(path) -> Store` (spec: docs/data_format.md).

The store is a plain Zarr v3 group any client can read. For speed this reader bypasses zarr-python's per-call
overhead on local, unsharded stores: it computes each site's chunk file from the array metadata and reads it with
one `pread` copied into the output batch (uncompressed), or reads the file and decodes it with numcodecs
(blosc-lz4 / zstd). Crops of uncompressed NHWC sites read only rows y..y+h. Everything else (fsspec URLs, sharded
or rechunked arrays) goes through zarr-python with concurrent per-site reads, never fancy indexing.

Nothing here writes: ingest lives in cellio/ingestion.py, and the byte layout both follow in cellio/_format.py.
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

from ._format import CREATING_MARKER, FORMAT_NAME, FORMAT_VERSION, STATUS_OK, chunk_key, decode_column, get_fs, \
    is_url, numcodec_from_metadata, read_journal, read_json, read_small_array
from .errors import StoreError, StoreIncompleteError

__all__ = ["STATS_LEVELS", "Store", "open_store"]

log = logging.getLogger(__name__)

STATS_LEVELS: tuple[str, ...] = ("site", "plate", "experiment", "global")

# A batch smaller than this is read on the calling thread: pool hand-off costs more than it saves.
_MIN_PARALLEL_BATCH = 4


class Store:
    """A read-only cellio store. Rows of `sites` are the successfully ingested sites, row i <-> image i.

    Picklable (only path and options travel; the child reopens lazily), fork-, spawn- and thread-safe.
    """

    def __init__(self, path: str | os.PathLike[str], *, allow_incomplete: bool = False,
                 storage_options: dict[str, Any] | None = None, threads: int | None = None):
        self.path = str(path)
        self._allow_incomplete = allow_incomplete
        self._storage_options = dict(storage_options or {})
        self._threads = threads if threads is not None else min(8, os.cpu_count() or 1)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._pool: ThreadPoolExecutor | None = None
        self._zarr_images: Any = None
        self._sites: pd.DataFrame | None = None
        self._sums: tuple[np.ndarray, np.ndarray] | None = None
        self._local_scratch = threading.local()
        self._open()

    # -- open / pickle ------------------------------------------------------------------------------------
    def _open(self) -> None:
        fs, root = get_fs(self.path, self._storage_options)
        self._fs, self._root = fs, root
        if fs.exists(f"{root}/{CREATING_MARKER}"):
            raise StoreIncompleteError(f"{self.path}: the store skeleton was never finished; rerun `cellio ingest`")
        group = read_json(fs, f"{root}/zarr.json")
        attrs = group.get("attributes", {})
        if group.get("node_type") != "group" or attrs.get("format") != FORMAT_NAME:
            raise StoreError(f"{self.path}: expected a Zarr v3 group with attribute format={FORMAT_NAME!r}, "
                             f"found node_type={group.get('node_type')!r} format={attrs.get('format')!r}")
        major = str(attrs.get("format_version", "")).split(".")[0]
        if major != FORMAT_VERSION.split(".")[0]:
            raise StoreError(f"{self.path}: format_version {attrs.get('format_version')!r} is not readable by "
                             f"this cellio (reads {FORMAT_VERSION.split('.')[0]}.x); upgrade cellio or re-ingest")
        self.attrs: dict[str, Any] = attrs
        self.complete: bool = bool(attrs.get("complete"))
        if not self.complete and not self._allow_incomplete:
            raise StoreIncompleteError(
                f"{self.path}: ingest did not finish ({attrs.get('n_sites')} sites planned); rerun `cellio ingest` "
                f"with the same arguments to complete it, or open with allow_incomplete=True")
        self._n_all = int(attrs["n_sites"])
        self._meta = read_json(fs, f"{root}/images/zarr.json")
        shape = tuple(self._meta["shape"])
        self.layout: str = attrs.get("layout", "NHWC")
        if self.layout != "NHWC":
            raise StoreError(f"{self.path}: layout {self.layout!r} is not supported (expected 'NHWC')")
        self.image_shape: tuple[int, int, int] = (int(shape[1]), int(shape[2]), int(shape[3]))
        self._rows = self._load_rows()
        self._fast = self._fast_path_ok()
        log.debug("opened %s: %d sites, fast path %s", self.path, len(self._rows), self._fast)

    def _load_rows(self) -> np.ndarray:
        """Array positions of the sites that were ingested successfully (sorted)."""
        if self.complete:
            status = self._zarr_read("status")
            return np.flatnonzero(status == STATUS_OK).astype(np.int64)
        done = read_journal(self._fs, self._root)
        return np.array(sorted(i for i, e in done.items() if e.get("ok")), dtype=np.int64)

    def _fast_path_ok(self) -> bool:
        m = self._meta
        if is_url(self.path) or m.get("storage_transformers"):
            return False
        if tuple(m["chunk_grid"]["configuration"]["chunk_shape"]) != (1, *self.image_shape):
            return False
        try:
            self._codec = numcodec_from_metadata(m["codecs"])  # sharded pipelines start with sharding_indexed
            chunk_key(m, (0, 0, 0, 0))
        except StoreError as exc:
            log.info("%s: %s; reading through zarr-python", self.path, exc)
            return False
        return True

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "allow_incomplete": self._allow_incomplete,
                "storage_options": self._storage_options, "threads": self._threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], allow_incomplete=state["allow_incomplete"],  # type: ignore[misc]
                      storage_options=state["storage_options"], threads=state["threads"])

    def __repr__(self) -> str:
        codec = self.attrs.get("codec", "?")
        return (f"Store({self.path!r}, sites={len(self)}, image_shape={self.image_shape}, layout={self.layout}, "
                f"codec={codec}, complete={self.complete})")

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
        return df

    @property
    def failed(self) -> pd.DataFrame:
        """Sites the ingest skipped (`--on-error skip`): id_code, site, file, reason."""
        rows = self.attrs.get("failed", [])
        if not self.complete:
            rows = [e for e in read_journal(self._fs, self._root).values() if not e.get("ok")]
        return pd.DataFrame([{k: r[k] for k in ("id_code", "site", "file", "reason")} for r in rows],
                            columns=["id_code", "site", "file", "reason"])

    def _stat_sums(self) -> tuple[np.ndarray, np.ndarray]:
        if self._sums is None:
            if self.complete:
                s, q = self._zarr_read("stats/sum")[self._rows], self._zarr_read("stats/sumsq")[self._rows]
            else:
                done = read_journal(self._fs, self._root)
                s = np.array([done[int(i)]["sum"] for i in self._rows], dtype=np.uint64).reshape(-1, 6)
                q = np.array([done[int(i)]["sumsq"] for i in self._rows], dtype=np.uint64).reshape(-1, 6)
            self._sums = (s, q)
        return self._sums

    def channel_stats(self, level: str = "site") -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (mean, std), float32 (len(store), 6), each site getting its group's statistics.

        Groups: "site" (itself), "plate" (experiment + plate), "experiment", "global". Pooled exactly over the
        group's pixels from integer per-site sums and sums of squares: mean = S/n, std = sqrt(Q/n - mean^2).
        """
        if level not in STATS_LEVELS:
            raise StoreError(f"channel_stats level {level!r} is unknown; expected one of {', '.join(STATS_LEVELS)}")
        s, q = self._stat_sums()
        npix = float(self.image_shape[0] * self.image_shape[1])
        if level == "site":
            gs, gq, count = s.astype(np.float64), q.astype(np.float64), np.ones(len(s))
        else:
            if level == "global":
                codes = np.zeros(len(s), dtype=np.int64)
            else:
                keys = ["experiment", "plate"] if level == "plate" else ["experiment"]
                codes = self.sites.groupby(keys, sort=False).ngroup().to_numpy()
            ng = int(codes.max()) + 1 if len(codes) else 0
            # integer accumulation keeps the pooled sums exact (max ~2e15 over all of RxRx1 < 2**53)
            tot_s = np.zeros((ng, s.shape[1]), dtype=np.uint64)
            tot_q = np.zeros((ng, s.shape[1]), dtype=np.uint64)
            np.add.at(tot_s, codes, s)
            np.add.at(tot_q, codes, q)
            cnt = np.bincount(codes, minlength=ng).astype(np.float64)
            gs, gq, count = tot_s[codes].astype(np.float64), tot_q[codes].astype(np.float64), cnt[codes]
        n = (count * npix)[:, None]
        mean = gs / n
        std = np.sqrt(np.maximum(gq / n - mean * mean, 0.0))
        return mean.astype(np.float32), std.astype(np.float32)

    # -- images -----------------------------------------------------------------------------------------------
    def _chunk_path(self, pos: int) -> str:
        return os.path.join(self._root, "images", *chunk_key(self._meta, (pos, 0, 0, 0)).split("/"))

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:  # a forked child must not reuse the parent's threads or zarr handles
            self._pid = os.getpid()
            self._lock = threading.Lock()
            self._pool = None
            self._zarr_images = None
            self._local_scratch = threading.local()

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

    def read(self, indices: Sequence[int] | np.ndarray, crop: Any = None,
             out: np.ndarray | None = None) -> np.ndarray:
        """uint8 (B, h, w, 6) batch of sites `indices` (rows of `sites`), optionally cropped (y, x, h, w)."""
        self._check_fork()
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self._rows)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            bad = idx[(idx < -n) | (idx >= n)][0]
            raise StoreError(f"site index {int(bad)} is out of range for a store of {n} sites")
        pos = self._rows[idx]
        crops, h, w = self._normalize_crops(len(idx), crop)
        C = self.image_shape[2]
        if out is None:
            out = np.empty((len(idx), h, w, C), dtype=np.uint8)
        elif out.shape != (len(idx), h, w, C) or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise StoreError(f"out must be a C-contiguous uint8 array of shape {(len(idx), h, w, C)}; found "
                             f"{out.dtype} {out.shape}")
        reader = self._read_fast if self._fast else self._read_zarr

        def run(part: range) -> None:
            for b in part:
                reader(int(pos[b]), crops[b], out[b])

        n_parts = min(self._threads, len(idx) // _MIN_PARALLEL_BATCH) if self._fast else min(self._threads * 4,
                                                                                              len(idx))
        if n_parts > 1:
            # one contiguous slice of the batch per thread: pool hand-offs cost ~tens of us, a site read ~100s
            bounds = np.linspace(0, len(idx), n_parts + 1).astype(int)
            list(self._get_pool().map(run, [range(bounds[k], bounds[k + 1]) for k in range(n_parts)]))
        else:
            run(range(len(idx)))
        return out

    def read_one(self, i: int, crop: Any = None) -> np.ndarray:
        """uint8 (h, w, 6) of site i."""
        return self.read([i], crop)[0]

    def _read_fast(self, pos: int, crop: np.ndarray, dst: np.ndarray) -> None:
        H, W, C = self.image_shape
        y, x, h, w = (int(v) for v in crop)
        path = self._chunk_path(pos)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise StoreError(f"{path}: chunk of site {pos} is missing; the store is damaged or incomplete") from None
        try:
            if self._codec is None:
                # rows y..y+h are one contiguous byte range of an NHWC chunk. Read them into a fresh bytes object,
                # then copy: measured ~2x faster than preadv straight into a large, cache-cold batch array
                # (the kernel's copy_to_user pays write-allocate on cold lines; numpy's large memcpy streams).
                row = W * C
                want = h * row
                data = os.pread(fd, want, y * row)
                while len(data) < want:  # pread may return short on some file systems
                    more = os.pread(fd, want - len(data), y * row + len(data))
                    if not more:
                        raise StoreError(f"{path}: chunk is truncated (read {len(data)} of {want} bytes at "
                                         f"offset {y * row})")
                    data += more
                src = np.frombuffer(data, dtype=np.uint8).reshape(h, W, C)
                dst[...] = src if w == W else src[:, x:x + w]
            else:
                data = os.read(fd, os.fstat(fd).st_size)
                if h == H and w == W:
                    self._codec.decode(data, out=dst)
                else:
                    tmp = self._scratch(H * W * C)
                    self._codec.decode(data, out=tmp)
                    dst[...] = tmp.reshape(H, W, C)[y:y + h, x:x + w]
        finally:
            os.close(fd)

    def _read_zarr(self, pos: int, crop: np.ndarray, dst: np.ndarray) -> None:
        if self._zarr_images is None:
            import zarr

            with self._lock:
                if self._zarr_images is None:
                    url = self.path.rstrip("/") + "/images"
                    self._zarr_images = zarr.open_array(url, mode="r",
                                                        storage_options=self._storage_options or None) \
                        if is_url(url) else zarr.open_array(os.path.join(self._root, "images"), mode="r")
        y, x, h, w = (int(v) for v in crop)
        dst[...] = self._zarr_images[pos, y:y + h, x:x + w, :]


def open_store(path: str | os.PathLike[str], *, allow_incomplete: bool = False,
               storage_options: dict[str, Any] | None = None, threads: int | None = None) -> Store:
    """Open a cellio store read-only. Raises StoreIncompleteError for an unfinished ingest unless allowed."""
    return Store(path, allow_incomplete=allow_incomplete, storage_options=storage_options, threads=threads)
