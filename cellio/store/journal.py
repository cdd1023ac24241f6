"""The ingest journal: one JSON record per finished batch of sites under `.cellio-journal/` while an ingest is
unfinished (docs/data_format.md, "Ingest states"); a site with a record is done, in the store."""
from __future__ import annotations

import json
import logging
from typing import Any

from .format import JOURNAL_DIR
from .remote import with_retries

__all__ = ["journal_key", "read_journal"]

log = logging.getLogger(__name__)


def journal_key(first: int, last: int) -> str:
    """The journal file of the batch of sites first..last (zero-padded, so names sort by site)."""
    return f"{JOURNAL_DIR}/{first:010d}-{last:010d}.json"


def read_journal(fs: Any, root: str) -> dict[int, dict[str, Any]]:
    """All per-batch completion records of an unfinished ingest, by site index (later records win)."""
    jdir = f"{root}/{JOURNAL_DIR}"
    entries: dict[int, dict[str, Any]] = {}
    try:
        listed = with_retries(lambda: fs.ls(jdir, detail=False), fs.unstrip_protocol(jdir), what="listing")
        names = sorted(p for p in listed if p.endswith(".json"))
    except FileNotFoundError:
        return entries
    for name in names:
        try:
            with fs.open(name, "rb") as f:
                batch = json.loads(f.read())
        except (OSError, ValueError) as exc:  # only a torn write from a killed run: its sites are redone
            log.warning("ignoring unreadable journal file %s: %s", name, exc)
            continue
        for e in batch["entries"]:
            entries[int(e["i"])] = e
    return entries
