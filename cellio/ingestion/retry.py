"""Storing chosen sites of a finished store again (whole shards), with the ingest's own batch tasks and journal: the
sites an earlier run skipped (a rerun retries them) and the sites `cellio verify` found damaged (repair)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from ..store.attributes import recorded_dtype
from ..store.files import FileTarget
from ..store.images import image_layout
from ..store.shards import ShardLayout
from .backends import run_checked
from .batch import make_jobs, read_images_meta
from .source import RawSource
from .space import check_space

__all__ = ["store_again"]


def _whole_shards(target: FileTarget, attrs: dict[str, Any], sites: Iterable[int]) -> list[int]:
    """Sites to ingest again for `sites`: themselves, or in the sharded layout every site of their shards (a shard
    is rewritten whole; its failed sites are tried again with it)."""
    sites = sorted(set(sites))
    images = read_images_meta(target, attrs)
    if not sites or image_layout(images) != "sharded":
        return sites
    per = ShardLayout.from_metadata(images).sites
    n = int(attrs["n_sites"])
    shards = sorted({i // per for i in sites})
    return [i for s in shards for i in range(s * per, min(n, (s + 1) * per))]


def store_again(target: FileTarget, attrs: dict[str, Any], plan: pd.DataFrame, source: RawSource,
                sites: Iterable[int], verify: bool, batch_size: int | None, n_workers: int, scheduler: Any,
                progress: bool, lock: Any) -> list[int]:
    """Ingest `sites` of a finished store again (whole shards) with the ingest's own batch tasks, journalled;
    `commit_sites` then makes them part of the store. The store's failed sites among them are retried: one still
    bad is recorded as failed again. A stored site that fails now (its PNG deleted or changed since) is an
    ImageError naming the file, whatever on_error: a retry never turns a stored site into a failed one, and nothing
    is committed. Returns the sites ingested."""
    todo = _whole_shards(target, attrs, sites)
    if todo:
        check_space(target, attrs["image_shape"], attrs["codec"], len(todo), recorded_dtype(attrs))
        failed = [int(f["index"]) for f in attrs.get("failed", [])]
        jobs = make_jobs(plan, todo, source, target, attrs, verify, "fail", batch_size, n_workers,
                         retried=failed)
        run_checked(target, attrs, jobs, len(todo), n_workers, scheduler, progress, lock)
    return todo
