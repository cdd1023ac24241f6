"""`repair_store(raw, store)`: rewrite what `cellio verify` found damaged in a finished store (sites from the raw
files, tables from the plan and the verified sums), under the writer lock, then verify it again."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..datasets import get_dataset
from ..errors import MetadataError, StoreDamagedError, StoreError
from ..params import parse_count
from ..processes import require_importable_main
from ..store.attributes import recorded_dataset
from ..store.columns import encode_column
from ..store.files import FileTarget, is_url
from ..store.format import JOURNAL_DIR, TMP_DIR, has_checksums
from ..store.lock import lock_store
from ..store.verify import verify_store, write_last_verified
from .backends import pool_method
from .finalize import commit_sites
from .plan import as_tuple, plan_sites
from .retry import store_again
from .source import open_source
from .skeleton import check_plan, images_meta_for, read_root

__all__ = ["RepairReport", "repair_store"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RepairReport:
    """What `repair_store` did: the sites re-ingested, the arrays rewritten, and the verification afterwards."""

    store: str
    repaired: tuple[int, ...]    # site indices re-ingested from the PNGs
    rewritten: tuple[str, ...]   # arrays / metadata files rewritten
    seconds: float
    after: Any                   # cellio.store.verify.VerifyReport of the repaired store

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "repaired": list(self.repaired), "rewritten": list(self.rewritten),
                "seconds": round(self.seconds, 3), "after": self.after.to_dict()}


def repair_store(raw: str | os.PathLike[str], store_path: str | os.PathLike[str], *, report: Any = None,
                 workers: int | None = None, threads: int | None = None, progress: bool = True,
                 batch_size: int | None = None, storage_options: dict[str, Any] | None = None) -> RepairReport:
    """Rewrite what `cellio.verify_store` found damaged in a finished store, then verify it again.

    Damaged sites are re-ingested from `raw` with the ingest's own batch tasks (same decode, checks, atomic chunk
    writes and journal; the store's codec); a damaged site-table column or images/zarr.json is rewritten from the
    plan of the store's original ingest arguments; status and stats/ are rewritten from the stored (or, when those
    are damaged, the freshly verified) per-site sums. Holds the store's writer lock throughout. `report`: a full
    VerifyReport of the store to act on (None: verify first). The returned report's `after` says whether the
    store is whole now; `last_verified` records it. The raw data is read with the reader of the data set the
    store records (`dataset_layout`).
    """

    t0 = time.perf_counter()
    workers, batch_size = parse_count("workers", workers), parse_count("batch_size", batch_size)
    threads = parse_count("threads", threads)
    n_workers = workers or os.cpu_count() or 1
    if n_workers > 1:
        require_importable_main(f"cellio.repair_store(workers={n_workers})", pool_method())
    if not is_url(str(raw)) and not Path(raw).exists():  # before any verification: nothing to repair from
        raise MetadataError(f"{raw}: raw data directory not found (repair re-ingests damaged sites from the raw data)")
    target = FileTarget(str(store_path), storage_options)
    with lock_store(target, "repair") as lock:
        if report is None:
            report = verify_store(store_path, threads=threads, progress=progress, record=False,
                                  storage_options=storage_options)
        attrs = read_root(target)
        if attrs is None:
            raise StoreDamagedError(f"{target.key('zarr.json')}: the root document is unreadable, so the store's "
                                    f"plan is unknown: not repairable; ingest again into a new path",
                                    file=target.key("zarr.json"))
        params = attrs["ingest"]
        reader = get_dataset(recorded_dataset(attrs)).for_source(str(raw), metadata=params.get("metadata"),
                                                                 channels=params.get("channels"))
        source = open_source(raw, reader, params.get("channels"))
        plan = plan_sites(source, tuple(params["datasets"]), as_tuple(params["experiments"]),
                          as_tuple(params["cell_types"]), params["limit"], as_tuple(params.get("plates")))
        n = int(attrs["n_sites"])
        if len(plan) != n:
            raise StoreError(f"{target.path} plans {n} sites, {raw} now gives {len(plan)}: not the raw data this "
                             f"store was ingested from")
        shape = tuple(int(v) for v in attrs["image_shape"])
        damaged = {d.file for d in report.arrays}

        def hit(name: str) -> bool:
            return any(f == name or f.startswith(name + "/") for f in damaged)

        rewritten: list[str] = []
        if hit("images/zarr.json"):
            target.write_json("images/zarr.json", images_meta_for(attrs, n, shape, attrs["codec"],
                                                                  has_checksums(attrs)))
            rewritten.append("images/zarr.json")
        for spec in attrs["site_columns"]:
            name, kind = spec["name"], spec["dtype"]
            if hit(f"sites/{name}"):
                target.write_small_array(f"sites/{name}", encode_column(plan[name], kind), has_checksums(attrs))
                rewritten.append(f"sites/{name}")
        check_plan(target, attrs, plan)  # the (repaired) site table is this raw data's plan

        # the damaged sites, and the sites ingest skipped (their files may have been fixed since)
        missing = [int(f["index"]) for f in attrs.get("failed", [])]
        if report.damaged_indices or missing:
            log.info("%s: re-ingesting %d damaged and %d missing sites from %s", target.path,
                     len(report.damaged_indices), len(missing), raw)
        todo = store_again(target, attrs, plan, source, [*report.damaged_indices, *missing],
                           bool(params["verify"]), batch_size, n_workers, None, progress, lock)
        tables = [name for name in ("status", "stats/sum", "stats/sumsq", "stats/mean", "stats/std") if hit(name)]
        if todo or tables:
            commit_sites(target, attrs, todo, report, tables)
            rewritten += ["status", "stats/sum", "stats/sumsq", "stats/mean", "stats/std"]
        target.remove(JOURNAL_DIR, recursive=True)
        target.remove(TMP_DIR, recursive=True)
        lock.check()
        after = verify_store(store_path, threads=threads, progress=progress, record=False,
                             storage_options=storage_options)
        write_last_verified(store_path, after, storage_options=storage_options, lock=False)  # we hold the lock
    return RepairReport(str(store_path), tuple(todo), tuple(rewritten), time.perf_counter() - t0, after)
