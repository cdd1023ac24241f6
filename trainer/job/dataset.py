"""The main job's data steps: the data set's directory (given: RxRx1 or any data set cellio reads; or the embedded
synthetic RxRx1 set), its metadata, the ingest into a cellio store (and what the store holds), and, for RxRx1, the
sample submission the job's submission follows.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

import cellio

from trainer.job.options import PROFILES, JobOptions, detect_dataset
from trainer.training.labels import class_names, dose_column

__all__ = ["SYNTH_MARKER", "make_data", "dataset_name", "summarize_metadata", "ingest", "describe_store",
           "describe_sites", "sample_submission"]

log = logging.getLogger(__name__)

SYNTH_MARKER = ".cellio-synth.json"


def make_data(opts: JobOptions) -> Path:
    """The data set's directory: the given one, or the embedded synthetic RxRx1 set (made once, then reused)."""
    if opts.data:
        raw = Path(opts.data).resolve()
        if not raw.is_dir():
            raise cellio.CellioError(f"--data {raw}: no such directory (expected a data set's raw directory, e.g. "
                                     "RxRx1 in the Kaggle layout: train.csv, test.csv, train/, test/ ...)")
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


def dataset_name(opts: JobOptions) -> str:
    """The data set the job reads: --dataset, else the one cellio recognises in --data (detect_dataset), else the
    embedded synthetic set's (RxRx1)."""
    if opts.dataset:
        return opts.dataset
    return "rxrx1" if opts.data is None else detect_dataset(Path(opts.data))


def summarize_metadata(raw: Path, opts: JobOptions) -> None:
    """RxRx1's metadata before the ingest: sites per split and cell type, well types, classes, experiments, plate
    groups and the train rotations. Another data set's is summarised from its store after the ingest
    (describe_sites), where its reader has read it."""
    name = dataset_name(opts)
    if name != "rxrx1":
        log.info("data set %s%s: its metadata is read by its reader at the ingest (summary below)", name,
                 "" if opts.dataset else " (recognised)")
        return
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
    """OUT/store.zarr (a rerun finishes or reuses it), then what it holds (describe_store); `opts.dataset` names the
    data set's reader (else cellio's ingest recognises the directory: `reader=None`)."""
    store_path = opts.out / "store.zarr"
    # --dataset names the reader; the embedded synthetic set is RxRx1's; otherwise cellio recognises the directory
    reader = opts.dataset or ("rxrx1" if opts.data is None else None)
    metadata = {} if opts.metadata is None else {"metadata": str(Path(opts.metadata).resolve())}
    report = cellio.ingest(raw, store_path, workers=opts.workers, reader=reader, **metadata)
    log.info("%d of %d sites stored (%d written by this run, %d failed) in %.1f s; codec %s, %s workers",
             report.n_ok, report.n_sites, report.n_written, report.n_failed, report.seconds, report.codec,
             report.workers)
    store = cellio.open_store(store_path)  # an unfinished ingest: StoreIncompleteError
    log.info("%s", describe_store(store))
    if store.layout.name != "rxrx1":  # RxRx1's metadata was summarised before the ingest (summarize_metadata)
        log.info("%s", describe_sites(store))
    return store_path


def describe_store(store: cellio.Store) -> str:
    """The store as the job's later steps read it, from cellio's public Store: its sites (stored, planned, failed),
    their shape, the codec, checksums and size on disk (`cellio inspect STORE` says more: counts per experiment,
    the last verification, each failed site)."""
    h, w, c = store.image_shape
    size = sum(f.stat().st_size for f in Path(store.path).rglob("*") if f.is_file())
    return (f"store {store.path}: {len(store)} sites of {h}x{w}x{c} {store.layout.pixel_dtype} "
            f"({len(store.failed)} failed), data set {store.layout.name}, codec "
            f"{store.attrs.get('codec')}, {'crc32c checksums' if store.checksums else 'no checksums'}, "
            f"{size / 2**20:.1f} MiB on disk")


def describe_sites(store: cellio.Store) -> str:
    """A data set's sites as its layout names them: per split and cell type, wells per well type, labelled
    classes, experiments and plates (the metadata summary of a data set other than RxRx1)."""
    layout = store.layout
    p = layout.perturbations
    sites = store.sites
    wells = sites.drop_duplicates("id_code")
    counts = sites.groupby(["dataset", "cell_type"]).size().unstack(fill_value=0).to_string()
    treat = wells[wells[p.well_type_column] == p.treatment_well_type]
    classes = f"{treat[p.label_column].nunique()} labelled treatment classes ({p.label_column})"
    if p.label_kind == "str" and (dose := dose_column(sites)) is not None:  # the trainer's default classes
        named = class_names(treat, (p.label_column, dose))
        classes += f", {named.nunique()} at a dose ({p.label_column} @ {dose}: data.dose_column=auto)"
    return (f"data set {layout.name} ({layout.n_channels} channels {', '.join(layout.channel_names)}; "
            f"{'hidden' if layout.hidden_test_labels else 'no hidden'} test labels)\n{counts}\n"
            f"{len(sites)} sites in {len(wells)} wells; well types {wells[p.well_type_column].value_counts().to_dict()}"
            f"; {classes}; "
            f"{wells['experiment'].nunique()} experiments, {wells.groupby(['experiment', 'plate']).ngroups} plates")


def sample_submission(raw: Path, out: Path) -> Path:
    """Kaggle's sample_submission.csv, or (for a directory without one) the same file made from test.csv's rows."""
    given = raw / "sample_submission.csv"
    if given.is_file():
        return given
    made = out / "sample_submission.csv"
    pd.read_csv(raw / "test.csv", usecols=["id_code"]).assign(sirna=0).to_csv(made, index=False)
    log.info("%s is missing: the submission follows test.csv's rows (%s)", given, made)
    return made
