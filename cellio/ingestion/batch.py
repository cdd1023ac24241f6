"""One batch of sites, the unit a worker runs and the journal records: read each site (the PNGs its path columns
name, or the data set reader's read_site), validate and verify it against the data set's own statistics, encode
it, write its chunk (or the batch's shard, whole) atomically, then the batch's journal record (recorded =>
durable). `make_jobs` cuts the sites to do into batches."""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ImageError
from ..store.codecs import chunk_codec
from ..store.files import FileTarget
from ..store.format import chunk_key, has_checksums
from ..store.images import image_layout
from ..store.journal import journal_key
from ..store.shards import ShardLayout
from ..store.stats import channel_sums
from .plan import VERIFY_ATOL
from .png import decode_png
from .skeleton import images_meta_for
from .source import RawSource

__all__ = ["BatchJob", "run_batch", "make_jobs", "read_images_meta"]


@dataclass(frozen=True)
class BatchJob:
    """Everything a worker needs for one batch (picklable; no open handles)."""

    store: str
    storage_options: dict[str, Any]
    source: RawSource                             # the reader, where the raw data lies, the channels kept
    images: dict[str, Any]                        # images/zarr.json: where each site's chunk goes and its codecs
    shape: tuple[int, int]
    indices: tuple[int, ...]
    id_codes: tuple[str, ...]
    sites: tuple[int, ...]
    files: tuple[tuple[str, ...], ...]            # per site and channel (store order): its PNG, or what names it
    rows: tuple[dict[str, Any], ...] | None       # read_site sources: each site's row of the plan
    expected: tuple[tuple[float, ...] | None, ...]  # per site, C means then C stds the data set gives, or None
    verify: bool
    on_error: str
    shard: int | None = None                      # sharded layout: the shard this job writes whole
    retried: frozenset[int] = frozenset()         # sites that failed in an earlier run: still bad -> failed again
    stats_source: str = "the data set's own statistics"  # where `expected` comes from (named in a mismatch)

    @property
    def channels(self) -> int:
        return len(self.files[0])

    def read(self, k: int) -> list[np.ndarray]:
        """Site k's channels as (H, W) planes of the layout's pixel type (ImageError naming the file)."""
        if self.rows is None:
            return [decode_png(path, self.shape) for path in self.files[k]]
        return self.source.read_site(self.rows[k], self.shape, f"{self.id_codes[k]} site {self.sites[k]}")


def _verify_site(job: BatchJob, k: int, sums: list[int], sumsq: list[int], npix: int) -> None:
    """ImageError naming the file when a channel's mean or std is not the data set's own (within VERIFY_ATOL on
    the 0..255 scale, in proportion for 16-bit pixels)."""
    exp = job.expected[k]
    if exp is None:
        return
    C = job.channels
    atol = VERIFY_ATOL * job.source.layout.max_value / 255
    for c in range(C):
        mean = sums[c] / npix
        std = math.sqrt(max(sumsq[c] / npix - mean * mean, 0.0))
        for what, ours, theirs in (("mean", mean, exp[c]), ("std", std, exp[C + c])):
            if not math.isnan(theirs) and abs(ours - theirs) > atol:
                raise ImageError(
                    f"{job.files[k][c]}: pixel {what} {ours:.4f} differs from {job.stats_source} ({theirs:.4f}) by "
                    f"more than {atol:g}; the file does not match the data set's statistics (wrong, swapped or "
                    f"damaged image)")


def run_batch(job: BatchJob) -> list[dict[str, Any]]:
    """Read, validate, verify and store the sites of one batch; then journal the batch. Runs in a worker.

    This thread only reads and decodes the raw images; a writer thread computes the statistics, verifies, interleaves the
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
    dtype = job.source.layout.dtype
    buffers = [np.empty((H, W, job.channels), dtype=dtype) for _ in range(2)]  # double buffering

    def store(k: int, planes: list[np.ndarray], site: np.ndarray) -> dict[str, Any]:
        sums, sumsq = (v.tolist() for v in channel_sums(planes))
        if job.verify:
            _verify_site(job, k, sums, sumsq, H * W)
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
                planes = job.read(k)
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


def make_jobs(plan: pd.DataFrame, todo: list[int], source: RawSource, target: FileTarget, attrs: dict[str, Any],
              verify: bool, on_error: str, batch_size: int | None, n_workers: int,
              retried: Iterable[int] = ()) -> list[BatchJob]:
    """The batches that store the plan's sites `todo`: a job per shard (sharded layout: a shard is written whole,
    and is the resume unit), or per `batch_size` sites. Each site is read from the PNGs the store layout's path
    columns of its plan row name, or (a reader with read_site) from its plan row; its expected statistics are the
    layout's pixel_mean / pixel_std columns (NaN or absent: none)."""
    if batch_size is None:  # ~4 batches per worker for balance, at most 16 sites lost to a kill per worker
        batch_size = max(1, min(16, math.ceil(len(todo) / (4 * n_workers))))
    lay = source.layout
    if set(lay.path_columns) <= set(plan.columns):
        files = np.vectorize(source.png_path, otypes=[object])(plan[list(lay.path_columns)].to_numpy()) \
            if len(plan) else np.empty((0, lay.n_channels), dtype=object)
    else:  # a reader with read_site and no file per channel: name the site and channel
        files = np.array([[f"{source.location} {idc} site {s} channel {name}" for name in lay.channel_names]
                          for idc, s in zip(plan["id_code"], plan["site"])], dtype=object)
    records = None if source.png else plan.to_dict("records")
    stat_columns = list(lay.pixel_mean_columns) + list(lay.pixel_std_columns)
    stats = plan[stat_columns].to_numpy(dtype=np.float64) if set(stat_columns) <= set(plan.columns) \
        else np.full((len(plan), len(stat_columns)), np.nan)
    shape = (int(attrs["image_shape"][0]), int(attrs["image_shape"][1]))
    images = read_images_meta(target, attrs)
    retried = frozenset(int(i) for i in retried)

    def job(idx: list[int], shard: int | None) -> BatchJob:
        return BatchJob(
            store=target.path, storage_options=target.storage_options, source=source, images=images, shape=shape,
            indices=tuple(idx), id_codes=tuple(plan["id_code"].iloc[idx]),
            sites=tuple(int(s) for s in plan["site"].iloc[idx]), files=tuple(tuple(files[i]) for i in idx),
            rows=None if records is None else tuple(records[i] for i in idx),
            expected=tuple(None if np.isnan(stats[i]).all() else tuple(float(v) for v in stats[i]) for i in idx),
            verify=verify, on_error=on_error, shard=shard, retried=retried & set(idx),
            stats_source=source.reader.stats_source)

    if image_layout(images) == "sharded":  # a job per shard, written whole (a shard is also the resume unit)
        per = ShardLayout.from_metadata(images).sites
        by_shard: dict[int, list[int]] = {}
        for i in todo:
            by_shard.setdefault(i // per, []).append(i)
        return [job(idx, shard) for shard, idx in sorted(by_shard.items())]
    return [job(todo[start:start + batch_size], None) for start in range(0, len(todo), batch_size)]


def read_images_meta(target: FileTarget, attrs: dict[str, Any]) -> dict[str, Any]:
    """The store's own images/zarr.json (a 1.0 store resumed or repaired keeps its codecs: no checksums)."""
    try:
        with target.fs.open(target.key("images/zarr.json"), "rb") as f:
            return json.loads(f.read())
    except (FileNotFoundError, ValueError):
        return images_meta_for(attrs, int(attrs["n_sites"]), tuple(int(v) for v in attrs["image_shape"]),
                               attrs["codec"], has_checksums(attrs))
