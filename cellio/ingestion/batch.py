"""One batch of sites, the unit a worker runs and the journal records: decode, validate and verify each site
against the data set's own statistics, encode it, write its chunk (or the batch's shard, whole) atomically, then
the batch's journal record (recorded => durable). `make_jobs` cuts the sites to do into batches."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..datasets import DatasetReader
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

__all__ = ["BatchJob", "run_batch", "make_jobs", "read_images_meta"]


@dataclass(frozen=True)
class BatchJob:
    """Everything a worker needs for one batch (picklable; no open handles)."""

    store: str
    storage_options: dict[str, Any]
    raw_dir: str
    images: dict[str, Any]                        # images/zarr.json: where each site's chunk goes and its codecs
    shape: tuple[int, int]
    indices: tuple[int, ...]
    id_codes: tuple[str, ...]
    sites: tuple[int, ...]
    paths: tuple[tuple[str, ...], ...]            # per site, a relative PNG path per channel (store order)
    expected: tuple[tuple[float, ...] | None, ...]  # per site, C means then C stds the data set gives, or None
    verify: bool
    on_error: str
    shard: int | None = None                      # sharded layout: the shard this job writes whole
    retried: frozenset[int] = frozenset()         # sites that failed in an earlier run: still bad -> failed again
    stats_source: str = "the data set's own statistics"  # where `expected` comes from (named in a mismatch)

    @property
    def channels(self) -> int:
        return len(self.paths[0])


def _verify_site(job: BatchJob, k: int, sums: list[int], sumsq: list[int], npix: int) -> None:
    """ImageError naming the file when a channel's mean or std is not the data set's own (within VERIFY_ATOL)."""
    exp = job.expected[k]
    if exp is None:
        return
    C = job.channels
    for c in range(C):
        mean = sums[c] / npix
        std = math.sqrt(max(sumsq[c] / npix - mean * mean, 0.0))
        for what, ours, theirs in (("mean", mean, exp[c]), ("std", std, exp[C + c])):
            if not math.isnan(theirs) and abs(ours - theirs) > VERIFY_ATOL:
                raise ImageError(
                    f"{os.path.join(job.raw_dir, job.paths[k][c])}: pixel {what} {ours:.4f} differs from "
                    f"{job.stats_source} ({theirs:.4f}) by more than {VERIFY_ATOL}; the file does not match the "
                    f"data set's statistics (wrong, swapped or damaged image)")


def run_batch(job: BatchJob) -> list[dict[str, Any]]:
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
    buffers = [np.empty((H, W, job.channels), dtype=np.uint8) for _ in range(2)]  # double buffering

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
                planes = [decode_png(os.path.join(job.raw_dir, rel), job.shape) for rel in job.paths[k]]
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


def make_jobs(plan: pd.DataFrame, todo: list[int], raw: Path, target: FileTarget, attrs: dict[str, Any],
              reader: DatasetReader, verify: bool, on_error: str, batch_size: int | None, n_workers: int,
              retried: Iterable[int] = ()) -> list[BatchJob]:
    """The batches that store the plan's sites `todo`: a job per shard (sharded layout: a shard is written whole,
    and is the resume unit), or per `batch_size` sites. Each site's files are the reader's layout.path_columns of
    its plan row; its expected statistics the layout's pixel_mean / pixel_std columns (NaN or absent: none)."""
    if batch_size is None:  # ~4 batches per worker for balance, at most 16 sites lost to a kill per worker
        batch_size = max(1, min(16, math.ceil(len(todo) / (4 * n_workers))))
    lay = reader.layout
    paths = plan[list(lay.path_columns)].to_numpy()
    stat_columns = list(lay.pixel_mean_columns) + list(lay.pixel_std_columns)
    stats = plan[stat_columns].to_numpy(dtype=np.float64) if set(stat_columns) <= set(plan.columns) \
        else np.full((len(plan), len(stat_columns)), np.nan)
    shape = (int(attrs["image_shape"][0]), int(attrs["image_shape"][1]))
    images = read_images_meta(target, attrs)
    retried = frozenset(int(i) for i in retried)
    jobs = []
    if image_layout(images) == "sharded":  # a job per shard, written whole (a shard is also the resume unit)
        per = ShardLayout.from_metadata(images).sites
        by_shard: dict[int, list[int]] = {}
        for i in todo:
            by_shard.setdefault(i // per, []).append(i)
        for shard, idx in sorted(by_shard.items()):
            jobs.append(BatchJob(
                store=target.path, storage_options=target.storage_options, raw_dir=str(raw.resolve()),
                images=images, shape=shape, indices=tuple(idx), id_codes=tuple(plan["id_code"].iloc[idx]),
                sites=tuple(int(s) for s in plan["site"].iloc[idx]), paths=tuple(tuple(paths[i]) for i in idx),
                expected=tuple(None if np.isnan(stats[i]).all() else tuple(float(v) for v in stats[i])
                               for i in idx),
                verify=verify, on_error=on_error, shard=shard, retried=retried & set(idx),
                stats_source=reader.stats_source))
        return jobs
    for start in range(0, len(todo), batch_size):
        idx = todo[start:start + batch_size]
        jobs.append(BatchJob(
            store=target.path, storage_options=target.storage_options, raw_dir=str(raw.resolve()), images=images,
            shape=shape, indices=tuple(idx), id_codes=tuple(plan["id_code"].iloc[idx]),
            sites=tuple(int(s) for s in plan["site"].iloc[idx]),
            paths=tuple(tuple(paths[i]) for i in idx),
            expected=tuple(None if np.isnan(stats[i]).all() else tuple(float(v) for v in stats[i]) for i in idx),
            verify=verify, on_error=on_error, retried=retried & set(idx), stats_source=reader.stats_source))
    return jobs


def read_images_meta(target: FileTarget, attrs: dict[str, Any]) -> dict[str, Any]:
    """The store's own images/zarr.json (a 1.0 store resumed or repaired keeps its codecs: no checksums)."""
    try:
        with target.fs.open(target.key("images/zarr.json"), "rb") as f:
            return json.loads(f.read())
    except (FileNotFoundError, ValueError):
        return images_meta_for(attrs, int(attrs["n_sites"]), tuple(int(v) for v in attrs["image_shape"]),
                               attrs["codec"], has_checksums(attrs))
