"""The pseudo-label stage's labeller: which unlabelled wells get which label, chosen under the plate constraint.

    run(cfg, labeller=label_wells)          # trainer.training.loop; train.stage=pseudo_label asks it every round
    labels = select_pseudo_labels(wells, sites, groups, fraction=0.4)   # id_code, sirna, margin

Each round the current model scores the unlabelled wells (the test set, and the held-out validation fold so its
out-of-fold accuracy measures what pseudo-labelling does to unseen experiments): cosine to the class centres of
the labelled train wells (pseudo.source=embedding) or mean logits (logits). The per-well scores are assigned per
plate exactly as the submission is (`trainer.infer.assign.assign_plates`: the rotation inferred, one class per
plate); and on every plate the wells whose assigned class is most clearly ahead of the plate's other allowed
classes are kept, a growing fraction per round (trainer/training/stages/pseudo.py). Two wells of one plate never get
the same class.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from trainer.infer.aggregate import WellScores, mean_logits
from trainer.infer.assign import assign_plates
from trainer.infer.embed import centroid_scores, extract_embeddings
from trainer.infer.predict import Predictions, predict_views
from trainer.infer.rotation import PlateGroupsLike, treatment_classes, well_table
from trainer.training.stages.pseudo import PseudoRound

__all__ = ["label_wells", "select_pseudo_labels", "CENTROID_SCALE"]

log = logging.getLogger(__name__)

# Cosine similarities to class centres span ~0.3 between the right class and the rest; the chain fits a temperature
# of ~0.13 for them on held-out wells (report.json "calibration" of the main job on tests/foreign_subtle.py data),
# so pseudo-labelling scales them by ~1/0.13 before the plate assignment's rotation evidence reads probabilities.
CENTROID_SCALE = 8.0


def label_wells(model: nn.Module, task: PseudoRound) -> pd.DataFrame:
    """The labeller of train.stage=pseudo_label (trainer.training.stages.pseudo.Labeller): the target wells' scores
    by `model` as pseudo.source says, then `select_pseudo_labels` at the round's fraction. Every rank returns the
    same labels."""
    if task.cfg.pseudo.source == "embedding":
        wells = _centroid_scores(model, task)
    else:
        wells = _mean_logits(model, task)
    return select_pseudo_labels(wells, task.store.sites, task.groups, fraction=task.fraction,
                                min_z=task.cfg.pseudo.min_z)


def _centroid_scores(model: nn.Module, task: PseudoRound) -> WellScores:
    """Cosine of each target well to the class centres of the labelled train wells, per cell type, after
    per-plate centring (trainer.infer.embed, the chain's "embedding centroids"). Every rank computes all of them
    (one centre view per site: cheap next to training), so no gather is needed. Scaled by CENTROID_SCALE so
    that the rotation evidence of assign_plates sees probabilities, not near-uniform cosines."""
    cfg, env = task.cfg, task.env
    rows = np.concatenate([task.reference_rows, task.target_rows])
    emb = extract_embeddings(model, cfg, task.store, datasets=None, indices=rows, tta=cfg.pseudo.tta,
                             batch_size=cfg.data.val_batch_size or cfg.data.batch_size,
                             device=env.device, progress=cfg.train.progress and env.is_main)
    codes = task.store.sites["id_code"].to_numpy()
    reference = pd.unique(codes[task.reference_rows]).tolist()
    targets = sorted(pd.unique(codes[task.target_rows]))
    scores = centroid_scores(emb, task.store.sites, reference=reference, targets=targets)
    return dataclasses.replace(scores, scores=scores.scores * CENTROID_SCALE)


def _mean_logits(model: nn.Module, task: PseudoRound) -> WellScores:
    """Mean logits per target well; every rank predicts its share, all ranks get everyone's."""
    cfg, env = task.cfg, task.env
    part = predict_views(model, cfg, task.class_map, task.store, datasets=None, indices=task.target_rows,
                         tta=cfg.pseudo.tta, adabn=cfg.pseudo.adabn, rank=env.rank, world_size=env.world_size,
                         device=env.device, batch_size=cfg.data.val_batch_size or cfg.data.batch_size,
                         progress=cfg.train.progress and env.is_main, desc="pseudo-labels: predict")
    parts: list[Any] = [part]
    if env.distributed:
        parts = [None] * env.world_size
        torch.distributed.all_gather_object(parts, (part.logits, part.index, part.view))
        parts = [Predictions(lg, ix, vw, part.classes) for lg, ix, vw in parts]
    logits = np.concatenate([q.logits for q in parts])
    index = np.concatenate([q.index for q in parts])
    return mean_logits(logits, index, task.store.sites, classes=part.classes)


def select_pseudo_labels(wells: WellScores, sites: pd.DataFrame, groups: PlateGroupsLike, *, fraction: float,
                         min_z: float = 3.0) -> pd.DataFrame:
    """id_code, sirna, margin of the kept treatment wells: per plate the top `fraction` (at least one well) by
    margin = log-probability of the assigned class minus the best other class the plate allows."""
    assigned = assign_plates(wells, sites, groups, min_z=min_z)
    label = assigned.predictions.set_index("id_code")["sirna"]
    meta = well_table(sites).loc[wells.id_codes]
    treat = treatment_classes(groups)
    keep = np.isin(wells.classes, treat)
    lp = wells.log_probs()[:, keep]
    lp = lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)
    cls = wells.classes[keep]
    col = pd.Index(cls).get_indexer(label.loc[wells.id_codes].to_numpy())
    rows = np.flatnonzero((meta["well_type"] == "treatment").to_numpy() & (col >= 0))
    margin = np.full(len(wells), -np.inf)
    for r in rows:
        exp, plate = meta["experiment"].iloc[r], int(meta["plate"].iloc[r])
        allowed = groups.allowed_sirnas(plate, assigned.rotations[exp]) if exp in assigned.rotations else treat
        others = np.isin(cls, allowed) & (np.arange(len(cls)) != col[r])
        margin[r] = lp[r, col[r]] - (lp[r, others].max() if others.any() else -np.inf)
    frame = pd.DataFrame({"id_code": wells.id_codes, "sirna": label.loc[wells.id_codes].to_numpy(),
                          "margin": margin,
                          "plate": (meta["experiment"].astype(str) + "/" + meta["plate"].astype(str)).to_numpy()})
    frame = frame.iloc[rows]
    kept = [g.nlargest(max(1, int(np.ceil(fraction * len(g)))), "margin") for _, g in frame.groupby("plate")]
    out = pd.concat(kept) if kept else frame
    return out.drop(columns="plate").sort_values("id_code").reset_index(drop=True)
