"""The main job's last steps on a data set without hidden test labels (any layout but RxRx1's Kaggle task): the
perturbation classifier scored on the experiments it held out, and every well's embedding for the maps.

    held = evaluate_held_out(ckpt, plan, store, out)     # OUT/held_out_predictions.csv; accuracies (below)
    path = write_well_embeddings(ckpt, plan, store, out) # OUT/embeddings.parquet: one row per well, metadata + f0..

Held-out accuracy is the share of held-out wells (the validation fold's whole experiments, never trained on) whose
argmax class is their label, over the wells whose class the training experiments have (a perturbation screened
only in held-out experiments cannot be named; report.json `not_scored` counts those wells): overall, per perturbation type (the layout's
well types: treatments and each control kind), per cell type, per experiment, and, among the treatment wells, per
value of each column the layout says describes a perturbation (`Perturbations.columns`: RxRx3-core's
perturbation_type CRISPR / COMPOUND and concentration; columns with more than MAX_GROUP_VALUES values are left out).
Labels and predictions are the classes' names where the layout names its labels (a gene, "Compound-A @ 0.25":
trainer/training/labels.py). The embeddings file is what `trainer.infer.embed.write_embeddings` writes and
`trainer.maps` reads (docs/maps.md).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellio.errors import ConfigError

from trainer.infer.aggregate import mean_logits
from trainer.infer.chain import Meter, no_meter
from trainer.infer.embed import extract_embeddings, stage_for_layer, write_embeddings
from trainer.infer.predict import predict
from trainer.job.plan import Plan
from trainer.training.checkpoint import load_checkpoint, load_for_inference
from trainer.training.config import Config
from trainer.training.folds import split_experiments
from trainer.training.disk import replaced_atomically
from trainer.training.labels import ClassMap

__all__ = ["MAX_GROUP_VALUES", "OUTPUTS", "evaluate_held_out", "held_out_accuracy", "write_well_embeddings",
           "format_accuracy", "write_report"]

log = logging.getLogger(__name__)

OUTPUTS = ("plan.json", "report.json", "held_out_predictions.csv", "embeddings.parquet")
MAX_GROUP_VALUES = 50   # a perturbation column with more distinct values (a compound id) is not a "type"


def held_out_accuracy(wells: pd.DataFrame, layout: Any) -> dict[str, Any]:
    """Accuracy of `wells` (one row per well: its metadata, `label`, `predicted`) overall and per group (module
    docstring); each group's entry is {value: {"accuracy", "n"}} (an empty value is "(none)"); the perturbation
    columns' groups, of treatment wells only, are under "per_column" by column."""
    p = layout.perturbations
    correct = (wells["predicted"].to_numpy() == wells["label"].to_numpy())
    frame = wells.assign(correct=correct)

    def per(column: str, rows: pd.DataFrame = frame) -> dict[str, dict[str, float]]:
        g = rows.groupby(column, sort=True, dropna=False)["correct"]  # in the column's order (0.5 before 10)
        return {("(none)" if pd.isna(k) or k == "" else str(k)): {"accuracy": float(v.mean()), "n": int(len(v))}
                for k, v in g}

    out: dict[str, Any] = {"accuracy": float(correct.mean()) if len(correct) else float("nan"),
                           "n_wells": int(len(frame)), "per_perturbation_type": per(p.well_type_column),
                           "per_cell_type": per("cell_type"), "per_experiment": per("experiment")}
    treated = frame[frame[p.well_type_column] == p.treatment_well_type]
    out["per_column"] = {column: per(column, treated) for column in p.columns
                         if column in treated.columns and 0 < treated[column].nunique() <= MAX_GROUP_VALUES}
    return out


def evaluate_held_out(ckpt: Path, plan: Plan, store: Any, out: Path, meter: Meter = no_meter) -> dict[str, Any]:
    """The checkpoint's predictions of its held-out experiments (controls included, at the plan's TTA), averaged per
    well; OUT/held_out_predictions.csv (id_code, metadata, label, predicted) and the accuracies (held_out_accuracy)."""
    if plan.val_fold < 0:
        raise ConfigError("plan.val_fold=-1: the model trains on every experiment, so no experiment is held out to "
                          "score it on; set plan.val_fold to a fold (0..plan.n_folds-1)")
    layout, sites = store.layout, store.sites
    with meter("predict: held-out experiments"):
        preds = predict(ckpt, store, datasets="validation", tta=plan.eval_tta, dihedral=plan.dihedral,
                        adabn=plan.adabn, controls=True, device=plan.torch_device(), batch_size=plan.batch,
                        out=out / "predictions" / "held_out.npz")
    scores = mean_logits(preds.logits, preds.index, sites, classes=preds.classes)
    state = load_checkpoint(ckpt)
    class_map = ClassMap.from_dict(state["classes"])
    first = sites.drop_duplicates("id_code")
    ids = class_map.row_ids(first)
    truth = pd.Series(ids, index=first["id_code"].to_numpy()).loc[scores.id_codes].to_numpy()
    meta = first.set_index("id_code").loc[scores.id_codes]
    # the classes the run saw examples of: its head has a column for every labelled class of the store, but a
    # perturbation screened only in held-out experiments (a gene of RxRx3-core) was never trained on
    trained_on = split_experiments(Config.from_dict(state["config"]).data, sites).train
    seen = np.unique(ids[first["experiment"].isin(trained_on).to_numpy() & (ids >= 0)])
    keep = (truth >= 0) & np.isin(truth, preds.classes) & np.isin(truth, seen)
    name = np.vectorize(class_map.name, otypes=[object]) if class_map.names is not None else (lambda ids: ids)
    wells = meta.loc[keep].reset_index()
    wells = wells[[c for c in ("id_code", "dataset", "experiment", "cell_type", "plate", "well",
                               layout.perturbations.well_type_column, *layout.perturbations.columns)
                   if c in wells.columns]].assign(label=name(truth[keep]), predicted=name(scores.labels()[keep]))
    unseen = int(((truth >= 0) & ~np.isin(truth, seen)).sum())
    skipped = int((~keep).sum())
    if skipped:
        log.info("held-out wells: %d not scored: %d of a class no training experiment has, %d without a class",
                 skipped, unseen, skipped - unseen)
    path = out / "held_out_predictions.csv"
    with replaced_atomically(path) as tmp:
        wells.to_csv(tmp, index=False)
    result = {**held_out_accuracy(wells, layout), "experiments": sorted(wells["experiment"].unique().tolist()),
              "not_scored": {"class_not_trained": unseen, "no_class": skipped - unseen},
              "predictions": str(path), "tta": plan.eval_tta}
    log.info("%s", format_accuracy(result))
    return result


def format_accuracy(result: dict[str, Any]) -> str:
    """The held-out accuracies as a few plain lines."""
    lines = [f"held-out accuracy {result['accuracy']:.4f} on {result['n_wells']} wells of experiments "
             f"{', '.join(result.get('experiments', []))}"]

    def line(title: str, groups: dict[str, Any]) -> None:
        shown = ", ".join(f"{k} {v['accuracy']:.3f} ({v['n']})" for k, v in groups.items())
        lines.append(f"   {title}: {shown}")

    for key, groups in result.items():
        if key == "per_column":
            for column, by_value in groups.items():
                line(f"treatments by {column}", by_value)
        elif key.startswith("per_") and isinstance(groups, dict):
            line(key.removeprefix("per_").replace("_", " "), groups)
    return "\n".join(lines)


def write_well_embeddings(ckpt: Path, plan: Plan, store: Any, out: Path, meter: Meter = no_meter) -> Path:
    """Every well's embedding (the mean over its sites and the plan's `embed_tta` views of the model's features
    at `plan.map_layer`, every split, controls included) -> OUT/embeddings.parquet with the wells' metadata
    (docs/maps.md compares the final layer, the default, with the stage before the last)."""
    model, cfg, _ = load_for_inference(ckpt, plan.torch_device())
    layer = plan.map_layer
    try:
        stage_for_layer(model, layer)
    except ConfigError as exc:  # after training: embed what the model has rather than lose the run
        log.warning("plan.map_layer=%s: %s; embedding the final layer", layer, exc)
        layer = "final"
    # whole sites are ~5x a crop's pixels: a quarter of the batch keeps the activations' memory the same
    batch = max(1, plan.batch // 4) if plan.embed_tta == "full" else plan.batch
    with meter("embeddings: every well"):
        emb = extract_embeddings(model, cfg, store, datasets=None, tta=plan.embed_tta, batch_size=batch,
                                 layer=layer)
    path = write_embeddings(emb, store.sites, out / "embeddings.parquet")
    log.info("embeddings of %d wells (%d features of the %s layer, %s views) -> %s", len(emb), emb.vectors.shape[1],
             layer, plan.embed_tta, path)
    return path


def write_report(path: Path, report: dict[str, Any]) -> Path:
    """OUT/report.json of this job: the held-out accuracies, the plan, the training metrics and the timings."""
    with replaced_atomically(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=str))
    return path
