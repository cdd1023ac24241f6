"""Committing sites: the journal merged into `status` and `stats/*`, the failures listed, and the root rewritten
last (the commit point), after a whole ingest (`finalize`) or after chosen sites were stored again
(`commit_sites`: a retry of failed sites, a repair)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DiskFullError, StoreError
from ..records import from_dict, to_dict
from ..store.files import FileTarget
from ..store.format import JOURNAL_DIR, STATUS_FAILED, STATUS_OK, TMP_DIR, group_metadata, has_checksums
from ..store.journal import read_journal
from ..store.tables import read_small_array
from .skeleton import write_root

__all__ = ["FailedSite", "finalize", "finalize_checked", "commit_sites"]


@dataclass(frozen=True)
class FailedSite:
    """A site ingest could not store (recorded in the store's `failed` attribute)."""

    index: int
    id_code: str
    site: int
    file: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def _write_tables(target: FileTarget, status: np.ndarray, sums: np.ndarray, sumsq: np.ndarray,
                  npix: float, checksum: bool = True) -> None:
    """status and stats/* from per-site integer sums (finalize, repair), in the store's format version."""
    mean = sums.astype(np.float64) / npix
    std = np.sqrt(np.maximum(sumsq.astype(np.float64) / npix - mean * mean, 0.0))
    target.write_json("stats/zarr.json", group_metadata())
    for name, data in (("status", status), ("stats/sum", sums), ("stats/sumsq", sumsq), ("stats/mean", mean),
                       ("stats/std", std)):
        target.write_small_array(name, data, checksum)


def finalize(target: FileTarget, attrs: dict[str, Any], plan: pd.DataFrame) -> tuple[dict[str, Any], list[FailedSite]]:
    done = read_journal(target.fs, target.root)
    n = len(plan)
    missing = [i for i in range(n) if i not in done]
    if missing:
        raise StoreError(f"{target.path}: {len(missing)} sites have no completion record (first: {missing[0]}); "
                         f"rerun `cellio ingest` to finish them")
    status = np.zeros(n, dtype=np.uint8)
    C = int(attrs["image_shape"][2])
    sums = np.zeros((n, C), dtype=np.uint64)
    sumsq = np.zeros((n, C), dtype=np.uint64)
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
    write_root(target, attrs)  # the commit point: from here on the store opens as complete
    target.remove(JOURNAL_DIR, recursive=True)
    target.remove(TMP_DIR, recursive=True)
    return attrs, failed


def finalize_checked(target: FileTarget, attrs: dict[str, Any],
                      plan: pd.DataFrame) -> tuple[dict[str, Any], list[FailedSite]]:
    try:
        return finalize(target, attrs, plan)
    except DiskFullError as exc:
        raise DiskFullError(target.path, 64 * len(plan) * int(attrs["image_shape"][2]), target.free_bytes(),
                            what=f"finishing the store (writing {exc.path} failed)") from None


def commit_sites(target: FileTarget, attrs: dict[str, Any], todo: list[int], report: Any = None,
                  damaged: Sequence[str] = ()) -> tuple[dict[str, Any], list[FailedSite]]:
    """After `store_again`: status, stats/ and the root's failed list with the journal's record of `todo` (stored
    values elsewhere; `damaged` tables rebuilt, stats/ from `report`'s freshly verified sums), then the journal
    deleted. Writes the tables, then the root (the commit point: a run killed before it retries again)."""
    n = int(attrs["n_sites"])
    failed = {int(f["index"]): from_dict(FailedSite, f, error=StoreError, where=f"{target.path}: failed site")
              for f in attrs.get("failed", [])}
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
    write_root(target, attrs)
    target.remove(JOURNAL_DIR, recursive=True)
    target.remove(TMP_DIR, recursive=True)
    return attrs, listed
