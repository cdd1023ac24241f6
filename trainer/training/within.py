"""Training within each experiment's classes (`loss.within`).

A screen that puts each perturbation in one experiment (RxRx3-core's genes, the synthetic knockout screens of
docs/maps.md) lets a classifier name a well's label partly by recognising its experiment: among 80 genes in 3
experiments, the experiment's look alone rules out two thirds. The network then spends features on what marks an
experiment, which no linear batch correction removes, and its embeddings map batches rather than biology
(docs/maps.md measures it: recall of known complexes 0.62 within an experiment, 0.33 across two). With
`loss.within=experiment` each sample's softmax runs over the classes its own experiment has in the store's
metadata (`plate`: its plate's); the others get a score of MASKED. What marks the experiment then carries no
information about the label, and the classifier must tell the experiment's perturbations apart by their phenotype.
The same class sets constrain predictions at inference in plate-aware assignment (trainer/infer); here they shape
training.

    sets = class_sets(store.sites, class_map, "experiment")        # None for within=""
    logits = sets.apply(logits, batch["index"])                     # (B, C), store rows index the sets
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from cellio.errors import ConfigError

__all__ = ["WITHIN", "MASKED", "ClassSets", "class_sets", "experiments_per_class"]

WITHIN = ("", "experiment", "plate")
MASKED = -1e4  # a logit no softmax gives weight to, finite so that bf16/fp16 and label smoothing stay finite


@dataclass(frozen=True)
class ClassSets:
    """Each store row's group (its experiment or plate) and each group's classes."""

    within: str
    row_group: torch.Tensor   # (store rows,) int64
    allowed: torch.Tensor     # (groups, classes) bool

    def mask(self, rows: torch.Tensor) -> torch.Tensor:
        """(B,) store rows -> (B, classes) bool: the classes each row's group has."""
        rows = rows.long().cpu()
        if rows.numel() and (rows.min() < 0 or rows.max() >= len(self.row_group)):
            raise ConfigError(f"loss.within={self.within}: a batch holds store rows outside the store "
                              f"(0..{len(self.row_group) - 1})")
        return self.allowed[self.row_group[rows]]

    def apply(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """`logits` (B, C) or (B, K, C) with the classes outside each row's group set to MASKED."""
        mask = self.mask(rows).to(logits.device)
        if logits.ndim == 3:
            mask = mask[:, None, :]
        return logits.masked_fill(~mask, MASKED)


def _groups(sites: pd.DataFrame, within: str) -> pd.Series:
    key = sites["experiment"].astype(str)
    return key + "/" + sites["plate"].astype(str) if within == "plate" else key


def class_sets(sites: pd.DataFrame, class_map: Any, within: str) -> ClassSets | None:
    """The class sets of `within` (None for ""): a group's classes are those of its labelled rows (every split the
    store holds; hidden labels add nothing). A group without any labelled row allows every class (its rows are
    never trained on: unlabelled rows carry no target)."""
    if within not in WITHIN:
        raise ConfigError(f"config key 'loss.within': expected one of {list(WITHIN)}, found {within!r}")
    if not within:
        return None
    names, row_group = np.unique(_groups(sites, within).to_numpy(), return_inverse=True)
    cls = class_map.encode(torch.as_tensor(class_map.row_ids(sites))).numpy()
    allowed = np.zeros((len(names), len(class_map)), dtype=bool)
    labelled = cls >= 0
    allowed[row_group[labelled], cls[labelled]] = True
    allowed[~allowed.any(axis=1)] = True
    return ClassSets(within, torch.as_tensor(row_group, dtype=torch.int64), torch.as_tensor(allowed))


def experiments_per_class(sites: pd.DataFrame, labels: pd.Series) -> float:
    """The mean share of the experiments in `sites` that hold a class (`labels`: each row's class, NaN for none):
    1.0 where every experiment screens every class (RxRx1), 1/n where each class lives in one of n experiments."""
    known = labels.notna().to_numpy()
    if not known.any():
        return 1.0
    exp = sites["experiment"].astype(str).to_numpy()[known]
    per_class = pd.Series(exp).groupby(labels.to_numpy()[known]).nunique()
    return float(per_class.mean() / max(len(np.unique(exp)), 1))
