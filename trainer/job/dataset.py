"""The main job's data steps: the RxRx1 directory (given, or the embedded synthetic set), its metadata, the ingest
into a cellio store (and what the store holds), and the sample submission the job's submission follows.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

import cellio

from trainer.job.options import PROFILES, JobOptions

__all__ = ["SYNTH_MARKER", "make_data", "summarize_metadata", "ingest", "describe_store", "sample_submission"]

log = logging.getLogger(__name__)

SYNTH_MARKER = ".cellio-synth.json"


def make_data(opts: JobOptions) -> Path:
    """The RxRx1 directory to use: the given one, or the embedded synthetic set (made once, then reused)."""
    if opts.data:
        raw = Path(opts.data).resolve()
        if not raw.is_dir():
            raise cellio.CellioError(f"--data {raw}: no such directory (expected an RxRx1 directory in the Kaggle "
                                     "layout: train.csv, test.csv, train/, test/ ...)")
        log.info("using %s", raw)
        return raw
    raw = opts.out / "raw"
    marker = raw / SYNTH_MARKER
    params = {**PROFILES[opts.profile], "seed": opts.seed}
    if marker.is_file() and json.loads(marker.read_text()).get("params") == params:
        log.info("synthetic set already at %s", raw)
        return raw
    summary = cellio.synthesize(raw, workers=opts.workers, **params)
    marker.write_text(json.dumps({"params": params, "summary": json.loads(json.dumps(summary, default=str))},
                                 indent=2))
    log.info("synthetic RxRx1 -> %s: %s sites, %.1f sites/s", raw, summary.get("sites"), summary.get("sites_per_s", 0))
    return raw


def summarize_metadata(raw: Path) -> None:
    """Sites per split and cell type, well types, classes, experiments, plate groups and the train rotations."""
    sites = cellio.read_metadata(raw)
    groups = cellio.derive_plate_groups(sites[sites["dataset"] == "train"])
    log.info("%s", sites.groupby(["dataset", "cell_type"]).size().unstack(fill_value=0).to_string())
    wells = sites.drop_duplicates("id_code")
    log.info("%d sites in %d wells; well types: %s; %d labelled treatment classes", len(sites), len(wells),
             wells["well_type"].value_counts().to_dict(),
             wells.loc[wells["well_type"] == "treatment", "sirna"].nunique())
    experiments = wells.groupby("dataset")["experiment"].nunique()
    log.info("experiments: %s", ", ".join(f"{k} {v}" for k, v in experiments.items()))
    log.info("plate groups: %s siRNAs; train rotations: %s", [len(g) for g in groups.groups], dict(groups.rotations))


def ingest(raw: Path, opts: JobOptions) -> Path:
    """OUT/store.zarr (a rerun finishes or reuses it), then what it holds (describe_store)."""
    store_path = opts.out / "store.zarr"
    report = cellio.ingest(raw, store_path, workers=opts.workers)
    log.info("%d of %d sites stored (%d written by this run, %d failed) in %.1f s; codec %s, %s workers",
             report.n_ok, report.n_sites, report.n_written, report.n_failed, report.seconds, report.codec,
             report.workers)
    log.info("%s", describe_store(cellio.open_store(store_path)))  # an unfinished ingest: StoreIncompleteError
    return store_path


def describe_store(store: cellio.Store) -> str:
    """The store as the job's later steps read it, from cellio's public Store: its sites (stored, planned, failed),
    their shape, the codec, checksums and size on disk (`cellio inspect STORE` says more: counts per experiment,
    the last verification, each failed site)."""
    h, w, c = store.image_shape
    size = sum(f.stat().st_size for f in Path(store.path).rglob("*") if f.is_file())
    return (f"store {store.path}: {len(store)} sites of {h}x{w}x{c} uint8 ({len(store.failed)} failed), codec "
            f"{store.attrs.get('codec')}, {'crc32c checksums' if store.checksums else 'no checksums'}, "
            f"{size / 2**20:.1f} MiB on disk")


def sample_submission(raw: Path, out: Path) -> Path:
    """Kaggle's sample_submission.csv, or (for a directory without one) the same file made from test.csv's rows."""
    given = raw / "sample_submission.csv"
    if given.is_file():
        return given
    made = out / "sample_submission.csv"
    pd.read_csv(raw / "test.csv", usecols=["id_code"]).assign(sirna=0).to_csv(made, index=False)
    log.info("%s is missing: the submission follows test.csv's rows (%s)", given, made)
    return made
