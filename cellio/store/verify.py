"""`verify_store(path) -> VerifyReport`: re-read a finished store and say exactly what is damaged.

What is checked (docs/reliability.md):

1. every small array (the site table `sites/*`, `status`, `stats/*`) is present, passes its crc32c checksum,
   decodes to the shape the root attributes promise, and is consistent: status values, `n_ok` / `n_failed` and
   the `failed` list agree; `stats/mean` and `stats/std` follow from `stats/sum` and `stats/sumsq`; failed sites
   have zero statistics; every row has an id_code and a site number;
2. every stored site's image chunk is present, passes its checksum, decodes to one (H, W, 6) site, and its exact
   per-channel pixel sums and sums of squares equal `stats/sum` and `stats/sumsq` (so damage in a format 1.0
   store, which has no checksums, is still found).

Damaged sites are reported by index, id_code and site number; so are the sites ingest skipped (`on_error="skip"`),
as missing: the store does not hold every site of its plan. `cellio verify STORE --repair RAW`
(`cellio.ingestion.repair_store`) re-ingests exactly those from the PNGs (the missing ones too, where their files
are readable now). With `record=True` the time and outcome are
written into the root attributes as `last_verified` (under the store's writer lock), which `cellio inspect` shows.
Reading only: nothing else in the store is changed.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import StoreDamagedError, StoreError, StoreIncompleteError
from ..params import parse_count
from ..datasets import PIXEL_DTYPES
from ..records import to_dict
from .attributes import LAYOUT_ATTRIBUTE, check_format, recorded_dtype, store_layout
from .codecs import chunk_codec
from .columns import decode_strings
from .files import FileTarget, get_fs, is_url
from .format import FORMAT_NAME, STATUS_FAILED, STATUS_OK, TMP_DIR, chunk_key, group_metadata, has_checksums, read_json
from .images import image_layout
from .lock import lock_store
from .shards import ShardLayout
from .stats import site_sums
from .tables import read_small_array

__all__ = ["Damage", "VerifyReport", "verify_store", "write_last_verified"]

log = logging.getLogger(__name__)

_SITES_PER_TASK = 8  # sites one thread checks per task: amortizes the hand-off, keeps the progress bar moving


@dataclass(frozen=True)
class Damage:
    """One problem: a site (index = its row in the store's arrays) or, with index None, a whole array/file."""

    index: int | None
    id_code: str | None
    site: int | None
    file: str            # relative to the store root
    problem: str

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@dataclass(frozen=True)
class VerifyReport:
    """What `verify_store` found. `ok` when nothing is damaged."""

    store: str
    format_version: str
    checksums: bool                     # the store's chunks carry crc32c (format >= 1.1)
    n_sites: int                        # sites planned (rows of every array)
    n_checked: int                      # image chunks checked (damaged ones included)
    stored_bytes: int                   # bytes of chunk files read
    decoded_bytes: int                  # bytes of pixels decoded
    seconds: float
    threads: int
    sites: tuple[Damage, ...] = ()      # damaged sites, by index
    arrays: tuple[Damage, ...] = ()     # damaged or inconsistent arrays and metadata files
    missing: tuple[Damage, ...] = ()    # sites ingest skipped (on_error="skip"): file = the raw file that failed
    verified_at: str = ""
    # exact per-site sums computed from the chunks that passed (for repair when stats/ itself is damaged)
    sums: np.ndarray | None = field(default=None, repr=False, compare=False)
    sumsq: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Nothing stored is damaged (sites ingest skipped may still be missing: `complete`)."""
        return not self.sites and not self.arrays

    @property
    def complete(self) -> bool:
        """Nothing damaged and nothing missing: the store holds every site of its plan."""
        return self.ok and not self.missing

    @property
    def damaged_indices(self) -> list[int]:
        return sorted({d.index for d in self.sites if d.index is not None})

    @property
    def sites_per_s(self) -> float:
        return self.n_checked / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        """Stored (on-disk) megabytes read per second."""
        return self.stored_bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "format_version": self.format_version, "checksums": self.checksums,
                "n_sites": self.n_sites, "n_checked": self.n_checked, "stored_bytes": self.stored_bytes,
                "decoded_bytes": self.decoded_bytes, "seconds": round(self.seconds, 3), "threads": self.threads,
                "sites_per_s": round(self.sites_per_s, 1), "mb_per_s": round(self.mb_per_s, 1), "ok": self.ok,
                "complete": self.complete, "verified_at": self.verified_at, "sites": [to_dict(d) for d in self.sites],
                "arrays": [to_dict(d) for d in self.arrays], "missing": [to_dict(d) for d in self.missing]}

    def record(self) -> dict[str, Any]:
        """The `last_verified` root attribute."""
        return {"at": self.verified_at, "ok": self.ok, "sites_checked": self.n_checked,
                "damaged_sites": len(self.damaged_indices), "damaged_arrays": len(self.arrays),
                "missing_sites": len(self.missing), "checksums": self.checksums, "seconds": round(self.seconds, 3)}

    def summary(self, max_rows: int = 50) -> str:
        """A human-readable table: what was checked, how fast, and every damaged site and array."""
        lines = [
            f"store       {self.store}",
            f"format      {FORMAT_NAME} {self.format_version}, "
            + ("crc32c on every chunk" if self.checksums else "no checksums (format 1.0: pixel sums checked only)"),
            f"checked     {self.n_checked} of {self.n_sites} sites, {self.stored_bytes / 1e6:.1f} MB read "
            f"({self.decoded_bytes / 1e6:.1f} MB of pixels) in {self.seconds:.2f} s = {self.sites_per_s:.1f} "
            f"sites/s, {self.mb_per_s:.1f} MB/s ({self.threads} threads)",
            "result      " + ("OK: no damage found" if self.ok else
                              f"DAMAGED: {len(self.damaged_indices)} sites, {len(self.arrays)} arrays/files"),
        ]
        if self.missing:
            n = len(self.missing)
            lines.append(f"            MISSING: {n} site{'s' if n > 1 else ''} of the plan not stored (ingest skipped "
                         f"{'them' if n > 1 else 'it'}: --on-error skip); once the files are fixed, rerun `cellio "
                         f"ingest` with the same arguments or `cellio verify STORE --repair RAW`")
        if self.arrays:
            lines += ["", f"  {'file':<32} problem"]
            lines += [f"  {d.file:<32} {d.problem}" for d in self.arrays[:max_rows]]
        if self.sites:
            lines += ["", f"  {'index':>6}  {'id_code':<18} {'site':>4}  {'file':<24} problem"]
            for d in self.sites[:max_rows]:
                lines.append(f"  {d.index if d.index is not None else '-':>6}  {d.id_code or '?':<18} "
                             f"{d.site if d.site is not None else '?':>4}  {d.file:<24} {d.problem}")
            if len(self.sites) > max_rows:
                lines.append(f"  ... {len(self.sites) - max_rows} more (see --json)")
        if self.missing:
            lines += ["", f"  missing {'index':>6}  {'id_code':<18} {'site':>4}  why"]
            lines += [f"          {d.index:>6}  {d.id_code or '?':<18} {d.site if d.site is not None else '?':>4}  "
                      f"{d.problem}" for d in self.missing[:max_rows]]
            if len(self.missing) > max_rows:
                lines.append(f"  ... {len(self.missing) - max_rows} more (see --json)")
        return "\n".join(lines)


def _rel(file: str, root: str) -> str:
    return file[len(root) + 1:] if file.startswith(root + "/") else file


def _problem(exc: BaseException, root: str) -> str:
    """An error message without the store-root prefix of the file it names (the table has a file column)."""
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith(root) and ": " in text else text


def verify_store(path: str | os.PathLike[str], *, threads: int | None = None, progress: bool = True,
                 indices: list[int] | np.ndarray | None = None, record: bool = True,
                 storage_options: dict[str, Any] | None = None) -> VerifyReport:
    """Re-read every chunk of a complete store; check checksums, pixel sums and every small array.

    indices: check only these sites' chunks (the arrays are always checked). record: write `last_verified` into
    the root attributes (takes the store's writer lock; skipped with a warning if another process holds it).
    Raises StoreIncompleteError for an unfinished ingest and StoreDamagedError when the root zarr.json itself is
    unreadable; everything else found is in the report.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    threads = parse_count("threads", threads)
    fs, root = get_fs(path, storage_options)
    attrs = check_format(read_json(fs, f"{root}/zarr.json"), str(path))
    if not attrs.get("complete"):
        raise StoreIncompleteError(f"{path}: ingest did not finish; rerun `cellio ingest` with the same arguments "
                                   f"before verifying")
    n = int(attrs["n_sites"])
    H, W, C = (int(v) for v in attrs["image_shape"])
    arrays: list[Damage] = []
    dtype = recorded_dtype(attrs)
    dtype = dtype if dtype in PIXEL_DTYPES else "uint8"  # (a bad one is named by store_layout below)
    try:  # the recorded data set layout parses and agrees with the images (names the channels below)
        layout = store_layout(attrs, (H, W, C), dtype, str(path))
        keys, fields = layout.channel_keys, layout.sites_per_well
    except StoreError as exc:
        arrays.append(Damage(None, None, None, "zarr.json", _problem(exc, str(path))))
        keys, fields = tuple(str(c) for c in range(C)), None

    def array(name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        try:
            a = read_small_array(fs, f"{root}/{name}", storage_options)
        except StoreDamagedError as exc:
            arrays.append(Damage(None, None, None, _rel(exc.file or name, root), _problem(exc, root)))
            return None
        except StoreError as exc:
            arrays.append(Damage(None, None, None, f"{name}/zarr.json", _problem(exc, root)))
            return None
        if a.shape[:len(shape)] != shape:
            arrays.append(Damage(None, None, None, name, f"shape {a.shape}, expected {shape} (n_sites = {n})"))
            return None
        return a

    # -- 1. the small arrays -----------------------------------------------------------------------------------
    columns = {c["name"]: array(f"sites/{c['name']}", (n,)) for c in attrs.get("site_columns", [])}
    status = array("status", (n,))
    sums = array("stats/sum", (n, C))
    sumsq = array("stats/sumsq", (n, C))
    mean = array("stats/mean", (n, C))
    std = array("stats/std", (n, C))
    ids = decode_strings(columns["id_code"]) if columns.get("id_code") is not None else None
    site_no = columns.get("site")

    def name(i: int) -> tuple[str | None, int | None]:
        return (str(ids[i]) if ids is not None else None), (int(site_no[i]) if site_no is not None else None)

    failed_attr = sorted(int(f["index"]) for f in attrs.get("failed", []))
    if status is not None:
        bad = np.flatnonzero((status != STATUS_OK) & (status != STATUS_FAILED))
        if len(bad):
            arrays.append(Damage(None, None, None, "status", f"{len(bad)} values outside {{1 stored, 2 failed}} "
                                 f"(first at site {int(bad[0])}: {int(status[bad[0]])})"))
        failed_status = np.flatnonzero(status == STATUS_FAILED).tolist()
        if failed_status != failed_attr or int((status == STATUS_OK).sum()) != attrs.get("n_ok"):
            arrays.append(Damage(None, None, None, "status", f"{int((status == STATUS_OK).sum())} stored / "
                                 f"{len(failed_status)} failed sites, the root attributes say n_ok="
                                 f"{attrs.get('n_ok')} and {len(failed_attr)} failed"))
    for f in attrs.get("failed", []):
        i = int(f["index"])
        if ids is not None and 0 <= i < n and ids[i] != f.get("id_code"):
            arrays.append(Damage(None, None, None, "zarr.json", f"failed site {i} is {f.get('id_code')!r} in the "
                                 f"root attributes but {ids[i]!r} in sites/id_code"))
    if ids is not None and (empty := [i for i, v in enumerate(ids) if not v]):
        arrays.append(Damage(None, None, None, "sites/id_code", f"{len(empty)} rows without an id_code (first: "
                             f"{empty[0]})"))
    if site_no is not None and len(bad_site := np.flatnonzero((site_no < 1) | (site_no > (fields or 2 ** 31)))):
        arrays.append(Damage(None, None, None, "sites/site", f"{len(bad_site)} rows with an impossible site number "
                             f"(first: row {int(bad_site[0])} = {int(site_no[bad_site[0]])})"))
    npix = float(H * W)
    if sums is not None and mean is not None and not np.allclose(mean, sums / npix, rtol=0, atol=1e-9):
        arrays.append(Damage(None, None, None, "stats/mean", "does not equal stats/sum / pixels_per_site"))
    if sums is not None and sumsq is not None and std is not None:
        m = sums / npix
        if not np.allclose(std, np.sqrt(np.maximum(sumsq / npix - m * m, 0.0)), rtol=0, atol=1e-6):
            arrays.append(Damage(None, None, None, "stats/std", "does not follow from stats/sum and stats/sumsq"))
    if sums is not None and failed_attr and np.any(sums[failed_attr]):
        arrays.append(Damage(None, None, None, "stats/sum", "failed sites have non-zero statistics"))

    # -- 2. the image chunks -------------------------------------------------------------------------------------
    try:
        meta = read_json(fs, f"{root}/images/zarr.json")
        if tuple(meta["shape"]) != (n, H, W, C):
            raise StoreDamagedError(f"shape {meta['shape']}, expected {[n, H, W, C]}")
        if meta.get("data_type", "uint8") != dtype:
            raise StoreDamagedError(f"data_type {meta.get('data_type')!r}, expected {dtype!r} (the pixel_dtype of "
                                    f"the {LAYOUT_ATTRIBUTE} attribute)")
    except (StoreError, KeyError) as exc:
        arrays.append(Damage(None, None, None, "images/zarr.json", _problem(exc, root)))
        meta = None
    stored = set(range(n)) - set(failed_attr) if status is None else set(np.flatnonzero(status == STATUS_OK).tolist())
    todo = sorted(stored if indices is None else stored & {int(i) for i in indices})
    n_threads = threads or min(8, os.cpu_count() or 1)
    site_damage: list[Damage] = []
    got_s = np.zeros((n, C), dtype=np.uint64)
    got_q = np.zeros((n, C), dtype=np.uint64)
    counters = {"stored": 0, "checked": 0}
    if meta is not None and todo:
        read_chunk = _chunk_reader(fs, root, meta, (H, W, C), path, storage_options)
        shards = ShardLayout.from_metadata(meta) if image_layout(meta) == "sharded" else None

        def site_file(i: int) -> str:  # the file holding site i, relative to the root
            if shards is not None:
                return f"images/{shards.shard_key(shards.locate(i)[0])}"
            return f"images/{chunk_key(meta, (i, 0, 0, 0))}"

        def check(part: list[int]) -> tuple[list[Damage], int, int]:
            damage, nbytes, checked = [], 0, 0
            buf = np.empty((H, W, C), dtype=dtype)
            for i in part:
                file = site_file(i)
                checked += 1
                try:
                    nbytes += read_chunk(i, buf)
                except StoreDamagedError as exc:
                    damage.append(Damage(i, *name(i), file, _problem(exc, root)))
                    continue
                s, q = site_sums(buf)
                got_s[i], got_q[i] = s, q
                if sums is not None and sumsq is not None and (np.any(sums[i] != s) or np.any(sumsq[i] != q)):
                    c = int(np.flatnonzero((sums[i] != s) | (sumsq[i] != q))[0])
                    damage.append(Damage(i, *name(i), file, f"pixel sums differ from stats/ (channel {keys[c]}: sum "
                                         f"{int(s[c])} vs stored {int(sums[i][c])}): the chunk or the statistics "
                                         f"are wrong"))
            return damage, nbytes, checked

        parts = [todo[k:k + _SITES_PER_TASK] for k in range(0, len(todo), _SITES_PER_TASK)]
        bar = tqdm(total=len(todo), unit="site", desc="verify", disable=not progress)
        try:
            with ThreadPoolExecutor(n_threads, thread_name_prefix="cellio-verify") as pool:
                futures = {pool.submit(check, p): len(p) for p in parts}
                for fut in as_completed(futures):
                    damage, nbytes, checked = fut.result()
                    site_damage += damage
                    counters["stored"] += nbytes
                    counters["checked"] += checked
                    bar.update(futures[fut])
        finally:
            bar.close()
    site_damage.sort(key=lambda d: (d.index, d.problem))
    missing = tuple(Damage(int(f["index"]), f.get("id_code"), f.get("site"), str(f.get("file", "")),
                           str(f.get("reason", "skipped by ingest")))
                    for f in sorted(attrs.get("failed", []), key=lambda f: int(f["index"])))
    report = VerifyReport(
        store=str(path), format_version=str(attrs.get("format_version")), checksums=has_checksums(attrs),
        n_sites=n, n_checked=counters["checked"], stored_bytes=counters["stored"],
        decoded_bytes=(counters["checked"] - len(site_damage)) * H * W * C * np.dtype(dtype).itemsize, seconds=time.perf_counter() - t0,
        threads=n_threads,
        sites=tuple(site_damage), arrays=tuple(arrays), missing=missing,
        verified_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), sums=got_s, sumsq=got_q)
    log.info("verified %s: %d sites in %.2f s (%.1f sites/s, %.1f MB/s): %s", path, report.n_checked,
             report.seconds, report.sites_per_s, report.mb_per_s,
             ("OK" if report.ok else f"{len(report.damaged_indices)} damaged sites, {len(arrays)} damaged arrays")
             + (f", {len(missing)} sites missing (skipped by ingest)" if missing else ""))
    if record and indices is None:
        write_last_verified(path, report, storage_options=storage_options)
    return report


def _chunk_reader(fs: Any, root: str, meta: dict[str, Any], shape: tuple[int, int, int], path: Any,
                  storage_options: dict[str, Any] | None) -> Any:
    """read(i, buf) -> stored bytes: site i's chunk decoded (checksum verified) into buf, or StoreDamagedError."""
    H, W, C = shape
    try:
        kind = image_layout(meta)
        if kind == "sharded":
            return _shard_reader(fs, root, ShardLayout.from_metadata(meta))
        if kind != "chunked":
            raise StoreError("not one site per chunk")
        codec = chunk_codec(meta["codecs"])
    except StoreError:
        return _zarr_reader(fs, root, meta, path, storage_options)

    def read(i: int, buf: np.ndarray) -> int:
        file = f"{root}/images/{chunk_key(meta, (i, 0, 0, 0))}"
        try:
            data = fs.cat_file(file)
        except FileNotFoundError:
            raise StoreDamagedError(f"{file}: the chunk file is missing", file=file) from None
        codec.decode(data, buf, file=file, verify=True)
        return len(data)

    return read


def _shard_reader(fs: Any, root: str, lay: ShardLayout) -> Any:
    """The sharded layout: each shard's index read once (and checked), then each site's tiles as one range."""
    import threading

    indexes: dict[int, np.ndarray] = {}
    lock = threading.Lock()
    H, W, C = lay.image

    def index(shard: int, file: str) -> np.ndarray:
        with lock:  # a shard's sites are checked by one task at a time mostly; read each index once
            if shard not in indexes:
                try:
                    data = fs.cat_file(file, start=0, end=lay.index_nbytes)
                except FileNotFoundError:
                    raise StoreDamagedError(f"{file}: the shard file is missing", file=file) from None
                indexes[shard] = lay.decode_index(data, file=file)
            return indexes[shard]

    def read(i: int, buf: np.ndarray) -> int:
        shard, k = lay.locate(i)
        file = f"{root}/images/{lay.shard_key(shard)}"
        entries = index(shard, file)[k]
        tiles = lay.tile_range(0, 0, H, W)
        start, end = lay.site_span(entries, tiles, file=file)
        data = fs.cat_file(file, start=start, end=end)
        if len(data) != end - start:
            raise StoreDamagedError(f"{file}: the shard is truncated (read {len(data)} of {end - start} bytes at "
                                    f"offset {start})", file=file)
        scratch = np.empty(lay.tile_nbytes, dtype=np.uint8)
        lay.decode_site(data, start, entries, tiles, (0, 0, H, W), buf, scratch, file=file, verify=True)
        return len(data)

    return read


def _zarr_reader(fs: Any, root: str, meta: dict[str, Any], path: Any, storage_options: dict[str, Any] | None) -> Any:
    """Sharded or rechunked images: zarr-python decodes (and checks any crc32c); shard files must exist."""
    import zarr

    z = zarr.open_array(fs.unstrip_protocol(f"{root}/images"), mode="r", storage_options=storage_options or None) \
        if is_url(str(path)) else zarr.open_array(f"{root}/images", mode="r")
    grid = meta["chunk_grid"]["configuration"]["chunk_shape"]

    def read(i: int, buf: np.ndarray) -> int:
        file = f"{root}/images/{chunk_key(meta, (i // grid[0], 0, 0, 0))}"
        if not fs.exists(file):
            raise StoreDamagedError(f"{file}: the chunk (or shard) file holding this site is missing", file=file)
        try:
            buf[...] = z[i]
        except Exception as exc:
            raise StoreDamagedError(f"{file}: zarr-python cannot read site {i} ({type(exc).__name__}: {exc})",
                                    file=file) from None
        return buf.nbytes

    return read


def write_last_verified(path: str | os.PathLike[str], report: VerifyReport, *,
                        storage_options: dict[str, Any] | None = None, lock: bool = True) -> None:
    """Store `report.record()` as the root attribute `last_verified` (atomic rewrite of zarr.json)."""
    from ..errors import StoreLockedError

    target = FileTarget(str(path), storage_options)

    def write() -> None:  # under the writer lock (ours, or the caller's): nobody else writes temp files now
        node = read_json(target.fs, target.key("zarr.json"))
        attrs = dict(node.get("attributes", {}))
        attrs["last_verified"] = report.record()
        target.write_json("zarr.json", group_metadata(attrs))
        target.remove(TMP_DIR, recursive=True)  # the write's temp directory, empty now: a finished store has none

    if not lock:
        write()
        return
    try:
        with lock_store(target, "verify"):
            write()
    except StoreLockedError as exc:
        log.warning("not recording the verification in %s: %s", path, exc)
