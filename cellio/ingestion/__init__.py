"""The write path: a raw data set -> a cellio store (docs/data_format.md), parallel, resumable, verified.

job.py `ingest` runs the others in the order things happen: plan.py (the sites and the arguments), skeleton.py
(metadata, site table, root attributes), batch.py (a worker's batch: decode (png.py), check, write, journal) run
by backends.py (in-process, process pool, Dask), space.py (free space), finalize.py (the commit), retry.py (sites
of a finished store stored again); repair.py `repair_store` rewrites what `cellio verify` found damaged.
"""
from __future__ import annotations

from .finalize import FailedSite
from .job import DEFAULT_CODEC, DEFAULT_LAYOUT, ON_ERROR, IngestReport, ingest
from .plan import VERIFY_ATOL
from .repair import RepairReport, repair_store

__all__ = ["ingest", "repair_store", "IngestReport", "RepairReport", "FailedSite", "DEFAULT_CODEC", "DEFAULT_LAYOUT",
           "VERIFY_ATOL", "ON_ERROR"]
