"""train.stage=pseudo_label: progressive pseudo-labelling (the 1st place's scheme), with the labels chosen by a
LABELLER that whoever starts the run hands in.

    stage = PseudoLabel(labeller)           # labeller(model, PseudoRound) -> id_code, sirna, margin

Training never imports inference (tests/test_imports.py): choosing pseudo-labels means predicting the unlabelled
wells and assigning them per plate as the submission is, which is the inference package's work. The labeller
`trainer.infer.pseudo.label_wells` does that; `python -m trainer.train` and the main job hand it to `run`.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from cellio.errors import CellioError, ConfigError

from ..config import Config
from ..data import make_loader
from ..labels import ClassMap
from ..layout import require_plate_constraint
from ..runtime import Env, unwrap
from .base import Stage, StageContext, StageUpdate

__all__ = ["PseudoRound", "Labeller", "PseudoLabel", "round_fraction", "precision"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PseudoRound:
    """What a labeller is asked in round `round`: label a `fraction` of each plate's target wells."""

    round: int
    fraction: float               # share of each plate's wells to keep (at least one per plate)
    cfg: Config                   # pseudo.* says from which scores (source, tta, adabn) and min_z
    env: Env                      # every rank asks; every rank must get the same labels
    store: Any                    # the run's cellio store (its site table: what the rows refer to)
    class_map: ClassMap
    groups: Any                   # cellio.PlateGroups of the train experiments (the plate constraint)
    reference_rows: np.ndarray    # store rows of the labelled train sites the run trains on
    target_rows: np.ndarray       # store rows of the sites to label (test and held-out treatment sites)


class Labeller(Protocol):
    def __call__(self, model: nn.Module, task: PseudoRound) -> pd.DataFrame:
        """id_code, sirna, margin of the target wells it labels, by `model` as it is now (eval mode is the
        labeller's to set; the stage restores the training mode after)."""
        ...


def round_fraction(k: int, first: float, step: float) -> float:
    """The share of each plate's wells pseudo-labelled in round k (0-based)."""
    return float(min(1.0, first + k * step))


def precision(labels: pd.DataFrame, truth: pd.Series) -> tuple[float, int]:
    """(share of pseudo-labels equal to the truth, number of labelled wells scored)."""
    known = labels[labels["id_code"].isin(truth.index)]
    if known.empty:
        return float("nan"), 0
    hit = known["sirna"].to_numpy() == truth.loc[known["id_code"]].to_numpy()
    return float(hit.mean()), int(len(known))


class PseudoLabel(Stage):
    """The train experiments with their labels plus the test wells (and the held-out fold's, without their labels)
    that the labeller labels confidently with the current model. Round k (pseudo.rounds of them over the run)
    starts at epoch k * epochs / rounds and relabels with the model as it is then, a larger share of each plate
    every round. An epoch keeps the length of the train experiments alone (cellio samples_per_epoch), so the
    schedule does not move as pseudo-labels are added. Every rank asks the labeller, which must give every rank
    the same labels (checked by a digest)."""

    name = "pseudo_label"

    def __init__(self, labeller: Labeller | None) -> None:
        if labeller is None:
            raise ConfigError("train.stage=pseudo_label: no labeller to choose the pseudo-labels; run it with "
                              "python -m trainer.train or the main job, or pass run(cfg, labeller=...) "
                              "(trainer.infer.pseudo.label_wells)")
        self.labeller = labeller
        self.round = -1
        self.labels = pd.DataFrame({"id_code": [], "sirna": [], "margin": []})
        self.history: list[dict[str, Any]] = []

    def loaders(self, model: nn.Module, ctx: StageContext) -> tuple[Any, Any | None]:
        sites = ctx.store.sites
        # first: the test wells are labelled under the plate assignment (and in RxRx1's vocabulary)
        self._groups = require_plate_constraint(sites, "train.stage=pseudo_label (wells are pseudo-labelled under "
                                                "the plate assignment)")
        is_train = sites["experiment"].isin(ctx.split.train).to_numpy() & (sites["dataset"] == "train").to_numpy()
        if not ctx.cfg.data.include_controls:
            is_train &= (sites["well_type"] == "treatment").to_numpy()
        if ctx.cfg.data.cell_types:
            is_train &= sites["cell_type"].isin(ctx.cfg.data.cell_types).to_numpy()
        targets = (sites["dataset"] == "test").to_numpy().copy()
        if ctx.cfg.pseudo.include_validation:
            targets |= sites["experiment"].isin(ctx.split.val).to_numpy() & (sites["dataset"] == "train").to_numpy()
        targets &= (sites["well_type"] == "treatment").to_numpy()
        self._train_rows, self._target_rows = np.flatnonzero(is_train), np.flatnonzero(targets)
        if not len(self._target_rows):
            raise ConfigError("train.stage=pseudo_label: the store has no test (or held-out) treatment sites to "
                              "pseudo-label")
        if not ctx.cfg.train.init_from:
            log.warning("train.stage=pseudo_label without train.init_from: round 0 labels come from an untrained "
                        "model")
        val = make_loader(ctx.cfg, ctx.store, ctx.env, ctx.split.val, train=False,
                          class_map=ctx.class_map) if ctx.split.val else None
        return self._train_loader(ctx), val

    def _train_loader(self, ctx: StageContext) -> Any:
        sites = ctx.store.sites
        row_of = pd.Series(self._target_rows, index=sites["id_code"].to_numpy()[self._target_rows])
        label = dict(zip(self.labels["id_code"], self.labels["sirna"].astype(int)))
        pseudo = [int(r) for code, r in row_of.items() if code in label]
        rows = np.concatenate([self._train_rows, np.asarray(pseudo, dtype=np.int64)])
        return make_loader(ctx.cfg, ctx.store, ctx.env, None, train=True, class_map=ctx.class_map, datasets=None,
                           cell_types=None, controls=True, indices=rows, samples_per_epoch=len(self._train_rows),
                           labels={r: label[sites["id_code"].iat[r]] for r in pseudo})

    def begin_epoch(self, net: nn.Module, epoch: int, schedule: Any, ctx: StageContext) -> StageUpdate | None:
        k = epoch * ctx.cfg.pseudo.rounds // max(schedule.epochs, 1)
        if k <= self.round:
            return None
        p = ctx.cfg.pseudo
        fraction = round_fraction(k, p.first_fraction, p.fraction_step)
        model = unwrap(net)
        was_training = model.training
        try:
            self.labels = self.labeller(model, PseudoRound(k, fraction, ctx.cfg, ctx.env, ctx.store, ctx.class_map,
                                                           self._groups, self._train_rows, self._target_rows))
        finally:
            model.train(was_training)
        self.round = k
        digest = hashlib.sha1(self.labels[["id_code", "sirna"]].to_csv(index=False).encode()).hexdigest()[:16]
        if ctx.env.distributed:  # every rank's labeller saw the same scores; a difference would be a bug
            digests: list[Any] = [None] * ctx.env.world_size
            torch.distributed.all_gather_object(digests, digest)
            if len(set(digests)) != 1:
                raise CellioError(f"pseudo-label round {k}: ranks chose different labels ({digests})")
        truth = ctx.store.sites[ctx.store.sites["experiment"].isin(ctx.split.val)]
        truth = truth.drop_duplicates("id_code").set_index("id_code")["sirna"].dropna().astype(np.int64)
        prec, n = precision(self.labels, truth)
        event = {"round": k, "epoch": epoch, "fraction": fraction, "pseudo_labels": int(len(self.labels)),
                 "validation_precision": prec, "validation_labelled": n, "labels_digest": digest}
        self.history.append(event)
        log.info("pseudo-label round %d (epoch %d): %d wells (%.0f%% of each plate), held-out precision %.3f on %d",
                 k, epoch, len(self.labels), 100 * fraction, prec, n)
        return StageUpdate(self._train_loader(ctx), event)

    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round, "history": list(self.history),
                "labels": {"id_code": self.labels["id_code"].tolist(), "sirna": self.labels["sirna"].tolist(),
                           "margin": self.labels["margin"].tolist()}}

    def load_state_dict(self, state: dict[str, Any], ctx: StageContext) -> Any | None:
        self.round, self.history = int(state["round"]), list(state["history"])
        self.labels = pd.DataFrame(state["labels"])
        return self._train_loader(ctx)

    def summary(self) -> dict[str, Any]:
        return {"pseudo_rounds": list(self.history)}
